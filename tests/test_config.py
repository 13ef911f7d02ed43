"""Config validation: every shipped config loads; bad input is one line naming the key, exit 2, nothing written."""

from __future__ import annotations

import subprocess
import sys

import pytest

from profiler.cli import main
from profiler.config import REPO_ROOT, ConfigError, bundled_architectures, load_config, parse_bytes

SHIPPED = sorted((REPO_ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert cfg.model.arch in bundled_architectures()
    assert cfg.device == ("cpu" if path.name.startswith("tiny_") else "cuda")


def test_shipped_llama7b_configs_have_tiny_twins():
    big = {p.name.removeprefix("llama7b_") for p in SHIPPED if p.name.startswith("llama7b_")}
    small = {p.name.removeprefix("tiny_") for p in SHIPPED if p.name.startswith("tiny_")}
    regimes = {f"{r}.yaml" for r in ("full", "freeze", "lora", "qlora8", "qlora4", "inference")}
    assert regimes <= big and regimes <= small


def test_overrides_are_typed_and_applied():
    cfg = load_config(REPO_ROOT / "configs/tiny_lora.yaml",
                      ["train.batch_size=4", "regime.lora.target_modules=[q_proj,v_proj]",
                       "train.gradient_checkpointing=true", "optimizer.lr=1e-4"])
    assert cfg.optimizer.lr == 1e-4  # YAML reads 1e-4 as a string; a float field still takes it
    assert cfg.train.batch_size == 4
    assert cfg.regime.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.train.gradient_checkpointing is True


def test_config_hash_ignores_output_only():
    a = load_config(REPO_ROOT / "configs/tiny_full.yaml", ["output=/tmp/a.jsonl"])
    b = load_config(REPO_ROOT / "configs/tiny_full.yaml", ["output=/tmp/b.jsonl"])
    c = load_config(REPO_ROOT / "configs/tiny_full.yaml", ["train.seq_len=65"])
    assert a.config_hash() == b.config_hash() != c.config_hash()


def test_parse_bytes_units():
    assert parse_bytes("80GiB") == 80 * 2**30
    assert parse_bytes("1.5GB") == 1_500_000_000
    assert parse_bytes("512MiB") == 512 * 2**20
    for bad in ("lots", "24", "-1GiB", "2XB"):
        with pytest.raises(ValueError, match="not a size"):
            parse_bytes(bad)


BAD = [
    # (overrides or yaml text, the dotted key the message must name, a word it must contain)
    (["regime.kind=sideways"], "regime.kind", "allowed: 'full'"),
    (["regime.bits=3"], "regime.bits", "allowed: 4 or 8"),
    (["train.batch_size=-1"], "train.batch_size", "allowed: 1..65536"),
    (["optimizer.name=adamx"], "optimizer.name", "adamw_8bit"),
    (["regime.lora.alhpa=8"], "regime.lora.alhpa", "did you mean 'alpha'"),
    (["model.arch=llama-2-7"], "model.arch", "did you mean 'llama-2-7b'"),
    (["model.arch=null", "model.path=/nonexistent/ckpt"], "model.path", "does not exist"),
    (["model.hub=meta-llama/Llama-2-7b-hf"], "model", "exactly one of arch, path, hub"),
    (["max_memory=lots"], "max_memory", "not a size"),
    (["max_memory=24"], "max_memory", "with a unit"),
    (["train.batch_size=true"], "train.batch_size", "integer"),
    (["device=tpu"], "device", "allowed: 'cuda' or 'cpu'"),
    (["train.autocast=fp8"], "train.autocast", "allowed"),
    (["regime.quant_type=nf3"], "regime.quant_type", "nf4"),
]


@pytest.mark.parametrize("overrides,key,word", BAD, ids=[b[1] + ":" + b[0][-1] for b in BAD])
def test_bad_config_one_line_exit_2_nothing_written(tmp_path, capsys, overrides, key, word):
    out = tmp_path / "runs.jsonl"
    rc = main(["run", str(REPO_ROOT / "configs/tiny_full.yaml"), *overrides, "--output", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {key}"), err
    assert word in err
    assert not out.exists()


def test_malformed_yaml_and_missing_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  arch: tiny-llama\n train: [\n")
    assert main(["run", str(bad), "--quiet", "--output", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert "malformed YAML at line" in err and len(err.splitlines()) == 1
    assert main(["run", str(tmp_path / "nope.yaml"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_target_module_absent_from_model(tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    rc = main(["run", str(REPO_ROOT / "configs/tiny_lora.yaml"), "regime.lora.target_modules=[qkv_proj]",
               "--output", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: regime.lora.target_modules") and "q_proj" in err
    assert not out.exists()


def test_unknown_command_and_flag(capsys):
    assert main(["rnu"]) == 2
    assert "did you mean 'run'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["run", "configs/tiny_full.yaml", "--bogus"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--bogus" in err


def test_bad_config_from_a_real_process_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "profiler", "run", "configs/tiny_full.yaml", "regime.kind=nope",
                           "--output", str(tmp_path / "o.jsonl")], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert not (tmp_path / "o.jsonl").exists()


def test_cuda_requested_without_gpu_is_a_config_error(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the CPU-only message cannot appear")
    rc = main(["run", str(REPO_ROOT / "configs/llama7b_lora.yaml"), "--output", str(tmp_path / "o.jsonl"), "--quiet"])
    assert rc == 2
    assert capsys.readouterr().err.startswith("error: device: 'cuda' is not available")


def test_config_error_type():
    with pytest.raises(ConfigError):
        load_config(None, ["model.arch=tiny-llama", "train.steps=0"])


def _script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", ["schema_table", "config_table"])
def test_docs_generated_tables_are_current(name):
    """docs/schema.md's and docs/configuration.md's tables are what their scripts write from the pydantic models."""
    mod = _script(name)
    assert mod.page_block() == mod.markdown()
    assert mod.main(["--check"]) == 0


def test_config_table_has_one_row_per_key_and_each_limit():
    """Every leaf key of RunConfig has a NOTES entry (a key added without one fails), no entry outlives its key, and
    each bound of LIMITS is the one the table shows."""
    from profiler.config import LIMITS

    mod = _script("config_table")
    keys = [k for k, _ in mod.leaves()]
    assert set(mod.NOTES) == set(keys)
    table = {k: allowed for k, _, allowed, _ in mod.rows()}
    assert list(table) == keys
    for key, (lo, hi) in LIMITS.items():
        if key != "max_memory":
            assert table[key].startswith(f"{lo}.."), (key, table[key])
            assert str(hi) in table[key] or f"2^{(hi + 1).bit_length() - 1}−1" in table[key], (key, table[key])
    assert "1 byte to 1 PiB" in table["max_memory"]
    assert table["regime.kind"] == "full, freeze, lora, qlora, inference"
    assert "tiny-llama" in table["model.arch"]


def test_config_table_refuses_a_key_without_notes(monkeypatch):
    mod = _script("config_table")
    monkeypatch.delitem(mod.NOTES, "train.seq_len")
    with pytest.raises(KeyError, match="train.seq_len: no entry"):
        mod.markdown()


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "configs" / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_validates_every_entry(path, tmp_path):
    from profiler.commands.sweep import load_sweep

    plan = load_sweep(path, output=tmp_path / "o.jsonl")
    assert plan.entries and all(e.config_hash == e.config.config_hash() for e in plan.entries)


def test_env_command_reports_this_machine(capsys):
    import json

    import torch

    assert main(["env", "--device", "cpu"]) == 0
    env = json.loads(capsys.readouterr().out)
    assert env["device_name"] == "cpu" and env["torch"] == torch.__version__
    if not torch.cuda.is_available():
        assert main(["env", "--device", "cuda"]) == 2
        assert "not available" in capsys.readouterr().err



# ---- hostile input (issue 9): every case one line on stderr, the documented exit code, nothing written ----
MODEL_FIXTURES = REPO_ROOT / "tests" / "data" / "model_configs"
TINY = str(REPO_ROOT / "configs" / "tiny_full.yaml")


def _cli(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    err = capsys.readouterr().err.strip()
    return rc, err


def _assert_one_line(rc: int, err: str, code: int, *words: str) -> None:
    assert rc == code, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err


def test_duplicate_yaml_key_is_an_error_naming_key_and_line(tmp_path, capsys):
    text = (REPO_ROOT / "configs" / "tiny_full.yaml").read_text() + "train:\n  batch_size: 8\n"
    cfg = tmp_path / "dup.yaml"
    cfg.write_text(text)
    first = 1 + text.splitlines().index("train:")
    second = len(text.splitlines()) - 1
    rc, err = _cli(capsys, "run", str(cfg), "--quiet", "--output", str(tmp_path / "o.jsonl"))
    _assert_one_line(rc, err, 2, "duplicate key 'train'", f"at line {second}", f"first given at line {first}")
    assert not (tmp_path / "o.jsonl").exists()


def test_yaml_merge_key_may_be_overridden(tmp_path):
    cfg = tmp_path / "merge.yaml"
    text = "model: {arch: tiny-llama}\ndevice: cpu\ntrain:\n  <<: {batch_size: 2, seq_len: 32}\n  batch_size: 4\n"
    cfg.write_text(text)
    assert load_config(cfg).train.batch_size == 4


HOSTILE_CONFIG = [
    # (id, config file text or None for tiny_full.yaml, overrides, exit code, words the one line must hold)
    ("non-utf8 file", b"model:\n  arch: tiny-llama\n# caf\xe9\n", [], 2, ["not UTF-8", "0xe9"]),
    ("python tag in file", "model: !!python/object/apply:os.system ['true']\n", [], 2,
     ["malformed YAML at line 1", "no !!python"]),
    ("python tag in override", None, ["seed=!!python/object/apply:os.getpid []"], 2, ["override seed=", "no !!python"]),
    ("malformed yaml in override", None, ["train.batch_size=[1, 2"], 2,
     ["override train.batch_size=", "malformed YAML"]),
    ("duplicate key in override", None, ["regime.lora={r: 4, r: 8}"], 2, ["duplicate key 'r'"]),
    ("batch 10**30", None, ["train.batch_size=1000000000000000000000000000000"], 2,
     ["train.batch_size", "allowed: 1..65536"]),
    ("batch 65537", None, ["train.batch_size=65537"], 2, ["allowed: 1..65536"]),
    ("seq over 2**24", None, ["train.seq_len=16777217"], 2, ["train.seq_len", "allowed: 1..16777216"]),
    ("steps 10**9", None, ["train.steps=1000000000"], 2, ["train.steps", "allowed: 1..10000"]),
    ("warmup 10**9", None, ["train.warmup_steps=1000000000"], 2, ["train.warmup_steps", "allowed: 0..1000"]),
    ("lr .inf", None, ["optimizer.lr=.inf"], 2, ["optimizer.lr", "finite"]),
    ("lr .nan", None, ["optimizer.lr=.nan"], 2, ["optimizer.lr", "finite"]),
    ("lr 0", None, ["optimizer.lr=0"], 2, ["optimizer.lr", "greater than 0"]),
    ("lora dropout .nan", None, ["regime.kind=lora", "regime.lora.dropout=.nan"], 2, ["regime.lora.dropout", "finite"]),
    ("lora r 10**6", None, ["regime.kind=lora", "regime.lora.r=1000000"], 2, ["regime.lora.r", "allowed: 1..65536"]),
    ("new_tokens 10**7", None, ["regime.kind=inference", "regime.new_tokens=10000000"], 2,
     ["regime.new_tokens", "allowed: 0..1048576"]),
    ("seed 10**30", None, ["seed=1000000000000000000000000000000"], 2, ["seed", "allowed: 0.."]),
    ("max_memory 1e400GiB", None, ["max_memory=1e400GiB"], 2, ["max_memory", "out of range", "1 PiB"]),
    ("max_memory 10**30 bytes", None, ["max_memory=1000000000000000000000000000000B"], 2, ["max_memory", "1 PiB"]),
    ("max_memory 10**30", None, ["max_memory=10**30"], 2, ["max_memory", "not a size"]),
    ("max_memory .inf", None, ["max_memory=.inf"], 2, ["max_memory", "not a size"]),
    ("max_memory nanGiB", None, ["max_memory=nanGiB"], 2, ["max_memory", "not a size"]),
    ("max_memory 0GiB", None, ["max_memory=0GiB"], 2, ["max_memory", "out of range"]),
]


@pytest.mark.parametrize("text,overrides,code,words", [h[1:] for h in HOSTILE_CONFIG],
                         ids=[h[0] for h in HOSTILE_CONFIG])
def test_hostile_config_one_line_documented_exit(tmp_path, capsys, text, overrides, code, words):
    cfg = TINY
    if text is not None:
        cfg = tmp_path / "c.yaml"
        cfg.write_bytes(text if isinstance(text, bytes) else text.encode())
    out = tmp_path / "o.jsonl"
    rc, err = _cli(capsys, "run", str(cfg), *overrides, "--quiet", "--output", str(out))
    _assert_one_line(rc, err, code, *words)
    assert not out.exists()


def test_limits_themselves_are_accepted():
    from profiler.config import LIMITS

    ov = [f"{k}={hi}" for k, (_, hi) in LIMITS.items() if k.startswith(("train.", "seed", "regime.lora"))]
    cfg = load_config(REPO_ROOT / "configs/tiny_lora.yaml", ov)
    assert cfg.train.batch_size == LIMITS["train.batch_size"][1] and cfg.train.seq_len == 2**24
    assert parse_bytes("1024TiB") == 2**50 == LIMITS["max_memory"][1]


def test_simulate_cannot_loop_forever_on_warmup(tmp_path, capsys):
    rc, err = _cli(capsys, "simulate", TINY, "train.warmup_steps=1000000000", "--quiet", "--output",
                   str(tmp_path / "o.jsonl"))
    _assert_one_line(rc, err, 2, "train.warmup_steps", "allowed: 0..1000")


# ---- keys that do not apply to the regime: validated, then reset to defaults (one run, one identity) ----
SHIPPED_HASHES = {  # config_hash() of every shipped config before the normalisation existed: unchanged
    "llama70b_full.yaml": "6208d4fad8d218fc", "llama7b_freeze.yaml": "6f5a39c425f6807f",
    "llama7b_full.yaml": "3198e405faec426e", "llama7b_full_seq4096.yaml": "2455ec68beb70a51",
    "llama7b_inference.yaml": "9230302c74d9dbaa", "llama7b_lora.yaml": "d8d902f09eae6292",
    "llama7b_qlora4.yaml": "62b2b84553cca126", "llama7b_qlora8.yaml": "66746eb6999d0d08",
    "tiny_freeze.yaml": "ccda013cb7260582", "tiny_full.yaml": "3f0ce8d2ea8bedae",
    "tiny_inference.yaml": "d1badadf839aa83d", "tiny_lora.yaml": "05e4095e7f07486c",
    "tiny_qlora4.yaml": "e0d503af01c25378", "tiny_qlora8.yaml": "5903dfe678d85210",
}


def test_shipped_config_hashes_did_not_move():
    assert {p.name: load_config(p).config_hash() for p in SHIPPED} == SHIPPED_HASHES


NOT_APPLICABLE = [
    ("tiny_lora.yaml", ["regime.bits=8", "regime.quant_type=fp4", "regime.prepare_kbit=false"]),
    ("tiny_lora.yaml", ["regime.freeze.trainable_layers=7", "regime.new_tokens=16"]),
    ("tiny_full.yaml", ["regime.lora.r=64", "regime.freeze.trainable_modules=[lm_head]"]),
    ("tiny_freeze.yaml", ["regime.lora.alpha=8", "regime.compute_dtype=float16"]),
    ("tiny_qlora8.yaml", ["regime.quant_type=fp4", "regime.double_quant=false", "regime.compute_dtype=float32"]),
    ("tiny_inference.yaml", ["optimizer.name=sgd", "optimizer.lr=0.5", "train.gradient_checkpointing=true"]),
]


@pytest.mark.parametrize("name,overrides", NOT_APPLICABLE, ids=[f"{n}:{o[0]}" for n, o in NOT_APPLICABLE])
def test_keys_that_do_not_apply_do_not_change_the_identity(name, overrides):
    plain = load_config(REPO_ROOT / "configs" / name)
    noisy = load_config(REPO_ROOT / "configs" / name, overrides)
    assert noisy.config_hash() == plain.config_hash()
    assert noisy.model_dump() == plain.model_dump()  # the record's config says what ran
    for key in (o.split("=")[0] for o in overrides):  # each given key is reported as ignored (or its parent)
        assert any(key == i or key.startswith(i + ".") for i in noisy.ignored_keys), (key, noisy.ignored_keys)


@pytest.mark.parametrize("command", ["estimate", "simulate"])
def test_ignored_keys_are_named_on_stderr(command, capsys, tmp_path):
    from profiler.cli import main

    cfg = str(REPO_ROOT / "configs/tiny_full.yaml")
    out = ["--output", str(tmp_path / "s.jsonl")] if command == "simulate" else []
    assert main([command, cfg, "regime.lora.r=64", *out]) == 0
    err = capsys.readouterr().err
    assert "note: regime.lora does not apply to regime full; ignored (reset to its default)" in err
    assert main([command, cfg, *out]) == 0
    assert "does not apply" not in capsys.readouterr().err


def test_keys_that_apply_still_change_the_identity():
    base = load_config(REPO_ROOT / "configs/tiny_qlora4.yaml")
    for ov in ("regime.quant_type=fp4", "regime.bits=8", "regime.lora.r=8", "regime.prepare_kbit=false"):
        assert load_config(REPO_ROOT / "configs/tiny_qlora4.yaml", [ov]).config_hash() != base.config_hash(), ov
    inf = load_config(REPO_ROOT / "configs/tiny_inference.yaml")
    assert load_config(REPO_ROOT / "configs/tiny_inference.yaml", ["regime.new_tokens=4"]).config_hash() != (
        inf.config_hash())


def test_sweep_merges_grid_points_that_differ_only_in_keys_that_do_not_apply(tmp_path):
    from profiler.commands.sweep import load_sweep

    f = tmp_path / "s.yaml"
    f.write_text("base_config: configs/tiny_full.yaml\ngrid:\n  regime.kind: [full, lora]\n"
                 "  regime.lora.r: [4, 8]\n  regime.bits: [4, 8]\n")
    plan = load_sweep(f, output=tmp_path / "o.jsonl")
    assert len(plan.entries) == 3 and plan.duplicates == 5  # full once, lora r=4 and r=8


# ---- a CPU run without max_memory gets a default budget: it records oom instead of swapping ----
def test_default_cpu_budget_is_a_share_of_available_ram():
    from profiler.config import DEFAULT_CPU_BUDGET_FRACTION, _meminfo_available, default_cpu_budget

    available = _meminfo_available()
    budget = default_cpu_budget()
    assert 0 < budget <= available  # psutil and /proc/meminfo agree to within what others allocate meanwhile
    assert abs(budget - DEFAULT_CPU_BUDGET_FRACTION * available) < 0.25 * available


def test_cpu_run_without_max_memory_records_oom_under_the_default_budget(tmp_path, capsys, monkeypatch):
    import json

    from profiler.measure import harness

    monkeypatch.setattr(harness, "default_cpu_budget", lambda: 64 * 2**20)  # this machine with 71 MiB free
    out = tmp_path / "o.jsonl"
    rc = main(["run", TINY, "train.batch_size=1", f"train.seq_len={2**20}", "--quiet", "--output", str(out)])
    assert rc == 0
    rec = json.loads(out.read_text())
    assert rec["status"] == "oom" and rec["oom_phase"] == "forward"
    assert "budget 67108864" in rec["error"] and "default CPU budget: 90%" in rec["error"]
    assert rec["config"]["max_memory"] is None


def test_explicit_max_memory_is_not_called_default(tmp_path, monkeypatch):
    from profiler.measure import harness

    monkeypatch.setattr(harness, "default_cpu_budget", lambda: pytest.fail("default used despite max_memory"))
    rec = harness.run(load_config(TINY, ["max_memory=400KiB", "train.steps=1"]))
    assert rec["status"] == "oom" and "default" not in rec["error"]


# ---- broken and non-causal config.json: one line, exit 2, from every command ----
BROKEN_MODELS = [
    # (fixture under tests/data/model_configs, field, words the one line must hold)
    ("t5.json", "model.arch", ["'t5' model (T5Config)", "AutoModelForCausalLM cannot build"]),
    ("vit.json", "model.arch", ["'vit' model (ViTConfig)"]),
    ("llava.json", "model.arch", ["'llava' model (LlavaConfig)"]),
    ("empty.json", "model.arch", ["is empty"]),
    ("empty_object.json", "model.arch", ["has no model_type"]),
    ("not_object.json", "model.arch", ["holds a JSON list"]),
    ("not_json.json", "model.arch", ["is not JSON (line 2"]),
    ("not_utf8.json", "model.arch", ["is not UTF-8"]),
    ("negative.json", "model.arch", ["hidden_size = -64", "positive integer"]),
    ("zero_layers.json", "model.arch", ["num_hidden_layers = 0"]),
    ("unknown_type.json", "model.arch", ["model_type 'no-such-model', unknown to transformers"]),
    ("no_config_dir", "model.path", ["has no config.json"]),
    ("t5.json", "model.path", ["'t5' model"]),
]
COMMANDS = ["run", "simulate", "estimate", "sweep"]


def _model_overrides(fixture: str, field: str) -> list[str]:
    path = MODEL_FIXTURES / fixture
    return [f"model.arch={path}"] if field == "model.arch" else ["model.arch=null", f"model.path={path}"]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("fixture,field,words", BROKEN_MODELS, ids=[f"{b[1]}={b[0]}" for b in BROKEN_MODELS])
def test_broken_model_config_one_line_exit_2_every_command(tmp_path, capsys, command, fixture, field, words):
    out = tmp_path / "o.jsonl"
    ov = _model_overrides(fixture, field)
    if command == "sweep":
        sweep_file = tmp_path / "s.yaml"
        sweep_file.write_text(f"base_config: {TINY}\ngrid:\n  train.seq_len: [32]\n")
        argv = ["sweep", str(sweep_file), *ov, "--output", str(out)]
    elif command == "estimate":
        argv = ["estimate", TINY, *ov]
    else:
        argv = [command, TINY, *ov, "--quiet", "--output", str(out)]
    rc, err = _cli(capsys, *argv)
    _assert_one_line(rc, err, 2, f"{field}: ", *words)
    assert not out.exists()


def test_qlora_with_broken_config_json_exits_2_before_anything_runs(tmp_path, capsys, monkeypatch):
    from profiler.measure import loading

    monkeypatch.setattr(loading, "random_checkpoint", lambda *a: pytest.fail("checkpoint written"))
    out = tmp_path / "o.jsonl"
    for fixture in ("t5.json", "negative.json", "empty.json"):
        rc, err = _cli(capsys, "run", str(REPO_ROOT / "configs/tiny_qlora4.yaml"),
                       f"model.arch={MODEL_FIXTURES / fixture}", "--quiet", "--output", str(out))
        _assert_one_line(rc, err, 2, "error: model.arch: ")
    assert not out.exists()


def test_failure_while_preparing_the_checkpoint_is_a_recorded_error(tmp_path, capsys, monkeypatch):
    import json

    from profiler.measure import harness

    def full_disk(cfg):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(harness, "prepare_source", full_disk)
    out = tmp_path / "o.jsonl"
    rc = main(["run", str(REPO_ROOT / "configs/tiny_qlora4.yaml"), "--quiet", "--output", str(out)])
    assert rc == 1
    rec = json.loads(out.read_text())
    assert rec["status"] == "error" and "No space left on device" in rec["error"] and rec["phases"] == []


def test_broken_model_config_from_a_real_process_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "profiler", "run", "configs/tiny_qlora4.yaml",
                           f"model.arch={MODEL_FIXTURES / 't5.json'}", "--output", str(tmp_path / "o.jsonl")],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "T5Config" in proc.stderr


def test_malformed_sweep_base_config_is_one_line(tmp_path, capsys):
    base = tmp_path / "base.yaml"
    base.write_bytes(b"model: {arch: tiny-llama}\ntrain: [\n")
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(f"base_config: {base}\ngrid:\n  train.seq_len: [32]\n")
    rc, err = _cli(capsys, "sweep", str(sweep_file), "--output", str(tmp_path / "o.jsonl"))
    _assert_one_line(rc, err, 2, "malformed YAML")
    base.write_bytes(b"model: {arch: tiny-llama}\n\xff\n")
    rc, err = _cli(capsys, "sweep", str(sweep_file), "--output", str(tmp_path / "o.jsonl"))
    _assert_one_line(rc, err, 2, "not UTF-8")
