"""Hostile YAML and long values: one short line and exit 2, refused before anything is expanded (issue 23)."""

from __future__ import annotations

import time

import pytest

from profiler.cli import main
from profiler.config import (
    MAX_ERROR_CHARS,
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
    REPO_ROOT,
    ConfigError,
    echo,
    load_config,
)

LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
model: {arch: tiny-llama}
regime: {kind: lora, lora: {target_modules: *h}}
"""


@pytest.fixture
def deep(tmp_path):
    p = tmp_path / "deep.yaml"
    p.write_text("[" * 100_000)
    return p


@pytest.fixture
def laughs(tmp_path):
    p = tmp_path / "laughs.yaml"
    p.write_text(LAUGHS)
    return p


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err[:2000]
    return err


def test_deep_nesting_is_refused_not_a_recursion_error(deep):
    with pytest.raises(ConfigError, match=f"nested deeper than {MAX_YAML_DEPTH} levels"):
        load_config(deep)


@pytest.mark.parametrize("argv", [
    ["estimate", "{}"],
    ["fit", "tiny-llama", "--gpu", "h100", "--no-search", "--config", "{}"],
    ["sweep", "{}", "--dry-run"],
])
def test_every_command_reading_yaml_refuses_deep_nesting_and_laughs(capsys, deep, laughs, argv):
    for path, message in ((deep, "nested deeper than"), (laughs, f"more than {MAX_YAML_NODES} values")):
        t0 = time.perf_counter()
        assert main([a.format(path) if a == "{}" else a for a in argv]) == 2
        assert message in one_line(capsys)
        assert time.perf_counter() - t0 < 20  # refused before expanding (the issue: 20 s, 3.5 GB)


def test_billion_laughs_inside_target_modules_is_refused_quickly_and_briefly(laughs):
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_config(laughs)
    assert time.perf_counter() - t0 < 5
    assert f"more than {MAX_YAML_NODES} values" in str(info.value) and len(str(info.value)) < 300


def test_an_override_gets_the_same_limits():
    bomb = "[" * 1000 + "]" * 1000
    with pytest.raises(ConfigError, match="nested deeper than"):
        load_config(REPO_ROOT / "configs/tiny_lora.yaml", [f"regime.lora.target_modules={bomb}"])


def test_a_recursive_alias_is_refused(tmp_path):
    p = tmp_path / "rec.yaml"
    p.write_text("model: {arch: tiny-llama}\nregime: {kind: lora, lora: {target_modules: &a [x, *a]}}\n")
    with pytest.raises(ConfigError, match="recursive"):
        load_config(p)


def test_ordinary_anchors_and_merge_keys_still_load(tmp_path):
    p = tmp_path / "ok.yaml"
    p.write_text("model: &m {arch: tiny-llama}\n"
                 + "regime: {kind: lora, lora: {target_modules: &t [q_proj, v_proj]}}\n"
                 + "train: {<<: {batch_size: 2}, seq_len: 32}\n")
    cfg = load_config(p)
    assert cfg.regime.lora.target_modules == ["q_proj", "v_proj"] and cfg.train.batch_size == 2


def test_a_huge_wrong_value_is_echoed_in_a_few_hundred_characters():
    items = ",".join(["[x]"] * 30_000)  # 30k lists where strings belong: within the node limit, wrong in type
    with pytest.raises(ConfigError) as info:
        load_config(REPO_ROOT / "configs/tiny_lora.yaml", [f"regime.lora.target_modules=[{items}]"])
    msg = str(info.value)
    assert msg.startswith("regime.lora.target_modules") and len(msg) <= MAX_ERROR_CHARS and "\n" not in msg


def test_config_error_keeps_a_long_message_to_one_short_line():
    msg = str(ConfigError("key.x: " + "v" * 10_000 + "\nsecond line; allowed: a, b"))
    assert len(msg) <= MAX_ERROR_CHARS and "\n" not in msg
    assert msg.startswith("key.x: vvv") and msg.endswith("allowed: a, b") and "characters cut" in msg
    assert len(echo(list(range(10**6)))) <= 200 and len(echo("s" * 10**6)) <= 200


@pytest.mark.parametrize("strategy", ["fsdp2", "zero1", "zero2", "zero3"])
def test_the_optimizers_a_refusal_allows_are_really_allowed(strategy):
    """Issue 23 item 6: adamw_8bit under zero2 listed sgd, which zero2 then refused."""
    base = ["device=cuda", f"parallel.strategy={strategy}", "parallel.world_size=2"]
    with pytest.raises(ConfigError) as info:
        load_config(REPO_ROOT / "configs/tiny_full.yaml", [*base, "optimizer.name=adamw_8bit"])
    allowed = str(info.value).rsplit("allowed with strategy", 1)[1].split(":", 1)[1].split(", ")
    assert allowed and "adamw_8bit" not in allowed
    for name in allowed:
        load_config(REPO_ROOT / "configs/tiny_full.yaml", [*base, f"optimizer.name={name.strip()}"])
