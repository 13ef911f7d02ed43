"""Start-up files for the Python that `trace` runs (a folder put first on PYTHONPATH; see sitecustomize.py)."""
