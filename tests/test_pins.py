"""Pins: constraints.txt pins every dependency exactly, inside pyproject's ranges, and CI installs with it."""

from __future__ import annotations

import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from profiler.config import REPO_ROOT


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def test_every_dependency_is_pinned_within_its_range():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins()
    extras = project["optional-dependencies"]
    assert {"dev", "trainer", "deepspeed"} <= set(extras)
    for spec in project["dependencies"] + [s for specs in extras.values() for s in specs]:
        req = Requirement(spec)
        pin = pins.get(canonicalize_name(req.name))
        assert pin is not None, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pin, prereleases=True), f"{req.name}=={pin} is outside {req.specifier}"
    assert pins["torch"] == "2.13.0"


def test_patched_libraries_have_an_upper_bound():
    """simulate/ patches private internals of these: a new major may move them."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    reqs = {canonicalize_name(Requirement(s).name): Requirement(s) for s in project["dependencies"]}
    for name in ("torch", "transformers", "bitsandbytes"):
        assert any(sp.operator == "<" for sp in reqs[name].specifier), name


def test_ci_installs_with_the_constraints():
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    installs = [x for x in ci.splitlines() if "pip install" in x and "--upgrade pip" not in x]
    assert installs and all("-c constraints.txt" in x for x in installs), installs
    assert any(".[dev,trainer,deepspeed]" in x for x in installs), "CI installs the optional extras it tests"
    newest = (REPO_ROOT / "scripts" / "ci_newest.sh").read_text()  # the newest releases: no pins but torch
    assert "-c constraints.txt" not in newest and "torch==2.13.0" in newest


def test_peft_and_deepspeed_have_an_upper_bound():
    """Issue 23, item 30: the parallel and LoRA code read their internals (lora_A/lora_B parameter names,
    the DeepSpeed engine's inner optimizer): a new major may move them."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + project["optional-dependencies"]["deepspeed"]
    reqs = {canonicalize_name(Requirement(s).name): Requirement(s) for s in specs}
    for name in ("peft", "deepspeed"):
        assert any(sp.operator == "<" for sp in reqs[name].specifier), name


def test_the_nightly_workflow_pins_runs_the_gpu_tests_and_the_newest_releases():
    """Issue 23, item 30: the nightly GPU job installs the versions CI tests, runs `pytest -m gpu`, and
    scripts/ci_newest.sh runs on the same schedule."""
    import yaml

    flow = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / "nightly-gpu.yml").read_text())
    assert flow[True]["schedule"]  # YAML 1.1 reads the `on:` key as True
    jobs = flow["jobs"]
    runs = {name: "\n".join(s.get("run", "") for s in job["steps"]) for name, job in jobs.items()}
    for name, text in runs.items():
        installs = [x for x in text.splitlines() if "pip install" in x and "--upgrade pip" not in x]
        assert name == "newest" or installs and all("-c constraints.txt" in x for x in installs), (name, installs)
    assert "pytest -m gpu" in runs["gpu"]
    assert "scripts/ci_newest.sh" in runs["newest"]
