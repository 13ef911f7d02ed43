"""`--from` a DeepSpeed ZeRO-3 JSON or an accelerate DeepSpeed config with a QLoRA regime (issue 20 item 4):
`estimate` gives the components estimate, `fit` says in one line why it does not simulate, CPU offload is refused.
Run: `python -m pytest tests/recipes/test_from_file_zero3_qlora.py -q`."""

from __future__ import annotations

import json

from profiler.cli import main
from profiler.config import REPO_ROOT

# an accelerate DeepSpeed config with the settings of PEFT's ZeRO-3 + QLoRA guide (docs/source/accelerate/
# deepspeed.md: zero_stage 3, zero3_init_flag true, no offload, bf16, 2 processes), written for this test
ACCELERATE_Z3_QLORA = """distributed_type: DEEPSPEED
deepspeed_config:
  zero_stage: 3
  zero3_init_flag: true
  offload_optimizer_device: none
  offload_param_device: none
mixed_precision: bf16
num_machines: 1
num_processes: 2
"""
DS_Z3 = {"train_micro_batch_size_per_gpu": "auto", "bf16": {"enabled": "auto"},
         "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": "auto"}}
TINY_QLORA = ["model.arch=tiny-llama", "regime.kind=qlora", "train.seq_len=64", "train.batch_size=1"]


def test_estimate_from_a_deepspeed_zero3_json_with_qlora(tmp_path, capsys):
    path = tmp_path / "ds_z3.json"
    path.write_text(json.dumps(DS_Z3))
    rc = main(["estimate", "--from", str(path), *TINY_QLORA, "parallel.world_size=4", "--estimator", "components"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert err.startswith(f"--from {path} (deepspeed): mapped zero_optimization.stage -> parallel.strategy=\"zero3\"")
    assert "zero3 x 4, per rank" in out.replace("\n", " ")


def test_accelerate_deepspeed_config_with_qlora_estimates_and_fit_says_why_not(tmp_path, capsys):
    path = tmp_path / "deepspeed_config_z3_qlora.yaml"
    path.write_text(ACCELERATE_Z3_QLORA)
    rc = main(["estimate", "--from", str(path), *TINY_QLORA, "--estimator", "components"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "num_processes -> parallel.world_size=2" in err and "zero3 x 2, per rank" in out.replace("\n", " ")
    assert "zero3_init_flag: not modelled" in err and "with QLoRA transformers never uses zero.Init" in err
    rc = main(["fit", "tiny-llama", "--regime", "qlora4", "--from", str(path), "--gpu", "h100", "--no-search",
               "train.seq_len=64", "train.batch_size=1"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 1 and len(errors) == 1 and "Traceback" not in err
    assert "DeepSpeed zero3 cannot run on fake tensors" in errors[0]


def test_the_shipped_offload_json_with_qlora_is_one_line_exit_2(capsys):
    path = REPO_ROOT / "examples" / "configs" / "deepspeed_z3_offload.json"
    rc = main(["estimate", "--from", str(path), *TINY_QLORA, "parallel.world_size=2", "device=cuda"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in err
    assert errors[0].startswith("error: parallel.offload: zero3 + qlora with CPU offload is not modelled")
