"""Reproducible scale benchmarks (SPEC §11); ``python -m benchmarks.<name>``."""
