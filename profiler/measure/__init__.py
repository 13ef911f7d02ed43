"""Real runs: build the model, apply the regime, step it, and measure every phase (probes/)."""
