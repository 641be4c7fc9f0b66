"""Environments (no torch): the Workplace Assistant tools, verifier, generated tasks and the Ray pool."""
