"""llm-memprof: measure, simulate and predict the GPU memory of fine-tuning Hugging Face causal LMs."""
