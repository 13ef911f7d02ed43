"""GPU presets (package data with a source per row) and typed sizes that say how they were read."""

from __future__ import annotations

import pytest

from profiler.config import ConfigError
from profiler.predict.gpus import gpu_by_name, gpu_by_size, presets


def test_every_preset_has_a_source_and_a_driver_total():
    rows = presets()
    assert {"h100-sxm", "h200", "a100-80gb", "a100-40gb", "l40s", "a10g", "l4", "rtx3090", "rtx4090", "rtx5090",
            "v100-16gb", "t4"} <= set(rows)
    for g in rows.values():
        assert g.source.startswith("https://"), g.name
        assert 10 * 2**30 < g.total_bytes < 200 * 2**30


@pytest.mark.parametrize("typed, name", [("RTX 4090", "rtx4090"), ("rtx4090", "rtx4090"), ("4090", "rtx4090"),
                                         ("NVIDIA H100 80GB HBM3", "h100-sxm"), ("A100-40GB", "a100-40gb")])
def test_aliases(typed, name):
    assert gpu_by_name(typed).name == name


def test_h100_total_is_what_nvidia_smi_reports_and_slug_finds_calibration():
    g = gpu_by_name("h100")
    assert g.total_bytes == 81559 * 2**20
    assert g.slug == "nvidia-h100-80gb-hbm3"  # the device_slug of results/runs/<slug>.jsonl


def test_unknown_gpu_says_did_you_mean():
    with pytest.raises(ConfigError, match=r"'rtx4909' is not a known GPU; allowed: .*did you mean 'rtx4090'"):
        gpu_by_name("rtx4909")


def test_sizes_say_how_they_were_read():
    gb, gib = gpu_by_size("24GB"), gpu_by_size("24GiB")
    assert (gb.total_bytes, gib.total_bytes) == (24 * 10**9, 24 * 2**30)
    assert "GB = 10^9 bytes" in gb.source and "GiB = 2^30 bytes" in gib.source
    with pytest.raises(ConfigError, match="--gpu-memory: '24' is not a size"):
        gpu_by_size("24")
