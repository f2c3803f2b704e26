"""A ``lax.scan`` that reports to a progress bar a few times per run, never every step.

Calling the host every step serialises the device against Python (NumPyro's SVI bar once
cost 7x the run time that way). Here the loop is split into ~``updates`` chunks: an inner
``scan`` runs a chunk on the device, then one ``jax.debug.callback`` moves the bar.
The whole loop stays one compiled program.

The callbacks are unordered: JAX refuses ordered callbacks in a program that spans several
devices (chains sharded by :mod:`inference.sharding`), so the bar only ever moves forward
(a late report of an earlier count is dropped) and the caller runs
``jax.effects_barrier()`` before closing it.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
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


class Relay:
    """A progress sink compiled into a program, pointed at each run's own bar or function.

    A program whose host callbacks report progress is kept and reused across calls
    (:mod:`inference.programs.cache`), so the callback cannot close over one call's bar; it
    calls a relay instead, and each run sets ``relay.target`` (a :class:`ProgressBar`, or
    any callable) for its duration. One run at a time per cached program.

    Example:
        >>> relay, seen = Relay(), []
        >>> relay(1)                          # no target: ignored
        >>> relay.target = seen.append
        >>> relay(2); relay.target = None
        >>> seen
        [2]
    """

    enabled = True

    def __init__(self) -> None:
        self.target: Any = None

    def __call__(self, *args: Any) -> None:
        target = self.target
        if target is not None:
            target(*args)

    def update(self, done: Any, postfix: dict[str, Any]) -> None:
        target = self.target
        if target is not None:
            target.update(done, postfix)


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


def scan(
    body: Callable[[Any, Any], tuple[Any, None]],
    carry: Any,
    xs: Any,
    length: int,
    *,
    bar: ProgressBar | None = None,
    postfix_fn: Callable[[Any], dict[str, jax.Array]] | None = None,
    updates: int = 20,
) -> Any:
    """``jax.lax.scan(body, carry, xs, length)[0]`` that moves ``bar`` about ``updates`` times.

    ``body`` returns ``(carry, None)``: results are collected in the carry (so the loop
    body is compiled once, whatever the chunking). ``postfix_fn(carry)`` gives scalars
    shown beside the bar. With ``bar=None`` this is exactly ``lax.scan``.

    Example:
        >>> import jax.numpy as jnp
        >>> float(scan(lambda c, x: (c + x, None), 0.0, jnp.arange(5.0), 5))
        10.0
    """
    if bar is None or not bar.enabled or length == 0:
        return jax.lax.scan(body, carry, xs, length=length)[0]

    def report(carry, done):
        extra = postfix_fn(carry) if postfix_fn is not None else {}
        jax.debug.callback(bar.update, done, extra)

    n_chunks, chunk = chunk_sizes(length, updates)
    padded = n_chunks * chunk
    if padded > length:
        # Pad the inputs to whole chunks; padded steps leave the carry untouched. The guard
        # is a lax.cond per step, so it is only used when no chunking divides the length.
        xs = jax.tree.map(
            lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], padded - length, axis=0)]), xs
        )

        def step(c, inp):
            i, x = inp
            return jax.lax.cond(i < length, lambda c: body(c, x)[0], lambda c: c, c), None
    else:

        def step(c, inp):
            return body(c, inp[1])[0], None

    xs = jax.tree.map(lambda x: x.reshape((n_chunks, chunk) + x.shape[1:]), xs)

    def outer(c, inp):
        i, x = inp
        c = jax.lax.scan(step, c, (i * chunk + jnp.arange(chunk), x))[0]
        report(c, jnp.minimum((i + 1) * chunk, length))
        return c, None

    report(carry, jnp.asarray(0))
    return jax.lax.scan(outer, carry, (jnp.arange(n_chunks), xs))[0]
