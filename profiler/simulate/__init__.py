"""The measured harness on fake tensors: any model size, no GPU, no weight bytes."""
