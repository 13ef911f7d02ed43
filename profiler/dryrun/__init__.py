"""Dry-run of the user's own training script on fake tensors (`simulate -- python train.py`): child.py runs in the
script (its start-up: bootstrap/), run.py around it (checks, verdict, the result line)."""
