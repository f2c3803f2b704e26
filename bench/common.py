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
from jax import monitoring


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


# JAX reports every tracing to a jaxpr, lowering to MLIR and XLA compilation through
# jax.monitoring (the same events that ``jax.log_compiles()`` prints).
_COMPILE_EVENTS = frozenset(
    {
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
        "/jax/core/compile/backend_compile_duration",
    }
)


class CompileClock:
    """Seconds spent tracing/lowering/compiling inside a ``with`` block, from JAX's own events.

    Spans are merged before summing, so a trace nested in another trace counts once.
    ``events`` counts the XLA compilations (``backend_compile``) seen.
    """

    def __init__(self) -> None:
        self._spans: list[tuple[float, float]] = []
        self.events = 0

    def _listener(self, event: str, start_time: float, end_time: float, **kwargs: Any) -> None:
        if event in _COMPILE_EVENTS:
            self._spans.append((start_time, end_time))
            if event.endswith("backend_compile_duration"):
                self.events += 1

    def __enter__(self) -> "CompileClock":
        monitoring.register_event_time_span_listener(self._listener)
        return self

    def __exit__(self, *exc: Any) -> None:
        monitoring.unregister_event_time_span_listener(self._listener)

    @property
    def seconds(self) -> float:
        total, end = 0.0, float("-inf")
        for s, e in sorted(self._spans):
            if e <= end:
                continue
            total += e - max(s, end)
            end = e
        return total
