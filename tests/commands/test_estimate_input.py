"""`estimate --min-gpus` answers one GPU where one fits (inference included), and a refusal's allowed list holds."""

from __future__ import annotations

from profiler.cli import main
from profiler.config import REPO_ROOT


def test_min_gpus_of_7b_inference_is_one_80gib_gpu(capsys):
    """Issue 23 item 5: exit 1 and an empty table, though 7B inference fits one 80 GiB GPU."""
    assert main(["estimate", str(REPO_ROOT / "configs/llama7b_inference.yaml"), "--min-gpus"]) == 0
    out = capsys.readouterr().out
    row = next(x for x in out.splitlines() if "│ none" in x and "components" in x)
    assert row.split("│")[3].strip() == "1"
    assert out.count("not estimated") == 1 and "inference runs on one GPU here" in out  # one note, not five


def test_min_gpus_says_more_where_one_gpu_is_not_enough_for_inference(capsys):
    assert main(["estimate", str(REPO_ROOT / "configs/llama7b_inference.yaml"), "--min-gpus",
                 "--gpu-memory", "8GiB"]) == 1
    row = next(x for x in capsys.readouterr().out.splitlines() if "│ none" in x and "components" in x)
    assert row.split("│")[3].strip() == "more"


def test_min_gpus_of_training_still_lists_one_gpu_first(capsys):
    assert main(["estimate", str(REPO_ROOT / "configs/llama7b_full.yaml"), "--min-gpus"]) == 0
    rows = [x for x in capsys.readouterr().out.splitlines() if x.startswith("│")]
    assert rows[0].split("│")[1].strip() == "none" and any("zero3" in x for x in rows)


def test_zero2_with_an_8bit_optimizer_lists_only_what_zero2_allows(capsys):
    """Issue 23 item 6, as the user met it."""
    argv = ["estimate", str(REPO_ROOT / "configs/tiny_full.yaml"), "parallel.strategy=zero2",
            "parallel.world_size=2"]
    assert main([*argv, "optimizer.name=adamw_8bit"]) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith("allowed with strategy zero2: adam, adamw") and "sgd" not in err
