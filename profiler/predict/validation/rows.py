"""The rows file (validation/published.yaml): published figures, each with the config that expresses it in our terms.

A row inherits its source's fields: `setup`, `config` and `ref` merge deeply (the row's keys win), the lists
`not_expressed`, `caveats` and `basis` are the source's followed by the row's, and every other field is the row's
where it sets one. docs/validation.md describes the fields. Memory metrics are allocated, reserved, nvidia-smi and
not-stated; a row with any other metric (throughput, later) is kept for its own check and skipped here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from profiler.config import REPO_ROOT, ConfigError, RunConfig, load_config, moe_experts, read_yaml

DEFAULT_ROWS = REPO_ROOT / "validation" / "published.yaml"
MEMORY_METRICS = ("allocated", "reserved", "nvidia-smi", "not-stated")
UNIT_BYTES = {"GiB": 2**30, "GB": 10**9, "MiB": 2**20, "MB": 10**6}
ERAS = ("current", "old")
INHERITED = ("group", "ref", "stack", "era", "metric", "unit", "gpu", "setup", "config", "not_expressed", "caveats",
             "basis")
LISTS = ("not_expressed", "caveats", "basis")  # the source's list followed by the row's
RECIPE_OF_STACK = {"trl": "trl", "trainer": "trainer"}  # stack -> the `recipe` whose defaults it runs with


class Row(BaseModel):
    """One published figure, its source's fields merged in."""

    model_config = ConfigDict(extra="forbid")

    id: str
    source: str
    group: str  # source group: torchtitan, answerai, peft-docs, ms-swift, axolotl, peft-bench, ...
    ref: dict[str, str]  # repo + path + commit, or url
    stack: str  # torchtitan, custom, trl, trainer (recipes: the lead wires trl/trainer to the `recipe` key)
    era: Literal["current", "old"]  # current: a 2025-2026 stack
    metric: str  # allocated | reserved | nvidia-smi | not-stated; other metrics are not memory
    unit: Literal["GiB", "GB", "MiB", "MB"] | str
    value: float | None  # None: the source gives no number (an OOM): such a row has not_run
    gpu: str | None = None  # the GPU the source measured on: a preset of profiler/data/gpus.csv or its name as written
    range: list[float] | None = None
    setup: dict[str, Any] = Field(default_factory=dict)  # the setup as the source states it (free text)
    config: dict[str, Any] | None = None  # our RunConfig keys; None for rows we cannot run
    not_expressed: list[str] = Field(default_factory=list)  # settings of the source our config cannot express
    caveats: list[str] = Field(default_factory=list)  # facts about the figure that are not settings
    basis: list[str] = Field(default_factory=list)  # what pins the metric or setup, each with the source's file:line
    not_run: str | None = None  # why no predictor can run this row
    cause: str | None = None  # why the prediction misses by more than 25 %, where it does
    subset: list[str] = Field(default_factory=list)  # fast: the CI subset
    n_gpus: int | None = None  # where no config says it (rows not run)
    moe: bool | None = None  # where no config says it (rows not run)

    @property
    def is_memory(self) -> bool:
        return self.metric in MEMORY_METRICS

    @property
    def expressible(self) -> bool:
        return self.not_run is None and not self.not_expressed

    def gpu_arch(self) -> tuple[str, str]:
        """(the config's `gpu_arch`, how it was chosen) from the row's GPU, as `fit --gpu` sets it
        (profiler.commands.fit: `data["gpu_arch"] = gpu.arch`): the preset's compute capability in
        profiler/data/gpus.csv; 'auto' (torch 2.13's sm80 SDPA rules, profiler.simulate.cuda_sdpa.DEFAULT_ARCH)
        where the source names no GPU, a GPU that is not a preset, or a preset without a cited compute capability.
        A `gpu_arch` in the row's config wins."""
        from profiler.predict.gpus import gpu_by_name

        if self.config and self.config.get("gpu_arch"):
            return str(self.config["gpu_arch"]), "set in the row's config"
        if not self.gpu:
            return "auto", "GPU not stated by the source: compute capability unknown (sm80 rules assumed)"
        try:
            gpu = gpu_by_name(self.gpu)
        except ConfigError:
            return "auto", f"{self.gpu}: not a GPU preset, compute capability unknown (sm80 rules assumed)"
        if gpu.arch == "auto":
            return "auto", f"{gpu.name}: no cited compute capability in gpus.csv (sm80 rules assumed)"
        return gpu.arch, f"{gpu.name}: compute capability {gpu.compute_capability} (gpus.csv)"

    def run_config(self) -> RunConfig:
        """The row's config as a validated RunConfig (device cuda), with the recipe of the row's stack filling
        the keys the row leaves unset (a TRL or Trainer run gets that stack's defaults, README "Recipes") and
        `gpu_arch` from the row's GPU (gpu_arch); ConfigError names the row."""
        if self.config is None:
            raise ConfigError(f"row {self.id}: no config (not_run: {self.not_run})")
        base = {"recipe": RECIPE_OF_STACK.get(self.stack, "plain"), **self.config, "device": "cuda",
                "gpu_arch": self.gpu_arch()[0]}
        try:
            return load_config(None, [], base=base)
        except ConfigError as exc:
            raise ConfigError(f"row {self.id}: config: {exc}") from None

    @property
    def gpus(self) -> int:
        if self.n_gpus is not None:
            return self.n_gpus
        return int((self.config or {}).get("parallel", {}).get("world_size", 1))

    @property
    def is_moe(self) -> bool:
        if self.moe is not None:
            return self.moe
        if self.config is None:
            return False
        return moe_experts(self.run_config().model) > 1

    @property
    def era_group(self) -> str:
        """current HF stack / current other stack / old stack."""
        if self.era == "old":
            return "old stack"
        return "current other stack" if self.stack == "torchtitan" else "current HF stack"

    def tags(self) -> list[str]:
        """What `--only` matches: the id, the source group, the stack, era, single/multi, dense/moe, subsets."""
        return [self.id, self.group, self.stack, self.era, "multi" if self.gpus > 1 else "single",
                "moe" if self.is_moe else "dense", "expressible" if self.expressible else "not-expressible",
                *self.subset]


def _merge(base: Any, over: Any) -> Any:
    """Deep merge of dicts (over wins); anything else: over."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base.get(k), v) if k in base else v
        return out
    return over


def resolve(raw: dict, sources: dict[str, dict]) -> dict:
    """A row dict with its source's fields merged in (module docstring)."""
    src = sources[raw["source"]]
    out = {k: src[k] for k in INHERITED if k in src}
    for k, v in raw.items():
        if k in LISTS:
            out[k] = [*src.get(k, []), *v]
        elif k in ("setup", "config", "ref") and k in out:
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    if out.get("not_run"):
        out.pop("config", None)  # a row no predictor runs has no config (its source's defaults do not apply)
    return out


def load_rows(path: str | Path | None = None) -> list[Row]:
    """Every row of the rows file, resolved and checked; ConfigError (one line) on any problem."""
    p = Path(path) if path is not None else DEFAULT_ROWS
    if path is None and not p.is_file():
        raise ConfigError(f"--rows: the default rows file {p} is not here (an installed package has no "
                          "validation/ folder); give --rows FILE")
    if not p.is_file():
        raise ConfigError(f"--rows: file {str(p)!r} does not exist")
    data = read_yaml(p)
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ConfigError(f"--rows: {p}: top level must be a mapping with a `rows` list (and `sources`)")
    sources = data.get("sources") or {}
    rows, seen = [], set()
    for i, raw in enumerate(data["rows"]):
        if not isinstance(raw, dict) or "id" not in raw:
            raise ConfigError(f"--rows: {p}: rows[{i}] is not a mapping with an id")
        rid = raw["id"]
        if rid in seen:
            raise ConfigError(f"--rows: {p}: row id {rid!r} is given twice")
        seen.add(rid)
        if raw.get("source") not in sources:
            raise ConfigError(f"--rows: {p}: row {rid}: source {raw.get('source')!r} is not one of "
                              f"{', '.join(sources) or '(none)'}")
        try:
            row = Row.model_validate(resolve(raw, sources))
        except ValidationError as err:
            e = err.errors()[0]
            key = ".".join(str(x) for x in e["loc"])
            raise ConfigError(f"--rows: {p}: row {rid}: {key}: {e['msg']}") from None
        if row.is_memory and row.unit not in UNIT_BYTES:
            raise ConfigError(f"--rows: {p}: row {rid}: unit {row.unit!r} is not allowed; allowed: "
                              f"{', '.join(UNIT_BYTES)}")
        if row.not_run is None and (row.config is None or row.value is None):
            raise ConfigError(f"--rows: {p}: row {rid}: a row without not_run needs a config and a value")
        if row.not_run is None:
            try:
                row.run_config()  # a setting our config cannot take is refused here, never dropped or approximated
            except ConfigError as exc:
                raise ConfigError(f"--rows: {p}: {exc}") from None
        rows.append(row)
    return rows
