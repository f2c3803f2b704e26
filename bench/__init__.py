"""Benchmarks of our samplers against NumPyro's: ``python bench/run.py <suite>``."""
