"""Shared test setup: float32 JAX on the CPU, a headless matplotlib backend."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
