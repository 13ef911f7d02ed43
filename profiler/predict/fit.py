"""Does this config fit this GPU? One verdict from `simulate` plus an allocator / CUDA-context allowance.

The predictor: the simulated peak allocated bytes (profiler.simulate: the harness on fake tensors) plus an
allowance for what the allocator holds beyond it and the CUDA context outside it. The allowance is the modelled
one (the CUDA context of profiler/data/cuda_context.csv + what the caching-allocator replay of the simulated
storages reserves beyond the allocated peak; ALLOCATOR_SLACK x allocated only for a record without a replay) unless
the GPU has a calibration table of simulate itself (results/calibration/<gpu-slug>.csv written by `calibrate
--estimator simulate`) with an nvml_peak row for the regime: then the prediction is that row's line on the simulated
peak, and its cross-validated error (LOMO / LOSO MAPE) is the band. Otherwise the answer says "uncalibrated": a band
is only ever the error of the prediction it is printed next to.
Max batch / max seq come from profiler.predict.search (a few simulations, the answer checked by two more);
when the config does not fit, each suggested change (FSDP2 across more GPUs among them) is checked by the
same predictor; for QLoRA 4-bit, ZeRO-3 across more GPUs is suggested from the `components` estimate alone
(DeepSpeed does not run on fake tensors; `zero3_more_gpus`). Simulations are `primed` (same peaks as plain
simulate, about half the time). With 2+ cores a second process (SimWorker) takes half of each round: the verdict
beside the longest sequence the model allows, then both ends of the answer's check pair.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from profiler.categories import pick_unit
from profiler.config import RunConfig
from profiler.formulas.components import ALLOCATOR_SLACK, CUDA_CONTEXT_BYTES
from profiler.predict.gpus import Gpu
from profiler.predict.search import MaxSolution, solve_steps

BATCH_CAP = 4096
GIB = 2**30


class SimulationFailed(RuntimeError):
    """The fake run could not trace this model (the message names the op)."""


@dataclass(frozen=True)
class Allowance:
    """Bytes beyond the simulated allocated peak: allocator reserve and CUDA context."""

    kind: str  # "modelled" or "calibrated"
    context_bytes: int  # outside the allocator; usable = total - context
    slack: float  # modelled: allocator reserve as a fraction of the allocated peak
    line: tuple[float, float] | None  # calibrated: nvml_peak (context included) = a x simulated peak + b
    band_pct: float | None  # cross-validated MAPE of that very line, None without one
    source: str
    replayed: bool = False  # modelled: the allocator reserve is the replay's reserved - allocated peak

    def allocator_bytes(self, allocated: int, reserved: int | None = None) -> int:
        """Bytes the allocator holds beyond the allocated peak. `reserved`: the replayed peak reserved bytes of the
        simulation (predicted_reserved_bytes), used by the modelled allowance where there is one."""
        if self.line is not None:
            a, b = self.line
            return max(0, round(a * allocated + b) - self.context_bytes - allocated)
        if self.replayed and reserved is not None:
            return max(0, reserved - allocated)
        return int(self.slack * allocated)


def modelled_allowance(why: str = "") -> Allowance:
    from profiler.allocator.context import cuda_context

    ctx = cuda_context()
    return Allowance("modelled", ctx.bytes, ALLOCATOR_SLACK, None, None,
                     f"modelled allowance: {ctx.label().split(':')[0]} + what the caching-allocator replay of the "
                     f"simulated storages reserves beyond the allocated peak (profiler.allocator, torch 2.13 rules)"
                     + why, replayed=True)


def _pct(v: str | None) -> float | None:
    try:
        x = float(v) if v not in (None, "") else math.nan
    except ValueError:
        return None
    return None if math.isnan(x) else x


def calibrated_allowance(cfg: RunConfig, gpu: Gpu, table: str | None = None) -> Allowance:
    """What fit adds to simulate's peak, and the error band of the sum (the one place that decides both).

    Calibrated where the GPU's table calibrates `simulate` itself (`calibrate --estimator simulate`) and has an
    nvml_peak row for the regime: the prediction is that row's line, a x simulated peak + b (measured NVML peak
    less its baseline, so the CUDA context is inside), and the band is that row's cross-validated error, the
    error of this very prediction. Otherwise the modelled allowance and no band: a table of another estimator
    (e.g. `components`) measures that estimator's error, not simulate's, so it is named and not used."""
    from profiler.learn.calibrate import checked_calibration, default_calibration_path, group_of

    path = table or (default_calibration_path(gpu.slug) if gpu.slug else None)
    if path is None:
        return modelled_allowance()
    cal = checked_calibration(path, "--calibration" if table else "calibration table")
    if cal.estimator != "simulate":
        return modelled_allowance(f"; table {cal.path} calibrates `{cal.estimator}`, not simulate, so it is not "
                                  f"used (`calibrate --estimator simulate` writes one that is)")
    regime = group_of(cfg)
    row = cal.rows.get((regime, "nvml_peak"))
    if row is None:
        return modelled_allowance(f"; table {cal.path} has no nvml_peak row for {regime}")
    cv = [x for x in (_pct(row.get("lomo_mape_pct")), _pct(row.get("loso_mape_pct"))) if x is not None]
    return Allowance("calibrated", CUDA_CONTEXT_BYTES, 0.0, (float(row["a"]), float(row["b"] or 0)),
                     max(cv) if cv else None,
                     f"calibrated: measured nvml_peak = {float(row['a']):.4f} x simulated peak + "
                     f"{float(row['b'] or 0) / 2**20:.0f} MiB for {regime} on {cal.device_name} ({row['n_runs']} "
                     f"runs, table {cal.path})")


@dataclass
class Suggestion:
    """One change that might make the config fit, checked by the same predictor."""

    change: str
    overrides: list[str]
    needed_bytes: int
    fits: bool


@dataclass
class FitResult:
    """The answer of `fit` (bytes as ints; GiB = 2^30 only in text)."""

    model: str
    model_source: str
    regime: str
    optimizer: str
    batch_size: int
    seq_len: int
    gradient_checkpointing: bool
    gpu: str
    gpu_source: str
    total_bytes: int
    usable_bytes: int  # total - CUDA context
    simulated_peak_bytes: int  # simulate: peak allocated over every phase
    allocator_bytes: int  # allowance on top of the allocated peak
    needed_bytes: int  # simulated peak + allocator allowance (compared with usable)
    fits: bool
    allowance: str  # "modelled" or "calibrated"
    allowance_source: str
    error_band_pct: float | None  # cross-validated MAPE, None = uncalibrated
    breakdown: dict[str, int]  # categories at the peak phase (tracker, simulated)
    peak_phase: str
    attention_kernel: str | None
    max_batch: MaxSolution | None
    max_seq: MaxSolution | None
    suggestions: list[Suggestion] = field(default_factory=list)
    estimators: dict[str, int] = field(default_factory=dict)  # --all: every named estimator's total
    simulations: int = 0
    processes: int = 1  # 2 where a second process simulated half of each round (SimWorker)
    seconds: float = 0.0
    config: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    work: dict | None = None  # counted FLOPs / bytes of the verdict's step (profiler.timing.flops), when time is asked
    recipe: str = "plain"  # the training stack whose defaults filled unset keys (profiler/recipes/stacks.py)
    defaults: list[str] = field(default_factory=list)  # "key=value  (source)" for each default a recipe filled
    cpu_seconds: float = 0.0  # user + sys CPU of this process (imports included) and of the max seq process

    @property
    def headroom_bytes(self) -> int:
        return self.usable_bytes - self.needed_bytes

    def unit(self) -> tuple[str, int]:
        """One binary unit for every figure of this answer (GiB for real models, MiB for tiny ones)."""
        return pick_unit(max(self.needed_bytes, self.usable_bytes, 1))

    def verdict(self) -> str:
        u, d = self.unit()
        if self.fits:
            return (f"fits: {self.needed_bytes / d:.1f} of {self.usable_bytes / d:.1f} {u} usable, "
                    f"{self.headroom_bytes / d:.1f} {u} headroom")
        return (f"does not fit by {-self.headroom_bytes / d:.1f} {u} ({self.needed_bytes / d:.1f} of "
                f"{self.usable_bytes / d:.1f} {u} usable)")

    def band(self) -> str:
        if self.error_band_pct is None:
            return "uncalibrated" if self.allowance == "modelled" else \
                "calibrated, but no cross-validated error in the table (needs >= 2 models or seq lens)"
        return f"±{self.error_band_pct:.1f} % (cross-validated MAPE of simulate's calibrated nvml_peak)"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["verdict"] = self.verdict()
        d["headroom_bytes"] = self.headroom_bytes
        d["error_band"] = self.band()
        for key, sol in (("max_batch", self.max_batch), ("max_seq", self.max_seq)):
            if sol is not None:
                d[key]["checked"] = sol.check_text(*reversed(self.unit()))
                d[key]["needed"] = {str(k): v for k, v in sol.needed.items()}
        return d


class Predictor:
    """simulate(cfg) with memoised results per config hash, and the allowance on top."""

    def __init__(self, allowance: Allowance, usable: int, worker: SimWorker | None = None):
        self.allowance = allowance
        self.usable = usable
        self.records: dict[str, dict] = {}
        self.count_work: str | None = None  # config hash whose simulation also counts FLOPs/bytes (profiler.timing)
        self.worker = worker  # a second process that simulates half of what `evaluate` is given

    def evaluate(self, cfgs: list[RunConfig]) -> None:
        """Simulate every config not simulated yet: with a worker, every second one there while this process runs
        the others (the one whose work is counted stays here); where the worker died, its share runs here."""
        todo = list({c.config_hash(): c for c in cfgs if c.config_hash() not in self.records}.values())
        todo.sort(key=lambda c: c.config_hash() != self.count_work)
        if self.worker is None or len(todo) < 2 or not self.worker.alive:
            for c in todo:
                self.record(c)
            return
        there = todo[1::2]
        self.worker.send(there)
        try:
            for c in todo[0::2]:
                self.record(c)
        except BaseException:  # its answers would be read as the next call's: the worker is done
            self.worker.stop()
            raise
        failure: Exception | None = None
        for c in there:  # every answer read, so the next call starts in step
            try:
                rec = self.worker.receive()
            except Exception as exc:
                failure = failure or exc
                continue
            if rec is None:  # the worker is gone: the rest of its share runs here
                self.record(c)
            elif rec["status"] != "ok":
                failure = failure or SimulationFailed(f"simulate: {rec['status']}: {rec.get('error')}")
            else:
                self.records[c.config_hash()] = rec
        if failure is not None:
            raise failure

    def record(self, cfg: RunConfig) -> dict:
        key = cfg.config_hash()
        if key not in self.records:
            from profiler.simulate.backend import simulate

            recorder = None
            if key == self.count_work:  # time asked for (fit --tokens ...): this one run also counts its work
                from profiler.timing.flops import WorkRecorder

                recorder = WorkRecorder()
            # primed: same peaks as plain simulate (tests/simulate/test_primed.py)
            rec = simulate(cfg, primed=True, recorder=recorder)
            if rec["status"] != "ok":
                raise SimulationFailed(f"simulate: {rec['status']}: {rec.get('error')}")
            self.records[key] = rec
        return self.records[key]

    def peaks(self, cfg: RunConfig) -> tuple[int, int | None]:
        """Simulated peak allocated bytes and the replayed peak reserved bytes (None: no replay in the record);
        bitsandbytes' 8-bit optimizers run their own step on fake tensors."""
        rec = self.record(cfg)
        return rec["peaks"]["peak_allocated_bytes"], rec.get("predicted_reserved_bytes")

    def peak(self, cfg: RunConfig) -> int:
        """Simulated peak allocated bytes (see `peaks`)."""
        return self.peaks(cfg)[0]

    def needed(self, cfg: RunConfig) -> int:
        peak, reserved = self.peaks(cfg)
        return peak + self.allowance.allocator_bytes(peak, reserved)

    def fits(self, cfg: RunConfig) -> bool:
        return self.needed(cfg) <= self.usable


def with_changes(cfg: RunConfig, **sections: dict) -> RunConfig:
    """A validated copy of cfg with some keys of some sections replaced: with_changes(cfg, train={...}). Starts from
    what the config's author set, so the recipe's and the model's defaults are derived again for the changed
    config (a switch to QLoRA under recipe trl gets TRL's QLoRA settings)."""
    from profiler.config import user_data

    data = user_data(cfg)
    for sec, upd in sections.items():
        data[sec] = {**data.get(sec, {}), **upd}
    train = data.get("train", {})
    if train.get("doc_len") and train["doc_len"] > train.get("seq_len", cfg.train.seq_len):
        train["doc_len"] = train.get("seq_len", cfg.train.seq_len)  # a shorter seq searched: one sequence a sample
    return RunConfig.model_validate(data)


def position_limit(cfg: RunConfig) -> int | None:
    """The longest sequence the model's config allows (profiler.hf_config.position_limit: n_positions, or
    max_position_embeddings stretched by a rope scaling factor); fit refuses a --seq beyond it."""
    from profiler.hf_config import position_limit as limit_of
    from profiler.hf_config import resolve_hf_config

    found = limit_of(resolve_hf_config(cfg.model))
    return found[0] if found else None


def max_batch(pred: Predictor, cfg: RunConfig, cap: int = BATCH_CAP) -> MaxSolution:
    """Largest train.batch_size at this seq under the predictor."""
    return _drive(pred, {"batch": (_batch_steps(pred, cfg, cap=cap), _batch_cfg(cfg))})["batch"]


def max_seq(pred: Predictor, cfg: RunConfig, cap: int | None = None) -> MaxSolution:
    """Largest train.seq_len at this batch; quadratic where attention keeps s x s probabilities."""
    return _drive(pred, {"seq": (_seq_steps(pred, cfg, cap=cap), _seq_cfg(cfg))})["seq"]


def _batch_cfg(cfg: RunConfig) -> Callable[[int], RunConfig]:
    return lambda b: with_changes(cfg, train={"batch_size": b})


def _seq_cfg(cfg: RunConfig) -> Callable[[int], RunConfig]:
    return lambda s: with_changes(cfg, train={"seq_len": s})


def _seq_cap(cfg: RunConfig, cap: int | None = None) -> int:
    return cap or position_limit(cfg) or 1 << 17


def _quadratic(pred: Predictor, cfg: RunConfig) -> bool:
    """Whether the attention kernel the simulation at cfg picked keeps s x s probabilities (math, eager)."""
    kernel = str(pred.record(cfg).get("attention_kernel") or "")
    return any(k in kernel for k in ("math", "eager"))


def _batch_steps(pred: Predictor, cfg: RunConfig, cap: int = BATCH_CAP, start: int | None = None,
                 model: str | None = None, together: bool = False, known: dict[int, int] | None = None):
    """The max batch search: probes at 1 and 2, or only the config's own batch (the verdict) where `start`
    guesses from elsewhere; `known`: points simulated already (the verdict)."""
    probes = (1, 2) if start is None else (cfg.train.batch_size,)
    return solve_steps(pred.usable, probes, cap, 1, "batch_size", known=known, start=start, model=model,
                       together=together)


def _seq_steps(pred: Predictor, cfg: RunConfig, cap: int | None = None, known: dict[int, int] | None = None,
               together: bool = False):
    """The max seq search. Probes at s and 2s (s/2 too where quadratic); fit's plan has simulated the verdict and
    the longest sequence the model allows first (`known`), then the line through those two is the first guess,
    and where the longest fits that one simulation is the answer."""
    cap = _seq_cap(cfg, cap)
    s = cfg.train.seq_len
    # the kernel the simulation at seq s used (it is the search's probe at s too); the optimizer does not choose
    # it: an adamw copy, as simulated here before, cost one more simulation under trl's adamw_fused
    quadratic = _quadratic(pred, with_changes(cfg, train={"seq_len": s}))
    if known and cap in known and cap > s and not quadratic:  # fit's first round: the line through s and cap
        probes: tuple[int, ...] = (s,)
    else:
        probes = tuple(p for p in ((s // 2, s, 2 * s) if quadratic else (s, 2 * s)) if 1 <= p <= cap)
        if len(probes) < (3 if quadratic else 2):
            probes = tuple(sorted({max(1, s // 4), max(1, s // 2), min(s, cap)}))
    return solve_steps(pred.usable, probes, cap, 2 if quadratic else 1, "seq_len", known=known, together=together)


def _drive(pred: Predictor, searches: dict[str, tuple]) -> dict[str, MaxSolution]:
    """Run searches side by side: each round, every point any of them asks for is simulated in one
    `pred.evaluate` (two processes where the predictor has a worker), then each goes on with its answers."""
    asks: dict[str, list[int]] = {}
    done: dict[str, MaxSolution] = {}

    def advance(name: str, sent: dict[int, int] | None) -> None:
        steps = searches[name][0]
        try:
            asks[name] = next(steps) if sent is None else steps.send(sent)
        except StopIteration as stop:
            asks.pop(name, None)
            done[name] = stop.value

    for name in searches:
        advance(name, None)
    while asks:
        pred.evaluate([searches[n][1](v) for n, vs in asks.items() for v in vs])
        for name, vs in list(asks.items()):
            advance(name, {v: pred.needed(searches[name][1](v)) for v in vs})
    return done


def fit_searches(pred: Predictor, cfg: RunConfig, together: bool = False) -> tuple[MaxSolution, MaxSolution]:
    """fit's max batch and max seq, side by side. The verdict (simulated already) and the longest sequence the
    model allows are the first round: where that one fits, it is the max seq. Where attention is linear in seq,
    the line through the two (bytes per token) gives the batch search its first guess, so both searches go
    straight to checking a pair; the probe polynomials stay for quadratic attention and where nothing fits."""
    s, b = cfg.train.seq_len, cfg.train.batch_size
    cap = _seq_cap(cfg)
    at_seq = _seq_cfg(cfg)
    fits = pred.fits(cfg)
    known: dict[int, int] = {s: pred.needed(cfg)}  # the verdict: a point of both searches
    start, model = None, None
    if fits and cap > s:
        pred.evaluate([at_seq(cap)])
        known = {s: pred.needed(cfg), cap: pred.needed(at_seq(cap))}
        per_token = (known[cap] - known[s]) / (b * (cap - s))
        if not _quadratic(pred, cfg) and per_token > 0:
            start = max(b + 1, min(BATCH_CAP, b + int((pred.usable - known[s]) // (per_token * s))))
            model = f"affine in tokens (line through seq {s} and {cap} at batch {b})"
    found = _drive(pred, {"batch": (_batch_steps(pred, cfg, start=start, model=model, together=together,
                                                 known={b: known[s]}), _batch_cfg(cfg)),
                          "seq": (_seq_steps(pred, cfg, cap=cap, known=known, together=together), at_seq)})
    return found["batch"], found["seq"]


PARALLEL_MIN_PARAMS = 1e9  # below this a simulation takes about a second: a second process (~3 s to start) loses


def default_workers(cfg: RunConfig) -> int:
    """2 where the machine lets this process use 2+ cores and the model is large enough to pay for the second
    process's start-up; else 1."""
    import os

    from profiler.hf_config import resolve_hf_config

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    text = resolve_hf_config(cfg.model).get_text_config()
    h, n = getattr(text, "hidden_size", 0) or 0, getattr(text, "num_hidden_layers", 0) or 0
    rough = 12 * n * h * h + (getattr(text, "vocab_size", 0) or 0) * h  # dense decoder parameters
    return 2 if cores >= 2 and rough >= PARALLEL_MIN_PARAMS else 1


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (its own, not its children's)."""
    return time.process_time()


def _sim_worker(conn, alive=None) -> None:
    """The second process: simulates each config it is sent, in order, and sends back (record, CPU seconds so
    far); an exception goes back as the record's place (the parent raises it as its own). It ends on None, on
    EOF, and when `alive`'s write end closes: `fit` exited, even by kill -TERM / -KILL, so it never simulates
    on as an orphan."""
    import signal

    if alive is not None:
        from profiler.lifeline import watch

        watch(alive)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it ends this process
    from profiler.measure.quiet import quiet_libraries
    from profiler.simulate.backend import simulate  # imported while the parent builds its first simulation

    quiet_libraries()
    while True:
        try:
            data = conn.recv()
        except (EOFError, OSError):
            return
        if data is None:
            return
        try:
            conn.send((simulate(RunConfig.model_validate(data), primed=True), cpu_seconds()))
        except Exception as exc:  # ConfigError and the like: answers the parent raises as its own
            exc.__traceback__ = None
            conn.send((exc, cpu_seconds()))


class SimWorker:
    """A second process that simulates what `Predictor.evaluate` sends it (forkserver: forking a process that has
    torch loaded can deadlock). Started first, so its imports overlap the verdict's simulation here."""

    def __init__(self):
        import multiprocessing

        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")  # Windows: spawn
        self._conn, theirs = ctx.Pipe()
        alive, self._alive = ctx.Pipe(duplex=False)  # only this process holds the write end: EOF = it is gone
        self._proc = ctx.Process(target=_sim_worker, args=(theirs, alive), daemon=True, name="fit-worker")
        self._proc.start()
        theirs.close()
        alive.close()
        self.cpu_seconds = 0.0  # the worker's CPU, as of its last answer
        self.alive = True

    def send(self, cfgs: list[RunConfig]) -> None:
        try:
            for c in cfgs:
                self._conn.send(c.model_dump())
        except OSError:
            self.alive = False

    def receive(self) -> dict | None:
        """The next record; None where the worker died (the caller simulates that config itself)."""
        if not self.alive:
            return None
        try:
            value, self.cpu_seconds = self._conn.recv()
        except (EOFError, OSError):
            self.alive = False
            return None
        if isinstance(value, Exception):
            raise value
        return value

    def stop(self) -> None:
        self.alive = False
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join()
        self._conn.close()
        self._alive.close()


def simulated_suggestions(pred: Predictor, cfg: RunConfig) -> list[Suggestion]:
    """Changes that might make a config fit, each simulated: gradient checkpointing, QLoRA 4-bit, an 8-bit
    optimizer, and all of them together when none fits alone (they need no max solution; with a worker, two
    are simulated at once)."""
    training = cfg.regime.kind != "inference"
    tries: list[tuple[str, list[str], dict]] = []
    if training and not cfg.train.gradient_checkpointing:
        tries.append(("gradient checkpointing", ["train.gradient_checkpointing=true"],
                      {"train": {"gradient_checkpointing": True}}))
    if training and cfg.regime.label != "qlora4":
        tries.append(("QLoRA 4-bit (--regime qlora4)", ["regime.kind=qlora", "regime.bits=4"],
                      {"regime": {"kind": "qlora", "bits": 4}}))
    if training and cfg.optimizer.name in ("adam", "adamw", "adamw_fused"):
        tries.append(("8-bit AdamW (--optimizer adamw_8bit)",
                      ["optimizer.name=adamw_8bit"],
                      {"optimizer": {"name": "adamw_8bit"}}))
    out = []
    pred.evaluate([with_changes(cfg, **changes) for _, _, changes in tries])  # two at once with a worker
    for label, overrides, changes in tries:
        c = with_changes(cfg, **changes)
        out.append(Suggestion(label, overrides, pred.needed(c), pred.fits(c)))
    if len(tries) > 1 and not any(s.fits for s in out):
        merged: dict[str, dict] = {}
        for _, _, changes in tries:
            for sec, upd in changes.items():
                merged.setdefault(sec, {}).update(upd)
        c = with_changes(cfg, **merged)
        out.append(Suggestion(" + ".join(t[0].split(" (")[0] for t in tries), [o for t in tries for o in t[1]],
                              pred.needed(c), pred.fits(c)))
    if training and cfg.parallel.strategy == "none":
        for more in (more_gpus(pred, cfg), zero3_more_gpus(pred, cfg)):
            if more is not None:
                out.append(more)
    return out


def more_gpus(pred: Predictor, cfg: RunConfig, tries: int = 3) -> Suggestion | None:
    """FSDP2 across N GPUs of this kind: N from the `components` estimate (`estimate --min-gpus`), then
    simulated (rank 0 under the fake process group); where N does not fit, 2N, up to `tries` simulations.
    None where no world size is predicted to fit, or the sharded run cannot be configured or simulated."""
    from profiler.config import ConfigError
    from profiler.formulas.min_gpus import min_gpus, with_parallel

    try:
        found = min_gpus(cfg, "components", "fsdp2", pred.usable + pred.allowance.context_bytes)
    except (ConfigError, ValueError):
        return None
    if found is None:
        return None
    n = max(2, found[0])
    for i in range(tries):
        try:
            c = with_parallel(cfg, strategy="fsdp2", world_size=n)
            needed = pred.needed(c)
        except (ConfigError, SimulationFailed):
            return None
        if needed <= pred.usable or i == tries - 1:  # the last try's n is the one its figure is for
            break
        n *= 2
    return Suggestion(f"FSDP2 across {n} GPUs of this kind (per GPU)",
                      ["parallel.strategy=fsdp2", f"parallel.world_size={n}"], needed, needed <= pred.usable)


def zero3_more_gpus(pred: Predictor, cfg: RunConfig) -> Suggestion | None:
    """QLoRA 4-bit: ZeRO-3 across N GPUs of this kind beside FSDP2 (PEFT's two multi-GPU QLoRA recipes), N and the
    figure from the `components` estimate alone: DeepSpeed does not run on fake tensors, so this one is not
    simulated (no simulation is added to fit). Its total already holds components' CUDA context + allocator
    slack; the context is taken off to compare it with the usable bytes, as `more_gpus` budgets min_gpus.
    None outside qlora 4-bit, or where no world size is estimated to fit."""
    from profiler.config import ConfigError
    from profiler.formulas.min_gpus import min_gpus

    if cfg.regime.label != "qlora4":
        return None
    extra: list[str] = []
    if cfg.optimizer.name == "adamw_fused":  # Trainer's default; under DeepSpeed AdamW on its fp32 partitions, as the
        cfg = with_changes(cfg, optimizer={"name": "adamw"})  # config allows it (same states; fused differs in temps)
        extra = ["optimizer.name=adamw"]
    try:
        found = min_gpus(cfg, "components", "zero3", pred.usable + pred.allowance.context_bytes)
    except (ConfigError, ValueError):
        return None
    if found is None:
        return None
    n, est = max(2, found[0]), found[1]
    if n != found[0]:
        from profiler.formulas import estimate
        from profiler.formulas.min_gpus import with_parallel

        est = estimate("components", with_parallel(cfg, strategy="zero3", world_size=n))
    needed = est.total - pred.allowance.context_bytes
    return Suggestion(f"ZeRO-3 across {n} GPUs of this kind (per GPU; estimated by components, not simulated: "
                      f"DeepSpeed does not run on fake tensors)",
                      ["parallel.strategy=zero3", f"parallel.world_size={n}", *extra], needed, needed <= pred.usable)


def limit_suggestions(cfg: RunConfig, seq_sol: MaxSolution | None,
                      batch_sol: MaxSolution | None) -> list[Suggestion]:
    """A shorter sequence / a smaller batch, from the max solutions (already simulated)."""
    out = []
    if seq_sol is not None and seq_sol.value >= 1:
        out.append(Suggestion(f"a shorter sequence: --seq {seq_sol.value}", [f"train.seq_len={seq_sol.value}"],
                              seq_sol.needed[seq_sol.value], True))
    if batch_sol is not None and batch_sol.value >= 1 and batch_sol.value < cfg.train.batch_size:
        out.append(Suggestion(f"a smaller batch: --batch {batch_sol.value}", [f"train.batch_size={batch_sol.value}"],
                              batch_sol.needed[batch_sol.value], True))
    return out


def predict_fit(cfg: RunConfig, gpu: Gpu, *, model_name: str | None = None, model_source: str = "",
                auto_batch: bool = False, calibration: str | None = None, search: bool = True,
                all_estimators: bool = False, progress: Callable[[str], None] | None = None,
                workers: int | None = None, count_work: bool = False) -> FitResult:
    """The whole answer for one config on one GPU (see the module docstring). `workers`: 2 simulates in a second
    process too, two points of each round of the searches at once (None: `default_workers`); the answer is the
    same. `count_work`: the verdict's simulation also counts FLOPs and bytes per phase (FitResult.work, for the
    time estimate of profiler.timing)."""
    t0 = time.perf_counter()
    say = progress or (lambda _msg: None)
    from profiler.measure.quiet import quiet_libraries

    quiet_libraries()
    allowance = calibrated_allowance(cfg, gpu, calibration)
    if gpu.total_bytes <= allowance.context_bytes:  # refused before any process starts
        from profiler.config import ConfigError

        raise ConfigError(f"--gpu-memory: {gpu.name} ({gpu.total_bytes / 2**20:.1f} MiB) is not more than the "
                          f"CUDA context alone ({allowance.context_bytes / 2**20:.0f} MiB, {allowance.kind}); "
                          f"allowed: a size above it")
    worker = None
    if search and (workers if workers is not None else default_workers(cfg)) > 1:
        worker = SimWorker()  # before the verdict: its imports overlap the verdict's simulation
    try:
        pred = Predictor(allowance, gpu.total_bytes - allowance.context_bytes, worker)
        batch_sol = None
        if auto_batch:
            say("solving for the largest batch")
            batch_sol = _drive(pred, {"batch": (_batch_steps(pred, cfg, together=worker is not None),
                                                _batch_cfg(cfg))})["batch"]
            cfg = with_changes(cfg, train={"batch_size": max(1, batch_sol.value)})
        if count_work:
            key = cfg.config_hash()
            pred.count_work = key
            pred.records.pop(key, None)  # simulated during the batch search without counting: once more, counting
        return _answer(cfg, gpu, pred, allowance, batch_sol, t0, say, model_name, model_source, search,
                       all_estimators)
    finally:
        if worker is not None:
            worker.stop()


def _answer(cfg: RunConfig, gpu: Gpu, pred: Predictor, allowance: Allowance, batch_sol: MaxSolution | None,
            t0: float, say: Callable[[str], None], model_name: str | None, model_source: str, search: bool,
            all_estimators: bool) -> FitResult:
    """predict_fit after the set-up: the verdict, the searches, the suggestions."""
    together = pred.worker is not None
    say(f"simulating batch {cfg.train.batch_size} x seq {cfg.train.seq_len}"
        + (" (and the longest sequence in a second process)" if together and search and batch_sol is None else ""))
    cap = _seq_cap(cfg) if search and batch_sol is None else 0
    pred.evaluate([cfg] + ([_seq_cfg(cfg)(cap)] if together and cap > cfg.train.seq_len else []))
    rec = pred.record(cfg)
    peak, reserved = pred.peaks(cfg)
    top = max((p for p in rec["phases"] if p.get("step") is not None or p["phase"] == "load"),
              key=lambda p: p["peak_allocated_bytes"])
    fits = pred.fits(cfg)
    seq_sol = None
    tips = [] if fits else simulated_suggestions(pred, cfg)
    if search:
        say("solving for the largest batch and the longest sequence")
        if batch_sol is None:
            batch_sol, seq_sol = fit_searches(pred, cfg, together)
        else:
            seq_sol = _drive(pred, {"seq": (_seq_steps(pred, cfg, together=together), _seq_cfg(cfg))})["seq"]
    tips += [] if fits else limit_suggestions(cfg, seq_sol, batch_sol)
    notes = []
    ests: dict[str, int] = {}
    if all_estimators:
        from profiler.formulas import estimate_all

        ests = {e.estimator: e.total for e in estimate_all(cfg)}
    t = cfg.train
    worker = pred.worker
    return FitResult(
        model=model_name or cfg.model.name, model_source=model_source, regime=cfg.regime.label,
        optimizer=cfg.optimizer.name, batch_size=t.batch_size, seq_len=t.seq_len,
        gradient_checkpointing=t.gradient_checkpointing, gpu=gpu.name, gpu_source=gpu.source,
        total_bytes=gpu.total_bytes, usable_bytes=pred.usable, simulated_peak_bytes=peak,
        allocator_bytes=allowance.allocator_bytes(peak, reserved), needed_bytes=pred.needed(cfg), fits=fits,
        allowance=allowance.kind, allowance_source=allowance.source, error_band_pct=allowance.band_pct,
        breakdown=dict(top.get("breakdown") or {}), peak_phase=f"{top['phase']}"
        + (f" (step {top['step']})" if top.get("step") is not None else ""),
        attention_kernel=rec.get("attention_kernel"), max_batch=batch_sol, max_seq=seq_sol, suggestions=tips,
        estimators=ests, simulations=len(pred.records), processes=2 if worker is not None else 1,
        seconds=time.perf_counter() - t0, config=cfg.model_dump(mode="json"), notes=notes,
        work=_work(rec) if pred.count_work else None,
        cpu_seconds=cpu_seconds() + (worker.cpu_seconds if worker is not None else 0.0))


def _work(rec: dict) -> dict | None:
    from profiler.timing.flops import step_work

    try:
        return step_work(rec)
    except ValueError:
        return None
