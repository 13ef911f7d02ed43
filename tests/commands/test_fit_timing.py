"""`fit ... --tokens / --epochs --dataset-tokens / --price-per-hour / --time`: time and cost, labelled estimates."""

from __future__ import annotations

import json

import pytest

from profiler.cli import main


def fit_json(capsys, *argv) -> tuple[int, dict]:
    rc = main(["fit", "tiny-llama", "--regime", "full", "--seq", "64", "--no-search", "--json", *argv])
    return rc, json.loads(capsys.readouterr().out)


def test_tokens_give_steps_hours_gpu_hours_and_cost(capsys):
    rc, out = fit_json(capsys, "--gpu", "h100", "--batch", "2", "--tokens", "1M", "--price-per-hour", "2.5")
    t = out["timing"]
    step = t["step"]
    assert rc == 0
    assert step["tokens_per_step"] == 128 and t["steps"] == -(-1_000_000 // 128)
    assert t["hours"] == pytest.approx(t["steps"] * step["step_s"] / 3600)
    assert t["gpu_hours"] == pytest.approx(t["hours"]) and t["cost"] == pytest.approx(2.5 * t["gpu_hours"])
    assert step["flops"] > 0 and 0 < step["mfu"] <= 1
    assert "estimated" in t["model"] and "leave-one-out" in t["error_band"]


def test_epochs_times_dataset_tokens_is_the_token_count(capsys):
    _, a = fit_json(capsys, "--gpu", "a100-80gb", "--epochs", "2", "--dataset-tokens", "500k")
    _, b = fit_json(capsys, "--gpu", "a100-80gb", "--tokens", "1M")
    assert a["timing"]["tokens"] == b["timing"]["tokens"] == 1_000_000
    assert a["timing"]["hours"] == pytest.approx(b["timing"]["hours"])


def test_text_answer_says_estimated_and_the_band(capsys):
    rc = main(["fit", "tiny-llama", "--regime", "full", "--seq", "64", "--no-search", "--gpu", "h100", "--time"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "time (estimated, not measured)" in text and "tokens/s" in text and "MFU" in text
    assert "error band" in text and "GPU-hours" not in text  # no token count: no hours


@pytest.mark.parametrize(("argv", "message"), [
    (["--gpu", "h100", "--tokens", "1M", "--epochs", "1", "--dataset-tokens", "1M"], "--tokens: give either"),
    (["--gpu", "h100", "--epochs", "1"], "--epochs: needs --dataset-tokens"),
    (["--gpu", "h100", "--dataset-tokens", "1M"], "--epochs: needs --dataset-tokens"),
    (["--gpu", "h100", "--tokens", "lots"], "--tokens: 'lots' is not a count"),
    (["--gpu", "h100", "--epochs", "0", "--dataset-tokens", "1M"], "--epochs: 0.0 is not allowed"),
    (["--gpu", "h100", "--price-per-hour", "2"], "--price-per-hour: needs a token count"),
    (["--gpu", "h100", "--tokens", "1M", "--price-per-hour", "-1"], "--price-per-hour: -1.0 is not allowed"),
    (["--gpu-memory", "80GB", "--tokens", "1M"], "--gpu: a time estimate needs a GPU preset"),
    (["--gpu", "rtx3060", "--tokens", "1M"], "no datasheet row"),
])
def test_bad_timing_flags_are_one_line_exit_2(capsys, argv, message):
    rc = main(["fit", "tiny-llama", "--no-search", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0]
