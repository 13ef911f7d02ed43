"""The measured harness on fake tensors: any model size, no GPU, no weight bytes.

The package object is also callable: `profiler.simulate(cfg)` is the Python API's simulate (profiler/__init__.py
sets this module's class), so `import profiler.simulate.backend` and `from profiler import simulate` both work.
"""
