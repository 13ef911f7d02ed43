"""Step-time overhead of `track` on the CPU: no tracking vs mode light vs mode breakdown (prints a table).

Run: python scripts/bench_track.py [--arch tiny-llama] [--batch 4] [--seq 256] [--steps 6]
Each mode trains a fresh copy of the same model (full fine-tuning, AdamW) for 1 + steps steps in the same
process, the modes interleaved over `--repeat` rounds; the median of the measured steps is reported, as wall
time and as this process's CPU time (steadier when other processes load the machine).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from profiler.config import load_config
from profiler.measure.loading import load_model
from profiler.measure.optimizers import make_optimizer
from profiler.measure.regimes import apply_regime, trainable_parameters
from profiler.measure.track import track


def step_times(cfg, mode: str | None, steps: int) -> list[tuple[float, float]]:
    torch.manual_seed(0)
    model = apply_regime(load_model(cfg).model, cfg)
    opt = make_optimizer(cfg.optimizer, trainable_parameters(model))
    vocab = model.config.vocab_size
    batch = torch.randint(0, vocab, (cfg.train.batch_size, cfg.train.seq_len))
    times = []
    ctx = track(model, opt, mode=mode) if mode else None
    if ctx:
        ctx.start()
    try:
        for _ in range(1 + steps):
            t0, c0 = time.perf_counter(), time.process_time()
            model(input_ids=batch, labels=batch).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append((time.perf_counter() - t0, time.process_time() - c0))
    finally:
        if ctx:
            ctx.stop()
    return times[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="tiny-llama")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--dtype", default="float32", help="float32 (fast CPU kernels) or bfloat16")
    ap.add_argument("--repeat", type=int, default=3, help="rounds over the three modes (interleaved)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = load_config(None, [f"model.arch={a.arch}", "device=cpu", f"train.batch_size={a.batch}",
                             f"train.seq_len={a.seq}", f"model.dtype={a.dtype}"])
    modes = [None, "light", "breakdown"]
    times: dict[str | None, list[tuple[float, float]]] = {m: [] for m in modes}
    for r in range(a.repeat):  # interleaved, order rotated, so load from other processes hits every mode alike
        for m in modes[r % 3:] + modes[:r % 3]:
            times[m] += step_times(cfg, m, a.steps)
    def med(m, i):
        return statistics.median(t[i] for t in times[m])

    print(f"{a.arch}, full, adamw, {a.dtype}, batch {a.batch} x seq {a.seq}, CPU ({torch.get_num_threads()} "
          f"threads), {a.repeat} x {a.steps} measured steps per mode\n")
    print("| mode | median step, wall (s) | overhead, wall | median step, CPU time (s) | overhead, CPU time |")
    print("|---|---|---|---|---|")
    for m in modes:
        cells = []
        for i in (0, 1):
            cells += [f"{med(m, i):.3f}", "-" if m is None else f"{(med(m, i) / med(None, i) - 1) * 100:+.0f} %"]
        print(f"| {m or 'no tracking'} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
