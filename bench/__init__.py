"""Benchmarks run by hand (`glintstream bench ...`); their figures live in docs/."""
