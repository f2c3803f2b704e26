"""Doctest collection: skip module aliases, whose docstrings are collected where they live."""

collect_ignore = ["inference/neutra.py"]
