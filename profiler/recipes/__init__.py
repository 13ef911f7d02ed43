"""The training stacks users run (TRL, transformers Trainer, our plain loop): their memory-relevant defaults."""
