"""Data parallelism for a run: process group, launch through torchrun, and the FSDP2 / DDP / ZeRO wrapping.

A run with `parallel.world_size > 1` is launched by `python -m profiler run` itself through
`torch.distributed.run` (torchrun): N ranks, gloo on CPU, NCCL on CUDA; each rank runs the same harness
and rank 0 gathers every rank's phase peaks and writes the line. `simulate` runs rank 0 of the same job
in one process under torch's fake process group (ranks are symmetric), with the same wrapping.

The wrapping is what the engines' users do: FSDP2 `fully_shard` on every decoder layer
(`model._no_split_modules`, as accelerate does), then on the root; DDP `DistributedDataParallel` with its
defaults (25 MiB buckets, gradients copied into buckets); ZeRO-1/2/3 a DeepSpeed engine (real tensors
only: DeepSpeed cannot run on fake ones). `comm_probe` tells the tensor tracker which
bytes the engine adds beyond the local shards (category comm_buffers): FSDP2 resizes the storages of its
unsharded parameters in place (`untyped_storage().resize_`, not a dispatched op, so it is reported
here), and everything FSDP2's all-gather / reduce-scatter and DDP's bucket (re)building allocate.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch

from profiler.categories import Category
from profiler.config import REPO_ROOT, ConfigError, RunConfig
from profiler.measure.loading import DTYPES
from profiler.measure.patches import patched

COMM = Category.COMM_BUFFERS


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


RANK_DIR = "LLM_MEMPROF_RANK_DIR"  # where a failed rank leaves its record for the launcher (set by `launch`)


def launch(cfg: RunConfig, argv: list[str]) -> tuple[int, dict | None]:
    """Run `python -m profiler run ARGV` as `cfg.parallel.world_size` ranks through torchrun: (its exit code,
    None) when rank 0 wrote the line, else (code, the record of the lowest failed rank) for the caller to
    write. Rank 0 writes the line; the other ranks write nothing."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="memprof-ranks-") as folder:
        rc = _torchrun(cfg, argv, folder)
        return rc, (None if rc == 0 else failed_record(folder))


def failed_record(folder: str) -> dict | None:
    """The record a failed rank left (the lowest rank's; `ranks` lists every failed rank), or None when rank
    0 wrote the line or no rank left one (a crash: torchrun's report says what happened)."""
    import json
    from pathlib import Path

    if (Path(folder) / "written").exists():
        return None
    left = sorted((json.loads(p.read_text()) for p in Path(folder).glob("rank-*.json")), key=lambda d: d["rank"])
    if not left:
        return None
    record = left[0]["record"]
    record["ranks"] = [d["summary"] for d in left]
    record["error"] = f"rank {left[0]['rank']}: {record.get('error') or record['status']}"
    return record


def fail_fast(record: dict) -> None:
    """A rank whose run failed (an OOM, an exception) while its peers may be blocked in FSDP/DDP collectives:
    it must not enter another collective (`all_gather_object` would hang an NCCL job). It leaves its record
    in the launcher's folder and exits 1; torchrun then stops the other ranks, and the launcher writes the
    line from that record. Never returns."""
    import json

    me = rank()
    folder = os.environ.get(RANK_DIR)
    if not folder:  # a torchrun of the user's: no launcher to report it
        print(f"error: rank {me}: {record['status']}: {record.get('error') or ''}".strip(), file=sys.stderr)
    else:
        tmp = os.path.join(folder, f".rank-{me}.json")
        with open(tmp, "w") as f:
            json.dump({"rank": me, "record": record, "summary": rank_summary(record)}, f, default=str)
        os.replace(tmp, os.path.join(folder, f"rank-{me}.json"))  # whole, or not there
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def mark_written() -> None:
    """Rank 0 wrote the line: the launcher writes none, whatever torchrun's exit code."""
    folder = os.environ.get(RANK_DIR)
    if folder:
        open(os.path.join(folder, "written"), "w").close()


# torchrun's main, less its 30-line ChildFailedError report: one line, and none where a failed rank left its
# record (the launcher's line says what failed). Its log lines are off unless LOGLEVEL says otherwise.
_TORCHRUN = """
import logging, os, sys
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main
if not os.environ.get("LOGLEVEL"):
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
try:
    main(sys.argv[1:])
except ChildFailedError as exc:
    rank, failure = exc.get_first_failure()
    folder = os.environ.get("LLM_MEMPROF_RANK_DIR") or ""
    if not any(n.startswith("rank-") for n in (os.listdir(folder) if os.path.isdir(folder) else [])):
        how = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
        print(f"error: torchrun: rank {rank} ended with {how} and left no result", file=sys.stderr)
    sys.exit(1)
"""


def _torchrun(cfg: RunConfig, argv: list[str], folder: str) -> int:
    n = cfg.parallel.world_size
    cmd = [sys.executable, "-c", _TORCHRUN, "--standalone", f"--nproc-per-node={n}",
           "-m", "profiler", "run", *argv]
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONPATH=path)
    env[RANK_DIR] = folder
    from profiler.lifeline import preexec_hook

    # torchrun in its own session: a Ctrl-C to the terminal reaches this process only (one "interrupted"
    # line), and dies with it (SIGKILL on -TERM / -KILL of this process); each rank dies with torchrun
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=preexec_hook())  # noqa: PLW1509
    try:
        return proc.wait()
    except BaseException:  # Ctrl-C: torchrun's group goes at once (its ranks with it), so no line comes later
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.wait()
        raise


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def init_real(cfg: RunConfig) -> None:
    """Join the torchrun job this process belongs to (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != cfg.parallel.world_size:
        raise ConfigError(f"parallel.world_size: {cfg.parallel.world_size} but torchrun started {world} ranks; "
                          f"allowed: {world}")
    if cfg.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cfg.device == "cuda" else "gloo")
    _make_mesh(cfg.device, world)


@contextmanager
def fake_process_group(world_size: int) -> Iterator[None]:
    """Rank 0 of a `world_size`-rank job in this process: collectives return at once, moving no data."""
    import torch.nn.parallel.distributed as ddp_module
    from torch.testing._internal.distributed.fake_pg import FakeStore

    # DDP checks that every rank's parameter shapes agree by reading tensor data in C++, which fake
    # tensors have none of; the ranks of a fake group are one process, so they agree by construction.
    verify = ddp_module._verify_param_shape_across_processes
    ddp_module._verify_param_shape_across_processes = lambda *args, **kwargs: None
    torch.distributed.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        _make_mesh("cpu", world_size)
        yield
    finally:
        _MESH.clear()
        torch.distributed.destroy_process_group()
        ddp_module._verify_param_shape_across_processes = verify


_MESH: dict[str, object] = {}  # the device mesh, made with the process group: never under FakeTensorMode


def _make_mesh(device: str, world_size: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    _MESH["mesh"] = init_device_mesh(device, (world_size,))


def _layer_classes(model: torch.nn.Module) -> set[str]:
    names = set(getattr(model, "_no_split_modules", None) or [])
    if not names:
        raise ConfigError(f"parallel.strategy: {type(model).__name__} names no decoder layer class "
                          "(_no_split_modules); allowed: models with one (llama, mistral, qwen2, gpt2)")
    return names


def wrap(model: torch.nn.Module, cfg: RunConfig, tracker=None) -> torch.nn.Module:
    """The model as the strategy's engine holds it (unchanged for strategy none)."""
    pc = cfg.parallel
    if pc.strategy == "none":
        return model
    if pc.strategy == "fsdp2":
        return _fully_shard(model, cfg)
    if pc.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [torch.cuda.current_device()] if cfg.device == "cuda" else None
        with tracker.scope(COMM) if tracker is not None else nullcontext():  # the gradient buckets
            ddp = DistributedDataParallel(model, device_ids=ids)
        if torch.distributed.get_backend() == "fake":  # its allreduce future has no value: DDP asserts
            ddp.register_comm_hook(None, _fake_allreduce)
            ddp.reducer = _NoRebuild(ddp.reducer)
        if tracker is not None:
            ddp._pre_forward = _in_scope(ddp._pre_forward, tracker)  # rebuilds its buckets on step 2
        return ddp
    return _deepspeed(model, cfg)


def _deepspeed(model: torch.nn.Module, cfg: RunConfig) -> torch.nn.Module:
    """A DeepSpeed ZeRO engine around the model (its optimizer: torch's Adam/AdamW, `torch_adam`, so no
    DeepSpeed op is compiled); `optimizer_for` hands the harness its optimizer."""
    try:
        import deepspeed
    except ImportError:
        raise ConfigError(f"parallel.strategy: {cfg.parallel.strategy} needs the deepspeed package "
                          "(pip install -e '.[deepspeed]'); allowed without it: none, ddp, fsdp2") from None
    pc = cfg.parallel
    zero: dict = {"stage": int(pc.strategy[-1])}
    if pc.offload.optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if pc.offload.params:
        zero["offload_param"] = {"device": "cpu"}
    ds_config = {
        "train_micro_batch_size_per_gpu": cfg.train.batch_size,
        "gradient_accumulation_steps": 1,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.model.dtype == "bfloat16"},
        "fp16": {"enabled": cfg.model.dtype == "float16"},
        "optimizer": {"type": "AdamW" if cfg.optimizer.name == "adamw" else "Adam",
                      "params": {"lr": cfg.optimizer.lr, "torch_adam": True}},
    }
    params = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=ds_config)
    return engine


class DeepSpeedStep:
    """The harness's optimizer interface over a DeepSpeed engine: backward and step go through the engine
    (loss scaling, gradient partitioning, the last bucket's reduction); `state` is the inner optimizer's."""

    def __init__(self, engine):
        self.engine = engine
        self.inner = engine.optimizer.optimizer  # ZeRO wrapper -> the torch optimizer on fp32 partitions

    @property
    def state(self):
        return self.inner.state

    def register_step_post_hook(self, hook):
        return self.inner.register_step_post_hook(hook)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        self.engine.step()  # also zeroes the gradients

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass


def optimizer_for(model: torch.nn.Module) -> DeepSpeedStep | None:
    """The optimizer a DeepSpeed engine made (None for any other model: the harness makes its own)."""
    return DeepSpeedStep(model) if type(model).__name__ == "DeepSpeedEngine" else None


def _fake_allreduce(state, bucket):  # no annotation: DDP checks it is exactly Future[Tensor]
    """DDP comm hook under the fake process group: the bucket, reduced in place (as allreduce does)."""
    fut: torch.futures.Future = torch.futures.Future()
    fut.set_result(bucket.buffer())
    return fut


class _NoRebuild:
    """DDP's reducer under the fake process group, minus the bucket rebuild of step 2 (it broadcasts the
    bucket order and reads it back as data). A real run then holds two sets of buckets for a moment at
    the start of that forward; the simulation keeps the first set (same bytes) and misses that transient."""

    def __init__(self, reducer):
        self._reducer = reducer

    def _rebuild_buckets(self) -> bool:
        return False

    def __getattr__(self, name: str):
        return getattr(self._reducer, name)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The user's model inside a DDP wrapper (FSDP2 shards in place)."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel) or type(model).__name__ == "DeepSpeedEngine":
        return model.module
    return model


def _fully_shard(model: torch.nn.Module, cfg: RunConfig) -> torch.nn.Module:
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    pc = cfg.parallel
    mesh = _MESH.get("mesh")
    if mesh is None:
        raise RuntimeError("fsdp2 needs the process group first (profiler.measure.parallel.init_real)")
    mp = MixedPrecisionPolicy(param_dtype=DTYPES.get(pc.param_dtype) if pc.param_dtype else None,
                              reduce_dtype=DTYPES.get(pc.reduce_dtype) if pc.reduce_dtype else None)
    kw = {"mesh": mesh, "reshard_after_forward": pc.reshard_after_forward, "mp_policy": mp,
          "offload_policy": CPUOffloadPolicy(pin_memory=False) if pc.offload.params else OffloadPolicy()}
    layers = _layer_classes(model)
    for m in list(model.modules()):
        if type(m).__name__ in layers:
            fully_shard(m, **kw)
    fully_shard(model, **kw)
    if cfg.parallel_init == "meta":
        materialize_shards(model, f"cuda:{torch.cuda.current_device()}" if cfg.device == "cuda" else "cpu")
    return model


def materialize_shards(model: torch.nn.Module, device: str) -> None:
    """parallel.init meta, after fully_shard: `to_empty` gives each rank storage for its own shards only (and
    the buffers), as torchtitan and accelerate's FSDP2 meta init do; then values are set in place (memory
    does not depend on them, but no NaN should reach a forward): N(0, 0.02) matrices, ones for norm weights,
    zeros for biases and LoRA B (peft's init), and the buffers (rotary frequencies) as transformers computes
    them. Every write is in place on the local shard: nothing is allocated after `to_empty`."""
    from torch.distributed.tensor import DTensor

    model.to_empty(device=device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            t = p.to_local() if isinstance(p, DTensor) else p
            if t.ndim == 1 and "norm" in name or name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                t.fill_(1.0)
            elif name.endswith(".bias") or t.ndim <= 1 or "lora_B" in name:
                t.zero_()
            else:
                t.normal_(0.0, 0.02)
        hf = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the HF model
        for m in hf.modules():
            if next(m.buffers(recurse=False), None) is not None and next(m.parameters(recurse=False), None) is None:
                hf._init_weights(m)  # transformers recomputes rotary inv_freq here (meta-device init support)


def _in_scope(fn, tracker):
    def wrapped(*args, **kwargs):
        with tracker.scope(COMM):
            return fn(*args, **kwargs)

    return wrapped


@contextmanager
def comm_probe(cfg: RunConfig, tracker) -> Iterator[None]:
    """While entered, FSDP2's unsharded parameters, unsharded gradients and collective buffers are counted
    as comm_buffers by `tracker` (no-op for other strategies or without a tracker)."""
    if tracker is None or cfg.parallel.strategy != "fsdp2":
        yield
        return
    from torch.distributed.fsdp._fully_shard import _fsdp_param, _fsdp_param_group, _fsdp_state

    group = _fsdp_param_group.FSDPParamGroup
    orig_alloc, orig_free = _fsdp_param.alloc_storage, _fsdp_param.free_storage

    def alloc_storage(tensor: torch.Tensor) -> None:
        orig_alloc(tensor)
        tracker.resized(tensor, COMM)

    def free_storage(tensor: torch.Tensor) -> None:
        orig_free(tensor)
        tracker.resized(tensor)

    orig_post_backward = group.post_backward

    def post_backward(self, *args, **kwargs):
        for p in self.fsdp_params:  # autograd's unsharded gradients, about to be reduce-scattered
            g = getattr(p, "_unsharded_param", None)
            if g is not None and g.grad is not None:
                tracker.classify(g.grad, COMM)
        with tracker.scope(COMM):
            return orig_post_backward(self, *args, **kwargs)

    state = _fsdp_state.FSDPState
    orig_final = state._root_post_backward_final_callback

    def final_callback(self) -> None:
        orig_final(self)
        if torch.distributed.get_backend() == "gloo":
            # gloo's worker thread drops its reference to the last reduce-scatter's buffers just after
            # the caller's wait returns: without a round trip they sometimes die during optimizer_step
            torch.distributed.barrier()

    patches = [(state, "_root_post_backward_final_callback", final_callback),
               (_fsdp_param, "alloc_storage", alloc_storage), (_fsdp_param, "free_storage", free_storage),
               (_fsdp_param_group, "alloc_storage", alloc_storage), (group, "post_backward", post_backward)]
    patches += [(group, n, _in_scope(getattr(group, n), tracker)) for n in ("unshard", "wait_for_unshard")]
    with patched(patches):
        yield


def rank_summary(record: dict) -> dict:
    """This rank's phase peaks, as the line's `ranks` list keeps them."""
    return {
        "rank": rank(),
        "status": record["status"],
        "phases": [{k: p.get(k) for k in ("phase", "step", "peak_allocated_bytes", "allocated_bytes",
                                          "peak_reserved_bytes", "nvml_peak_bytes")} for p in record["phases"]],
        "peak_allocated_bytes": (record.get("peaks") or {}).get("peak_allocated_bytes") or 0,
    }


def gather_ranks(record: dict) -> list[dict] | None:
    """Every rank's `rank_summary`, on rank 0 (None on the others)."""
    mine = rank_summary(record)
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return [mine]
    out: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, mine)
    return out if rank() == 0 else None


def finish(record: dict) -> bool:
    """Gather every rank's phase peaks into rank 0's record (`ranks`, `max_rank_peak_allocated_bytes`);
    True on rank 0, which writes the line. Leaves the process group. A failed rank enters no collective
    here: it leaves through `fail_fast`."""
    if record["status"] != "ok" and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        fail_fast(record)
    ranks = gather_ranks(record)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    if ranks is None:
        return False
    record["ranks"] = ranks
    record["max_rank_peak_allocated_bytes"] = max(r["peak_allocated_bytes"] for r in ranks)
    bad = [r for r in ranks if r["status"] != "ok"]
    if bad and record["status"] == "ok":
        record.update(status=bad[0]["status"], error=f"rank {bad[0]['rank']}: {bad[0]['status']}")
    return True
