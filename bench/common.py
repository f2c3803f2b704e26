"""What every benchmark suite shares: the machine's description and medians of repetitions.

Kept apart from ``bench/run.py`` so that suites in their own modules use them without
importing the runner (which imports every suite).
"""

from __future__ import annotations

import os
import platform
import statistics
from typing import Any

import jax
import numpy as np


def machine_info() -> dict[str, Any]:
    import arviz
    import blackjax
    import jaxlib
    import numpyro

    return {
        "jax_devices": [str(d) for d in jax.devices()],
        "jax_backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "jax_enable_x64": bool(jax.config.jax_enable_x64),
        "versions": {
            "jax": jax.__version__,
            "jaxlib": jaxlib.__version__,
            "numpyro": numpyro.__version__,
            "blackjax": blackjax.__version__,
            "arviz": arviz.__version__,
            "numpy": np.__version__,
        },
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def median_summary(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over repetitions of every numeric entry, plus the raw per-repetition values."""
    out: dict[str, Any] = {}
    for k, v in reps[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            values = [r[k] for r in reps]
            out[k] = statistics.median(values)
    out["per_rep"] = reps
    return out


def safe_ratio(a: float, b: float) -> float | None:
    return None if not b else a / b
