"""The consistency grid, sampled: `components` within 5 % of `simulate` on every point of the CI sample (all pairs
of factor values but the family's, every family present) where both run, or the point is in
tests/formulas/known_differences.yaml with its cause; a listed point that agrees fails too, so the file stays
honest. No estimator raises on any point of the all-pairs sample, family included (an estimate, or NotApplicable:
'not modelled: why'). The grid, the samplers and the stand-ins (real widths, 2 layers) are
scripts/grid_consistency.py; its table is docs/consistency.md.
Run: `python -m pytest tests/formulas/test_grid.py`."""

from __future__ import annotations

import importlib.util
import itertools

import pytest

from profiler.config import REPO_ROOT

_spec = importlib.util.spec_from_file_location("grid_consistency", REPO_ROOT / "scripts" / "grid_consistency.py")
gc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gc)

POINTS = gc.pairwise()  # every pair of factor values, family included (~140 points): the crash check
SIMULATED = gc.ci_sample()  # every pair but the family's, each family present (~30 points): components vs simulate
KNOWN = gc.load_known()


def test_the_sample_covers_every_valid_pair():
    """Each pair of factor values some valid point holds is in a sampled point, and every sampled point is valid."""
    keys = list(gc.GRID)
    have = {((a, p[a]), (b, p[b])) for p in POINTS for a, b in itertools.combinations(keys, 2)}
    full = gc.full_grid()
    possible = {((a, p[a]), (b, p[b])) for p in full for a, b in itertools.combinations(keys, 2)}
    assert have == possible
    assert all(gc.valid(p) for p in POINTS) and len(POINTS) < len(full) / 50
    rest = [k for k in keys if k != "family"]
    have = {((a, p[a]), (b, p[b])) for p in SIMULATED for a, b in itertools.combinations(rest, 2)}
    assert have == {((a, p[a]), (b, p[b])) for p in full for a, b in itertools.combinations(rest, 2)}
    assert {p["family"] for p in SIMULATED} == set(gc.FAMILIES) and all(gc.valid(p) for p in SIMULATED)


def test_every_known_difference_is_a_sampled_point_with_a_cause():
    ids = {gc.point_id(p) for p in POINTS + SIMULATED}  # the script's table lists the pairwise sample's causes too
    assert set(KNOWN) <= ids, sorted(set(KNOWN) - ids)
    assert all(cause.strip() for cause in KNOWN.values())


@pytest.mark.parametrize("point", POINTS, ids=gc.point_id)
def test_no_estimator_raises(point):
    """Every config the grid holds is accepted, and every registered estimator answers it: a figure or
    'not modelled: why' (NotApplicable); anything it raises fails here."""
    from profiler.formulas import ESTIMATORS

    lines = gc.estimator_lines(gc.config_of(point))
    assert set(lines) == set(ESTIMATORS) and lines["components"].startswith("ok ")
    for name, line in lines.items():
        assert line.startswith("ok ") or (line.startswith("not modelled: ") and len(line) > 15), (name, line)


@pytest.mark.parametrize("point", [p for p in SIMULATED if not gc.PARALLEL[p["parallel"]].get("offload")],
                         ids=gc.point_id)
def test_components_within_5_percent_of_simulate_or_known(point):
    row = gc.compare(point, real=False, run_simulate=True)
    pid, pct = row["id"], row["pct"]
    if pct is None:  # simulate failed on a config the config accepts: only as a listed, explained difference
        assert pid in KNOWN, (pid, row["simulate_status"])
        return
    if pid in KNOWN:
        assert abs(pct) > 100 * gc.TOLERANCE, (f"{pid} now agrees ({pct:+.2f} %): remove it from "
                                               "tests/formulas/known_differences.yaml")
    else:
        assert abs(pct) <= 100 * gc.TOLERANCE, (pid, pct, row["components"], row["simulate"], row.get("kernel"))


def test_offload_points_have_estimates_and_no_simulation():
    """CPU offload is not simulated (one device): those points get components' per-rank figure with the host share."""
    for point in [p for p in POINTS if gc.PARALLEL[p["parallel"]].get("offload")][:3]:
        row = gc.compare(point, run_simulate=False)
        assert row["components"] > 0 and "on the host per rank" in row["components_notes"]



def test_the_sweep_gives_the_per_point_numbers():
    """scripts/grid_consistency.py's sweep (one process, gc.freeze after the first point, one simulation per
    distinct RunConfig) gives compare()'s row on each point: the same figure from every estimator, the same
    components and simulate bytes. GPT-2's seq 2048 and 8192 are one config (seq capped at 1024): simulated once."""
    import gc as collector

    ids = ["gpt2/full/none/s2048/b1/nockpt/ac-none", "smollm2-1.7b/inference/none/s512/b1/nockpt/ac-none",
           "gpt2/full/none/s8192/b1/nockpt/ac-none"]
    by_id = {gc.point_id(p): p for p in gc.full_grid()}
    points = [by_id[i] for i in ids]
    try:
        swept = list(gc.sweep(points))
    finally:
        collector.unfreeze()
    assert [r["id"] for r in swept] == ids
    assert swept[2]["same_as"] == ids[0] and swept[2]["seconds"] == 0.0 and "same_as" not in swept[0]
    assert swept[2]["seq"] == swept[0]["seq"] == 1024
    for point, row in zip(points[:2], swept[:2], strict=True):
        alone = gc.compare(point)
        for key in ("components", "simulate", "pct", "estimators", "simulate_status", "components_notes"):
            assert row[key] == alone[key], (row["id"], key, row[key], alone[key])
    assert swept[2]["simulate"] == swept[0]["simulate"] and swept[2]["batch"] == points[2]["batch"]


def test_a_killed_sweep_resumes_without_rewriting(tmp_path):
    """--json is append-only: a rerun skips the finished points, keeps every finished line byte for byte, and a
    line cut by a kill is left as it is and its point runs again."""
    out = tmp_path / "rows.jsonl"
    args = ["--full", "--families", "gpt2", "--order", "0", "--limit", "2", "--no-simulate", "--json", str(out)]
    gc.main(args)
    first = out.read_bytes()
    assert len(first.splitlines()) == 2
    out.write_bytes(first + b'{"id": "cut')  # killed mid-write
    gc.main([*args[:6], "3", *args[7:]])
    lines = out.read_bytes().splitlines()
    assert out.read_bytes().startswith(first + b'{"id": "cut\n') and len(lines) == 4
    assert gc.done_ids(out) == {gc.point_id(p) for p in gc.sweep_order(gc.full_grid({**gc.GRID, "family": ("gpt2",)}),
                                                                        0)[:3]}
