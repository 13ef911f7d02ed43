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
