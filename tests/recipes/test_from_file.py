"""`fit --from FILE` (profiler/recipes/from_file.py): each shipped example in examples/configs/ goes through fit, and
each mapped field changes the config it feeds. Run: `python -m pytest tests/recipes/test_from_file.py -q`."""

from __future__ import annotations

import copy
import json

import pytest

from profiler.cli import main
from profiler.config import REPO_ROOT, load_config
from profiler.recipes import from_file
from profiler.recipes.from_file import PARSERS, detect

EXAMPLES = REPO_ROOT / "examples" / "configs"
FORMAT = {"trl_sftconfig.json": "trl", "axolotl_llama3_qlora.yml": "axolotl",
          "llamafactory_llama3_lora_sft_otfq.yaml": "llamafactory", "accelerate_fsdp2.yaml": "accelerate",
          "deepspeed_z3_offload.json": "deepspeed"}


def test_every_example_is_shipped_and_detected():
    assert sorted(p.name for p in EXAMPLES.glob("*") if p.suffix != ".md") == sorted(FORMAT)
    for name, fmt in FORMAT.items():
        assert from_file.read(EXAMPLES / name).format == fmt


@pytest.mark.parametrize("name", sorted(FORMAT))
def test_each_example_goes_through_fit_from(capsys, name):
    rc = main(["fit", "tiny-llama", "--from", str(EXAMPLES / name), "--gpu", "h100", "--no-search", "--json",
               "train.seq_len=64", "train.batch_size=1"])
    out, err = capsys.readouterr()
    assert err.startswith(f"--from {EXAMPLES / name} ({FORMAT[name]}): mapped ")
    parsed = from_file.read(EXAMPLES / name)
    if name.startswith("deepspeed"):  # ZeRO has no fake-tensor run: fit says so in one line and exits 1
        assert rc == 1 and "DeepSpeed zero3 cannot run on fake tensors" in err
        return
    assert rc in (0, 1), err
    res = json.loads(out)
    cfg = load_config(None, base=res["config"])
    for _their, ours in parsed.mapped:  # every mapped key reached the simulated config (unless overridden above)
        if ours in ("train.seq_len", "train.batch_size"):
            continue
        node = cfg
        for part in ours.split("."):
            node = getattr(node, part)
        assert node == parsed.keys[ours], ours
    if parsed.model:
        assert "ignored the file's model" in err


# (format, path in the document, a different value, our dotted key): changing the field changes that key
FIELDS = [
    ("trl", "per_device_train_batch_size", 7, "train.batch_size"), ("trl", "max_length", 333, "train.seq_len"),
    ("trl", "activation_checkpointing", False, "train.gradient_checkpointing"),
    ("trl", "bf16", False, "train.autocast"), ("trl", "optim", "adamw_torch", "optimizer.name"),
    ("trl", "learning_rate", 0.5, "optimizer.lr"), ("trl", "max_grad_norm", 0.0, "train.max_grad_norm"),
    ("trl", "gradient_accumulation_steps", 2, "train.grad_accum_steps"),
    ("trl", "gradient_checkpointing_kwargs", {"use_reentrant": True}, "train.use_reentrant"),
    ("axolotl", "lora_r", 8, "regime.lora.r"), ("axolotl", "lora_alpha", 8, "regime.lora.alpha"),
    ("axolotl", "lora_dropout", 0.0, "regime.lora.dropout"), ("axolotl", "sequence_len", 333, "train.seq_len"),
    ("axolotl", "micro_batch_size", 3, "train.batch_size"), ("axolotl", "adapter", None, "regime.kind"),
    ("axolotl", "gradient_accumulation_steps", 2, "train.grad_accum_steps"),
    ("axolotl", "gradient_checkpointing", False, "train.gradient_checkpointing"),
    ("axolotl", "bf16", False, "train.autocast"), ("axolotl", "flash_attention", False, "model.attn_implementation"),
    ("axolotl", "optimizer", "adamw_torch", "optimizer.name"),
    ("llamafactory", "quantization_bit", 8, "regime.bits"), ("llamafactory", "cutoff_len", 333, "train.seq_len"),
    ("llamafactory", "per_device_train_batch_size", 3, "train.batch_size"),
    ("llamafactory", "gradient_accumulation_steps", 2, "train.grad_accum_steps"),
    ("llamafactory", "lora_target", "q_proj,v_proj", "regime.lora.target_modules"),
    ("llamafactory", "bf16", False, "train.autocast"), ("llamafactory", "learning_rate", 0.5, "optimizer.lr"),
    ("llamafactory", "disable_gradient_checkpointing", True, "train.gradient_checkpointing"),
    ("llamafactory", "use_reentrant_gc", False, "train.use_reentrant"),
    ("llamafactory", "enable_liger_kernel", True, "train.loss"),
    ("axolotl", "liger_fused_linear_cross_entropy", True, "train.loss"),
    ("accelerate", "num_processes", 4, "parallel.world_size"),
    ("accelerate", "mixed_precision", "no", "train.autocast"),
    ("accelerate", "fsdp_config.fsdp_reshard_after_forward", False, "parallel.reshard_after_forward"),
    ("accelerate", "fsdp_config.fsdp_offload_params", True, "parallel.offload.params"),
    ("accelerate", "distributed_type", "MULTI_GPU", "parallel.strategy"),
    ("deepspeed", "zero_optimization.stage", 2, "parallel.strategy"),
    ("deepspeed", "zero_optimization.offload_optimizer.device", "none", "parallel.offload.optimizer"),
    ("deepspeed", "fp16.enabled", True, "model.dtype"),
    ("trl", "padding_free", True, "train.packing"), ("trl", "packing", True, "train.packing"),
    ("axolotl", "sample_packing", False, "train.packing"),
    ("llamafactory", "neat_packing", True, "train.packing"),
]


def _doc(fmt: str) -> dict:
    name = next(n for n, f in FORMAT.items() if f == fmt)
    path = EXAMPLES / name
    if path.suffix == ".json":
        return json.loads(path.read_text())
    import yaml

    return yaml.safe_load(path.read_text())


def _config(fmt: str, doc: dict):
    parsed = PARSERS[detect(doc)](doc, "x")
    data = parsed.data()
    data["model"] = {**data.get("model", {}), "arch": "tiny-llama"}
    data.setdefault("regime", {}).setdefault("kind", "lora")
    data["device"] = "cuda"
    if data.get("parallel", {}).get("strategy") and "world_size" not in data["parallel"]:
        data["parallel"]["world_size"] = 2
    if data.get("parallel", {}).get("offload", {}).get("params") and data["parallel"]["strategy"] == "fsdp2":
        data["parallel"]["offload"]["optimizer"] = True
    if data.get("parallel", {}).get("strategy") in ("zero1", "zero2"):  # they offload the optimizer only
        data["parallel"].get("offload", {}).pop("params", None)
    if str(data.get("parallel", {}).get("strategy", "")).startswith("zero") and data["regime"]["kind"] == "qlora":
        data["regime"]["kind"] = "lora"
    return load_config(None, base=data)


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("fmt,field,value,ours", FIELDS, ids=[f"{f[0]}:{f[1]}" for f in FIELDS])
def test_each_mapped_field_changes_the_config(fmt, field, value, ours):
    doc = _doc(fmt)
    changed = copy.deepcopy(doc)
    node = changed
    *parents, last = field.split(".")
    for p in parents:
        node = node[p]
    node[last] = value
    before, after = _config(fmt, doc), _config(fmt, changed)
    assert _get(before, ours) != _get(after, ours)


def test_an_unmodelled_optimizer_is_listed_as_ignored_with_why():
    res = from_file.read(EXAMPLES / "axolotl_llama3_qlora.yml")
    assert "paged_adamw_32bit" in res.ignored["optimizer"]
    assert "optimizer.name" not in res.keys
    # sample packing with flash attention: one bin of micro_batch_size x sequence_len, position ids (padding-free)
    assert res.keys["train.packing"] == "padding_free" and "train.doc_len" in res.ignored["(sequence lengths)"]


def _parsed(fmt: str, **fields):
    doc = {**_doc(fmt), **fields}
    return PARSERS[fmt](doc, "x")


@pytest.mark.parametrize("fields, packing", [
    ({"packing": True}, "padding_free"),  # packing_strategy bfd (the default): padding-free (sft_trainer.py:916)
    ({"packing": True, "packing_strategy": "bfd_split"}, "padding_free"),
    ({"packing": True, "packing_strategy": "wrapped"}, "none"),  # full rows, all-ones mask: the unpacked batch
    ({"packing": True, "packing_strategy": "wrapped", "padding_free": True}, "padding_free"),
    ({"padding_free": True}, "padding_free"),
    ({"packing": False, "padding_free": False}, None),
])
def test_trl_packing_and_padding_free(fields, packing):
    res = _parsed("trl", **fields)
    assert res.keys.get("train.packing") == packing
    assert "packing" not in res.ignored and ("padding_free" in res.ignored) == (fields == {"padding_free": True})


@pytest.mark.parametrize("fmt, fields, packing, attn", [
    ("axolotl", {"sample_packing": True, "flash_attention": True}, "padding_free", "flash_attention_2"),
    ("axolotl", {"sample_packing": True, "flash_attention": False}, "packed", None),
    ("llamafactory", {"packing": True, "neat_packing": False}, "none", None),  # rows of cutoff_len, cross-attention
    ("llamafactory", {"neat_packing": True}, "packed_4d", None),  # the collator's 4-D mask (sdpa / eager)
    ("llamafactory", {"neat_packing": True, "flash_attn": "fa2"}, "packed", "flash_attention_2"),
])
def test_axolotl_and_llamafactory_packing(fmt, fields, packing, attn):
    res = _parsed(fmt, **fields)
    assert res.keys["train.packing"] == packing
    assert res.keys.get("model.attn_implementation") == attn
    assert not {"sample_packing", "packing", "neat_packing"} & set(res.unread)
    cfg = _config(fmt, {**_doc(fmt), **fields})  # and it validates into a config
    assert cfg.train.packing == packing


def test_a_file_in_no_known_format_is_one_line(tmp_path, capsys):
    bad = tmp_path / "x.yaml"
    bad.write_text("hello: 1\n")
    rc = main(["fit", "tiny-llama", "--from", str(bad), "--gpu", "h100"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: --from: not a format this reads")


def test_simulate_from_a_trl_json_writes_a_line_with_its_keys(tmp_path, capsys):
    out = tmp_path / "sim.jsonl"
    rc = main(["simulate", "--from", str(EXAMPLES / "trl_sftconfig.json"), "model.arch=tiny-llama", "regime.kind=lora",
               "train.seq_len=32", "train.batch_size=1", "--output", str(out), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    rec = json.loads(out.read_text().splitlines()[-1])
    assert rec["config"]["recipe"] == "trl" and rec["config"]["train"]["grad_accum_steps"] == 4
    assert rec["config"]["optimizer"]["name"] == "adamw_fused" and rec["config"]["train"]["loss"] == "chunked"


def test_an_accelerate_fsdp2_config_runs_fsdp_qlora(capsys):
    """Issue 20 item 4: FSDP2 + QLoRA was refused ("allowed with qlora: none, ddp"); from an accelerate FSDP2 config
    it now simulates, with the settings the stack sets: bnb_4bit_quant_storage = the model dtype (derived),
    accelerate's bf16 FSDP2 mixed-precision policy and TRL's QLoRA defaults, each listed in `defaults`."""
    rc = main(["fit", "tiny-llama", "--regime", "qlora4", "--from", str(EXAMPLES / "accelerate_fsdp2.yaml"),
               "--gpu", "h100", "--no-search", "--json", "train.seq_len=64", "train.batch_size=1"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    res = json.loads(out)
    cfg = load_config(None, base=res["config"])
    assert (cfg.parallel.strategy, cfg.parallel.world_size, cfg.regime.kind) == ("fsdp2", 2, "qlora")
    assert cfg.regime.quant_storage == "bfloat16" and not cfg.regime.prepare_kbit
    assert (cfg.parallel.param_dtype, cfg.parallel.reduce_dtype) == ("bfloat16", "bfloat16")
    filled = " ".join(res["defaults"])
    assert 'regime.quant_storage="bfloat16"' in filled and "accelerate/state.py:1015" in filled


def test_liger_switches_map_to_the_liger_loss_where_the_stack_runs_it():
    """Trainer / axolotl / LLaMA-Factory (sft, pt) run Liger's fused linear cross-entropy: train.loss liger, with its
    layer kernels listed as not modelled. TRL 1.16's SFTTrainer turns it off and keeps its chunked head; Trainer with
    liger_kernel_config fused_linear_cross_entropy false, and LLaMA-Factory's stages that need logits, too."""
    doc = _doc("trl")
    trainer = {k: v for k, v in doc.items() if k not in ("max_length", "packing", "dataset_text_field")}
    trainer["use_liger_kernel"] = True
    res = PARSERS[detect(trainer)](trainer, "x")
    assert res.format == "trainer" and res.keys["train.loss"] == "liger"
    assert "RMSNorm" in res.ignored["use_liger_kernel (layer kernels)"]
    off = PARSERS["trainer"]({**trainer, "liger_kernel_config": {"fused_linear_cross_entropy": False}}, "x")
    assert "train.loss" not in off.keys and "fused_linear_cross_entropy false" in off.ignored["use_liger_kernel"]
    trl = PARSERS["trl"]({**doc, "use_liger_kernel": True}, "x")
    assert "train.loss" not in trl.keys and "chunked" in trl.ignored["use_liger_kernel"]
    assert _config("trl", {**doc, "use_liger_kernel": True}).train.loss == "chunked"  # the recipe's, as TRL does
    lf = _doc("llamafactory")
    assert PARSERS["llamafactory"]({**lf, "enable_liger_kernel": True}, "x").keys["train.loss"] == "liger"
    dpo = PARSERS["llamafactory"]({**lf, "enable_liger_kernel": True, "stage": "dpo"}, "x")
    assert "train.loss" not in dpo.keys and "needs logits" in dpo.ignored["enable_liger_kernel"]
    ax = PARSERS["axolotl"]({**_doc("axolotl"), "liger_rms_norm": True, "liger_glu_activation": True}, "x")
    assert "not modelled" in ax.ignored["liger_rms_norm"] and "train.loss" not in ax.keys


def test_axolotl_quantize_moe_experts_maps_to_regime_quantize_experts():
    doc = _doc("axolotl")
    assert "quantize_moe_experts" not in doc
    doc.update(quantize_moe_experts=True, lora_target_linear=None, lora_dropout=0.0,
               lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    parsed = PARSERS[detect(doc)](doc, "x")
    assert ("quantize_moe_experts", "regime.quantize_experts") in parsed.mapped
    assert "quantize_moe_experts" not in parsed.ignored and "quantize_moe_experts" not in parsed.unread
    data = parsed.data()
    data["model"] = {"arch": "tiny-mixtral"}
    cfg = load_config(None, base=data)
    assert cfg.regime.kind == "qlora" and cfg.regime.bits == 4 and cfg.regime.quantize_experts
    off = dict(doc, quantize_moe_experts=False)
    assert "regime.quantize_experts" not in PARSERS[detect(off)](off, "x").keys
    # axolotl refuses lora_target_linear beside it (utils/schemas/config.py check_quantize_moe_experts); so do we
    with pytest.raises(from_file.FromFileError, match=r"^--from: lora_target_linear: true is refused by axolotl "
                                                      r"with quantize_moe_experts: true; allowed: "):
        PARSERS["axolotl"](dict(doc, lora_target_linear=True), "x")


def test_trl_activation_offloading_maps_to_the_train_key():
    """SFTConfig.activation_offloading: SFTTrainer enters TRL's OffloadActivations (sft_trainer.py:1190-1193); a
    TrainingArguments file has no such field, so there it is listed as ignored with why."""
    res = _parsed("trl", activation_offloading=True)
    assert res.keys["train.activation_offloading"] is True and "activation_offloading" not in res.ignored
    assert _config("trl", {**_doc("trl"), "activation_offloading": True}).train.activation_offloading is True
    assert _parsed("trl").keys["train.activation_offloading"] is False  # the shipped example says false
    trainer = {k: v for k, v in _doc("trl").items() if k not in ("max_length", "packing", "dataset_text_field")}
    trainer["activation_offloading"] = True
    res = PARSERS[detect(trainer)](trainer, "x")
    assert res.format == "trainer" and "train.activation_offloading" not in res.keys
    assert "SFTConfig" in res.ignored["activation_offloading"]
