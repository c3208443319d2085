"""The engine: one training loop, the evaluation protocol, checkpoints and logs for every
algorithm."""
