"""The package layout is the data flow: a room imports only from its own room or rooms below it.

commands -> predict -> integrations -> learn -> timing -> (simulate | formulas) -> measure -> allocator -> vocabulary
(config, schema, categories, results, summary, hf_config, model_source). allocator (the caching-allocator replay)
reads only an allocation sequence, so it sits just above the vocabulary: measure and simulate may replay what they
record. timing (FLOPs/bytes of a simulated step, the time model) runs simulate and sits under learn and predict.
Every import counts, including the lazy ones inside functions.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from profiler.config import REPO_ROOT

PACKAGE = REPO_ROOT / "profiler"
# rank of each room: a module may import from a room of equal or lower rank, never higher
# integrations (the Trainer callback) sit between learn (it draws the timeline) and commands (trace injects it)
# dryrun (simulate -- python SCRIPT) runs simulate/measure/integrations in the script and reads GPU presets (predict)
RANKS = {"vocabulary": 0, "allocator": 0.5, "measure": 1, "simulate": 2, "formulas": 2, "timing": 2.5, "learn": 3,
         "integrations": 3.5, "predict": 4, "dryrun": 4.5, "commands": 5, "entry": 6}
ENTRY = {"cli", "__main__", "__init__", "api"}


def room_of(module: str) -> str:
    """Room of a dotted module name inside the package (profiler.measure.harness -> measure)."""
    parts = module.split(".")[1:]
    if not parts or (len(parts) == 1 and parts[0] in ENTRY):
        return "entry"
    return parts[0] if parts[0] in RANKS else "vocabulary"


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO_ROOT).with_suffix("")
    return ".".join(rel.parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file, nested ones too, package-internal only."""
    out = []
    pkg = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the package
                base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names if mod in ("profiler",)]
    return [(line, m) for line, m in out if m == "profiler" or m.startswith("profiler.")]


def violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mod = module_name(path)
        mine = room_of(mod)
        for line, target in imports_of(path):
            theirs = room_of(target)
            if target == "profiler" or theirs == "entry" and mine != "entry":
                if mine != "entry":
                    bad.append(f"{path.relative_to(REPO_ROOT)}:{line} imports {target} (an entry point)")
                continue
            if RANKS[theirs] > RANKS[mine] or (RANKS[theirs] == RANKS[mine] and theirs != mine):
                bad.append(f"{path.relative_to(REPO_ROOT)}:{line} ({mine}) imports {target} ({theirs})")
    return bad


def test_no_import_runs_up_the_layers():
    assert violations() == []


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The walker is not vacuous: a lazy upward import inside a function is reported."""
    fake_pkg = tmp_path / "profiler"
    (fake_pkg / "measure").mkdir(parents=True)
    (fake_pkg / "measure" / "x.py").write_text("def f():\n    from profiler.learn.compare import y\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO_ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake_pkg)
    assert violations() == ["profiler/measure/x.py:2 (measure) imports profiler.learn.compare (learn)"]


def test_every_module_says_its_job_on_its_first_line():
    undocumented = [str(p.relative_to(REPO_ROOT)) for p in PACKAGE.rglob("*.py")
                    if not p.read_text().startswith('"""')]
    assert undocumented == []


def test_one_module_per_command_named_after_it():
    from profiler.cli import COMMANDS

    for name, (module, _) in COMMANDS.items():
        assert module == f"profiler.commands.{name}"
    assert {p.stem for p in (PACKAGE / "commands").glob("*.py")} - {"__init__"} == set(COMMANDS)


def test_formulas_never_import_the_measuring_room():
    """Estimators read a model's architecture through the vocabulary (profiler/hf_config.py), never through
    measure/ (issue 23 item 31): a formula's answer cannot depend on how a run is measured."""
    bad = [f"{path.relative_to(REPO_ROOT)}:{line} imports {target}"
           for path in sorted((PACKAGE / "formulas").rglob("*.py"))
           for line, target in imports_of(path) if room_of(target) == "measure"]
    assert bad == []
