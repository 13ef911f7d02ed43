"""How far simulate's routing assumption is from real routing: tiny-mixtral on the CPU, real runs under the model's
own (random-weight) routing and forced to balanced / worst_case, against simulate (balanced); per-phase peaks.

Run: PYTHONPATH=. python scripts/moe_routing.py full|lora|qlora4 [key=value ...]
"""

from __future__ import annotations

import sys
import warnings

from profiler.config import load_config
from profiler.measure import harness
from profiler.simulate.backend import force_routing, simulate


def main(kind: str, overrides: list[str]) -> None:
    warnings.filterwarnings("ignore")
    cfg = load_config(f"configs/tiny_{kind}.yaml",
                      ["model.arch=tiny-mixtral", "regime.lora.dropout=0", "train.steps=1", *overrides])
    sim = {(p["phase"], p["step"]): p["peak_allocated_bytes"] for p in simulate(cfg)["phases"]}
    real_load = harness.load_model
    for routing in (None, "balanced", "worst_case"):
        def load(c, routing=routing):
            loaded = real_load(c)
            if routing:
                force_routing(loaded.model, routing)
            return loaded

        harness.load_model = load  # the real run builds its model through this name
        rec = harness.run(cfg)
        worst = max(abs(sim[(p["phase"], p["step"])] / p["peak_allocated_bytes"] - 1) for p in rec["phases"])
        print(kind, routing or "random", rec["status"], f"max |simulate/real - 1| over phases = {worst:.3%}")
    harness.load_model = real_load


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
