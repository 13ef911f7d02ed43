"""Dry-run of the user's own training script on fake tensors (`simulate -- python train.py`): the child side."""
