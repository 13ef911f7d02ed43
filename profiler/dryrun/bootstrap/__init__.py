"""Start-up folder put first on the child Python's PYTHONPATH by `simulate -- ...` (holds its sitecustomize)."""
