"""Predictions a user acts on: does a config fit a GPU (fit.py), the largest batch / seq (search.py), the GPU
presets (gpus.py) and where a model's architecture comes from (model_source.py). Built on simulate,
formulas and learn/calibrate; used by commands/fit.py and the Python API."""
