"""llm-memprof: measure, simulate and predict the GPU memory of fine-tuning Hugging Face causal LMs."""


def __getattr__(name: str):
    """Lazy public API: `profiler.track` imports torch only when first used (integrator: merge with the
    other lazy names here)."""
    if name == "track":
        from profiler.measure.track import track

        return track
    raise AttributeError(f"module 'profiler' has no attribute {name!r}")
