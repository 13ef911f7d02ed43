"""Ranking the `estimate --min-gpus` options by time to train (profiler.timing.rank) and its CLI flags."""

from __future__ import annotations

import pytest

from profiler.cli import main
from profiler.config import REPO_ROOT
from profiler.timing.rank import option_work

WORK = {"phases": {"forward": {"matmul_flops": 10, "matmul_bytes": 1, "attention_flops": 0, "attention_bytes": 0,
                               "other_bytes": 5, "collectives": {}},
                   "backward": {"matmul_flops": 20, "matmul_bytes": 2, "attention_flops": 0, "attention_bytes": 0,
                                "other_bytes": 9, "collectives": {}},
                   "optimizer_step": {"matmul_flops": 0, "matmul_bytes": 0, "attention_flops": 0,
                                      "attention_bytes": 0, "other_bytes": 800, "collectives": {}}}}
MODEL = {"weight_bytes": 2000, "trainable_params": 1000}


def test_ddp_all_reduces_the_gradients_and_keeps_the_optimizer_whole():
    w = option_work(WORK, MODEL, "ddp", 4, 2)["phases"]
    assert w["backward"]["collectives"] == {"all_reduce": {"count": 1, "bytes": 2000}}
    assert w["optimizer_step"]["other_bytes"] == 800 and not w["forward"]["collectives"]


def test_fsdp2_gathers_weights_twice_scatters_gradients_and_shards_the_step():
    w = option_work(WORK, MODEL, "fsdp2", 4, 2)["phases"]
    assert w["forward"]["collectives"]["all_gather"]["bytes"] == 2000
    assert w["backward"]["collectives"]["all_gather"]["bytes"] == 2000
    assert w["backward"]["collectives"]["reduce_scatter"]["bytes"] == 2000
    assert w["optimizer_step"]["other_bytes"] == 200
    assert WORK["phases"]["backward"]["collectives"] == {}  # the single-GPU work is not modified


def test_zero2_scatters_gradients_and_gathers_updated_parameters():
    w = option_work(WORK, MODEL, "zero2", 8, 2)["phases"]
    assert w["backward"]["collectives"]["reduce_scatter"]["bytes"] == 2000
    assert w["optimizer_step"]["collectives"]["all_gather"]["bytes"] == 2000
    assert not w["forward"]["collectives"]


@pytest.mark.parametrize("argv", [["--min-gpus", "--rank-by-time", "h100"], ["--min-gpus", "--tokens", "1M"],
                                  ["--rank-by-time", "h100", "--tokens", "1M"]])
def test_rank_flags_need_each_other(capsys, argv):
    rc = main(["estimate", str(REPO_ROOT / "configs" / "tiny_full.yaml"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--rank-by-time: needs --min-gpus and --tokens" in err[0]


def test_rank_by_time_prints_the_options_fastest_first(capsys):
    rc = main(["estimate", str(REPO_ROOT / "configs" / "tiny_full.yaml"), "device=cuda", "--gpu-memory", "600MiB",
               "--min-gpus", "--rank-by-time", "h100", "--tokens", "1M"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "time to train 1,000,000 tokens on h100-sxm (estimated" in out and "error band" in out
