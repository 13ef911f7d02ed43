"""`calibrate` on lines it cannot rebuild a config from (track's inferred ones): one line each, naming the field."""

from __future__ import annotations

import json

from profiler.cli import main
from profiler.config import REPO_ROOT


def test_a_track_line_with_an_inferred_config_is_skipped_in_one_line(tmp_path, capsys):
    lines = []
    for i, line in enumerate((REPO_ROOT / "tests" / "data" / "synthetic_runs.jsonl").read_text().splitlines()[:2]):
        rec = json.loads(line)
        rec.update(source="track", run_id=f"trackline{i}")
        rec["config"]["model"] = {"arch": "LlamaForCausalLM", "dtype": "bfloat16"}  # what track infers
        rec["config"]["train"]["seq_len"] = None  # no batch seen
        rec["config_hash"] = f"h{i}"
        lines.append(json.dumps(rec))
    path = tmp_path / "track.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert main(["calibrate", str(path), "--out", str(tmp_path / "cal")]) == 1
    err = capsys.readouterr().err.splitlines()
    skipped = [x for x in err if x.startswith("skipped")]
    assert len(skipped) == 2 and len(err) == 3  # one line per skipped line, and the final error
    for x in skipped:
        assert "config model.arch: 'LlamaForCausalLM' is not a bundled architecture" in x
        assert "track(..., config=RunConfig)" in x and len(x) <= 420 and "pydantic" not in x
