"""Progress bars for long runs, moved from the host between compiled chunks.

Calling the host every step serialises the device against Python (NumPyro's SVI bar once
cost 7x the run time that way). Every long run here (chains, SMC stages, training) is cut
into ~``updates`` compiled chunks (:func:`chunk_sizes`), and the host moves a
:class:`ProgressBar` between them; no program carries host callbacks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm.auto import tqdm


class ProgressBar:
    """Host-side tqdm bar that opens on its first update (so compiling shows no empty bar).

    ``phases`` names consecutive parts of the run (e.g. ``[("warmup", 1000), ("sample",
    1000)]``); the bar's label follows the phase the count is in.

    Example:
        >>> bar = ProgressBar(total=10, desc="demo", enabled=False)
        >>> bar.update(5, {})
        >>> bar.close()
    """

    def __init__(
        self,
        total: int,
        desc: str = "",
        enabled: bool = True,
        phases: list[tuple[str, int]] | None = None,
    ):
        self.total, self.desc, self.enabled = int(total), desc, bool(enabled)
        self.phases = list(phases or [])
        self._bar = None

    def update(self, done: Any, postfix: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            self._bar = tqdm(total=self.total, desc=self.desc, leave=True, dynamic_ncols=True)
        elif int(done) < self._bar.n:  # unordered callbacks: a stale report
            return
        if self.phases:
            desc, end = self.phases[-1][0], 0
            for name, n in self.phases:
                end += n
                if int(done) < end:
                    desc = name
                    break
            self._bar.set_description(f"{self.desc} {desc}".strip(), refresh=False)
        if postfix:
            self._bar.set_postfix(
                {k: _fmt(v) for k, v in postfix.items()}, refresh=False
            )
        self._bar.n = int(done)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _fmt(value: Any) -> str:
    value = np.asarray(value)
    if value.dtype.kind in "iub":
        return str(int(value))
    return f"{float(value):.3g}"


def chunk_sizes(length: int, updates: int) -> tuple[int, int]:
    """``(n_chunks, chunk)`` with ``n_chunks * chunk >= length`` and ``n_chunks`` near ``updates``.

    A divisor of ``length`` between ``updates / 2`` and ``2 * updates`` is preferred (no
    padding, no per-step guard); otherwise the last chunk is padded.
    """
    updates = max(1, min(int(updates), length))
    for n in sorted(range(max(1, updates // 2), min(length, 2 * updates) + 1),
                    key=lambda n: abs(n - updates)):
        if length % n == 0:
            return n, length // n
    chunk = -(-length // updates)
    return -(-length // chunk), chunk
