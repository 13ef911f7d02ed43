"""How long and what it costs: FLOPs / bytes per phase from the fake run, a roofline time model, its fit.

A room of its own (above simulate and formulas, below learn): flops.py counts the work of each phase of a
simulated step (an optional recorder the harness calls; simulate is unchanged without it), specs.py reads the
GPU datasheet table, model.py turns work into seconds, efficiency.py fits the model's efficiencies on
published throughputs (leave-one-out error), validate.py predicts each published row. See docs/timing.md.
"""
