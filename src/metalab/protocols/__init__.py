"""Evaluation protocols: the standard fixed-episode protocol, Lake et al.'s one-shot challenge,
regression curves, and side-by-side comparison of runs."""
