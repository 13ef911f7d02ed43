"""GPU presets (package data with a source per row) and typed sizes that say how they were read."""

from __future__ import annotations

import csv
import re

import pytest

from profiler.config import ConfigError
from profiler.predict.gpus import GPUS_CSV, gpu_by_name, gpu_by_size, presets


def _rows() -> list[dict[str, str]]:
    with GPUS_CSV.open(newline="") as f:
        return list(csv.DictReader(f))


def test_every_preset_has_a_source_and_a_driver_total():
    rows = presets()
    assert {"h100-sxm", "h100-pcie", "h100-nvl", "h200", "gh200", "b200", "a100-80gb", "a100-40gb", "a100-80gb-pcie",
            "a100-40gb-pcie", "l40s", "a40", "rtx-a6000", "rtx6000-ada", "a10g", "l4", "rtx3060", "rtx3080", "rtx3090",
            "rtx4070ti", "rtx4090", "rtx5090", "v100-16gb", "v100-32gb", "v100-pcie-32gb", "t4", "p100"} <= set(rows)
    for g in rows.values():
        assert g.source.startswith("https://"), g.name
        assert 8 * 2**30 < g.total_bytes < 256 * 2**30


def test_every_source_is_a_url_quoting_the_total_it_gives():
    """A row's figure is read from an output, never made up: its source holds a URL and the MiB figure itself."""
    for r in _rows():
        assert re.search(r"https://\S+", r["source"]), r["name"]
        assert re.search(rf"(?<!\d){r['total_mib']}\s?MiB", r["source"]), r["name"]


def _gpu_table():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_table", GPUS_CSV.parents[2] / "scripts" / "gpu_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_preset_tables_in_the_fit_page_and_the_data_readme_are_generated_from_the_csv():
    """docs/fit.md's and profiler/data/README.md's preset tables are what scripts/gpu_table.py writes from
    gpus.csv: one row per preset, its total in MiB and GiB, its compute capability and the sources."""
    mod = _gpu_table()
    rows = _rows()
    for page, render in mod.PAGES.items():
        assert mod.page_block(page) == render(rows), page
    assert mod.main(["--check"]) == 0
    fit = mod.fit_markdown(rows)
    for r in rows:
        mib = int(r["total_mib"])
        line = next(x for x in fit.splitlines() if x.startswith(f"| `{r['name']}` |"))
        assert f"| {mib:,} | {mib / 1024:.2f} |" in line and r["source"].split()[0] in line, r["name"]
    assert "| `rtx4090` |" in fit and "| 24,564 | 23.99 | 8.9 |" in fit  # fit's first line prints 23.99 GiB total


def test_cite_numbers_links_and_keeps_the_quote():
    mod = _gpu_table()
    assert mod.cite("https://a/1 (nvidia-smi 0MiB / 81559MiB); https://b/2") == \
        "[1](https://a/1) [2](https://b/2) (nvidia-smi 0MiB / 81559MiB)"


def test_names_aliases_and_device_names_are_unambiguous():
    """Every name, alias and device name finds its own row (one that two rows share would answer for one only)."""
    for r in _rows():
        for typed in [r["name"], r["device_name"], *r["aliases"].split()]:
            assert gpu_by_name(typed).name == r["name"], (typed, r["name"])


@pytest.mark.parametrize("typed, name", [("RTX 4090", "rtx4090"), ("rtx4090", "rtx4090"), ("4090", "rtx4090"),
                                         ("NVIDIA H100 80GB HBM3", "h100-sxm"), ("A100-40GB", "a100-40gb"),
                                         ("H100 PCIe", "h100-pcie"), ("NVIDIA H100 PCIe", "h100-pcie"),
                                         ("V100 32GB", "v100-32gb"), ("Tesla V100-PCIE-32GB", "v100-pcie-32gb"),
                                         ("RTX 6000 Ada", "rtx6000-ada"), ("A6000", "rtx-a6000"),
                                         ("RTX 4070 Ti", "rtx4070ti")])
def test_aliases(typed, name):
    assert gpu_by_name(typed).name == name


@pytest.mark.parametrize("name, mib, device", [("h100-pcie", 81559, "NVIDIA H100 PCIe"),
                                               ("v100-32gb", 32768, "Tesla V100-SXM2-32GB"),
                                               ("v100-pcie-32gb", 32768, "Tesla V100-PCIE-32GB")])
def test_presets_the_issue_asked_for(name, mib, device):
    g = gpu_by_name(name)
    assert (g.total_bytes, g.device_name) == (mib * 2**20, device)


def test_h100_total_is_what_nvidia_smi_reports_and_slug_finds_calibration():
    g = gpu_by_name("h100")
    assert g.total_bytes == 81559 * 2**20
    assert g.slug == "nvidia-h100-80gb-hbm3"  # the device_slug of results/runs/<slug>.jsonl


@pytest.mark.parametrize("typed, meant", [("rtx4909", "rtx4090"), ("h100-pcei", "h100-pcie"),
                                          ("v100-32bg", "v100-32gb")])
def test_unknown_gpu_says_did_you_mean(typed, meant):
    with pytest.raises(ConfigError, match=rf"'{typed}' is not a known GPU; allowed: .*did you mean '{meant}'"):
        gpu_by_name(typed)


def test_sizes_say_how_they_were_read():
    gb, gib = gpu_by_size("24GB"), gpu_by_size("24GiB")
    assert (gb.total_bytes, gib.total_bytes) == (24 * 10**9, 24 * 2**30)
    assert "GB = 10^9 bytes" in gb.source and "GiB = 2^30 bytes" in gib.source
    with pytest.raises(ConfigError, match="--gpu-memory: '24' is not a size"):
        gpu_by_size("24")
