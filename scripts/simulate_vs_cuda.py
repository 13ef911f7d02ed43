"""Simulated vs measured peaks, matched by config hash (same config => same hash): how far is `simulate`
from the real run? Prints a markdown table and, with --out, writes it (results/simulate_vs_cuda.md).
With --kernels (on a CUDA machine): the SDPA kernel simulate picks for this GPU's architecture against
`torch._fused_sdp_choice` on real tensors, case by case (profiler/simulate/cuda_sdpa.py).

Run: python scripts/simulate_vs_cuda.py [--measured results/runs] [--simulated results/simulated] [--out FILE]
     python scripts/simulate_vs_cuda.py --kernels
Damaged result lines are skipped with one warning (profiler.results.read_records).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from profiler.results import RESULTS_DIR, read_records

GiB = 2**30


def _files(path: Path) -> list[Path]:
    return sorted(path.glob("*.jsonl")) if path.is_dir() else [path]


def _label(cfg: dict) -> str:
    rg, tr = cfg["regime"], cfg["train"]
    regime = f"qlora{rg['bits']}" if rg["kind"] == "qlora" else rg["kind"]
    model = cfg["model"].get("arch") or cfg["model"].get("path") or cfg["model"].get("hub")
    ckpt = " ckpt" if tr["gradient_checkpointing"] else ""
    autocast = f" autocast-{tr['autocast']}" if tr.get("autocast", "none") != "none" else ""
    return f"{model} {regime} {cfg['optimizer']['name']} b{tr['batch_size']} s{tr['seq_len']}{ckpt}{autocast}"


BACKENDS = {-1: "error", 0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}  # SDPBackend
# (label, q heads, k/v heads, head dim, dtype name, boolean mask, enable_gqa): what transformers hands SDPA
KERNEL_CASES = [
    ("GQA bf16, no mask (Llama-3 under autocast)", 32, 8, 128, "bfloat16", False, True),
    ("GQA fp32, no mask (QLoRA, no autocast)", 32, 8, 128, "float32", False, True),
    ("MHA bf16, no mask", 32, 32, 128, "bfloat16", False, False),
    ("MHA bf16, mask (sliding window, padding)", 32, 32, 128, "bfloat16", True, False),
    ("MHA fp32, mask", 32, 32, 128, "float32", True, False),
    ("MQA bf16, mask, no enable_gqa (Falcon-7B)", 71, 1, 64, "bfloat16", True, False),
    ("GQA bf16 head dim 256 (Gemma-3)", 8, 4, 256, "bfloat16", False, True),
    ("MHA bf16 head dim 208", 8, 8, 208, "bfloat16", False, False),
]


def kernel_rows(device: str, ours, seq: int = 256) -> list[dict]:
    """Each KERNEL_CASES entry: `ours(q, k, v, mask, is_causal, enable_gqa)` against torch's own choice for
    tensors on `device` (training: inputs require grad)."""
    import torch

    rows = []
    for label, hq, hk, d, dtype, masked, gqa in KERNEL_CASES:
        dt = getattr(torch, dtype)
        q = torch.randn(1, hq, seq, d, dtype=dt, device=device, requires_grad=True)
        k, v = (torch.randn(1, hk, seq, d, dtype=dt, device=device, requires_grad=True) for _ in range(2))
        mask = torch.ones(1, 1, seq, seq, dtype=torch.bool, device=device).tril() if masked else None
        theirs = BACKENDS[torch._fused_sdp_choice(q, k, v, mask, 0.0, not masked, enable_gqa=gqa)]
        rows.append({"case": label, "simulated": ours(q, k, v, mask, not masked, gqa), "torch": theirs})
    return rows


def cuda_kernel_rows() -> tuple[str, list[dict]]:
    """kernel_rows on this machine's GPU, simulate's rules taken for its compute capability."""
    import torch

    from profiler.simulate.cuda_sdpa import cuda_sdpa_kernel

    major, minor = torch.cuda.get_device_capability()
    arch = f"sm{major}{minor}"

    def ours(q, k, v, mask, causal, gqa):
        return cuda_sdpa_kernel(q, k, v, mask, causal, gqa, arch, requires_grad=True)

    return arch, kernel_rows("cuda", ours)


def _peak(rec: dict) -> int | None:
    return (rec.get("peaks") or {}).get("peak_allocated_bytes")


def pair_rows(measured: list[dict], simulated: list[dict]) -> list[dict]:
    """One row per measured run (latest per config hash and device) that has a simulation. Records come
    from read_records (damaged lines already skipped); runs without a peak or a readable config are left out."""
    sims = {r["config_hash"]: r for r in simulated
            if r["backend"] == "fake" and r["status"] == "ok" and _peak(r) is not None}
    latest: dict[tuple[str, str], dict] = {}
    for r in measured:
        if r["backend"] != "fake" and _peak(r) is not None:
            try:
                r = {**r, "label": _label(r["config"])}
            except (KeyError, TypeError):
                continue
            latest[(r["config_hash"], r["env"]["device_slug"])] = r
    rows = []
    for (h, device), m in sorted(latest.items(), key=lambda kv: kv[1]["label"]):
        s = sims.get(h)
        if s is None:
            continue
        sim_peak, meas_peak = _peak(s), _peak(m)
        rows.append({
            "config": m["label"], "device": device, "status": m["status"],
            "simulated": sim_peak, "measured": meas_peak,
            "error_pct": 100.0 * (sim_peak - meas_peak) / meas_peak if m["status"] == "ok" and meas_peak else None,
            "kernel": s.get("attention_kernel") or "-",
        })
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| config | device | measured status | simulated peak GiB | measured peak_allocated GiB | error % | "
             "attention (sim) |", "|---|---|---|---:|---:|---:|---|"]
    for r in rows:
        err = "-" if r["error_pct"] is None else f"{r['error_pct']:+.1f}"
        lines.append(f"| {r['config']} | {r['device']} | {r['status']} | {r['simulated'] / GiB:.2f} | "
                     f"{r['measured'] / GiB:.2f} | {err} | {r['kernel']} |")
    ok = [abs(r["error_pct"]) for r in rows if r["error_pct"] is not None]
    if ok:
        lines.append(f"\nMAPE {sum(ok) / len(ok):.1f}% over {len(ok)} runs; worst {max(ok):.1f}%. GiB = 2^30. "
                     "An OOM run's measured figure is its peak up to the OOM, so it has no error %.")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measured", type=Path, default=RESULTS_DIR / "runs", help="default: ./%(default)s")
    ap.add_argument("--simulated", type=Path, default=RESULTS_DIR / "simulated", help="default: ./%(default)s")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--kernels", action="store_true", help="compare SDPA kernel choices on this GPU")
    args = ap.parse_args()
    if args.kernels:
        arch, krows = cuda_kernel_rows()
        print(f"| case ({arch}) | simulated | torch._fused_sdp_choice |\n|---|---|---|")
        for r in krows:
            differs = "" if r["simulated"] == r["torch"] else " (differs)"
            print(f"| {r['case']} | {r['simulated']} | {r['torch']}{differs} |")
        return int(any(r["simulated"] != r["torch"] for r in krows))
    rows = pair_rows(read_records(_files(args.measured)), read_records(_files(args.simulated)))
    text = markdown(rows) if rows else "no measured run has a simulation with the same config hash"
    print(text)
    if args.out and rows:
        args.out.write_text("# Simulated vs measured peak allocated\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
