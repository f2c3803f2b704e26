"""The fixed affine map ``x = loc + L y`` that whitens the draws a proposal is fitted to."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _whitening(x: Any, standardize: str | None) -> tuple[jax.Array, jax.Array]:
    """``(loc, L)`` with ``x = loc + L y`` whitening the draws ``x`` (on the host, float64)."""
    x64 = np.asarray(x, np.float64)
    n, d = x64.shape
    dtype = jnp.result_type(float)
    if standardize is None:
        return jnp.zeros(d, dtype), jnp.eye(d, dtype=dtype)
    loc = x64.mean(axis=0)
    std = x64.std(axis=0)
    tril = np.diag(np.where(std > 0, std, 1.0))
    if standardize == "full" and n > d:
        cov = np.atleast_2d(np.cov(x64, rowvar=False))
        jitter = 1e-9 * max(np.trace(cov) / d, 1e-12)
        try:
            tril = np.linalg.cholesky(cov + jitter * np.eye(d))
        except np.linalg.LinAlgError:  # degenerate draws: the diagonal scaling
            pass
    return jnp.asarray(loc, dtype), jnp.asarray(tril, dtype)


class _Affine:
    """Shared pieces of the fixed whitening map ``x = loc + L y``."""

    loc: jax.Array | None
    scale_tril: jax.Array | None

    def _to_x(self, y: jax.Array) -> jax.Array:
        if self.scale_tril is not None:
            y = y @ self.scale_tril.T
        return y if self.loc is None else y + self.loc

    def _to_y(self, x: jax.Array) -> jax.Array:
        if self.loc is not None:
            x = x - self.loc
        if self.scale_tril is None:
            return x
        flat = x.reshape((-1, x.shape[-1]))
        y = jax.scipy.linalg.solve_triangular(self.scale_tril, flat.T, lower=True).T
        return y.reshape(x.shape)

    def _log_det_scale(self) -> jax.Array:
        if self.scale_tril is None:
            return jnp.zeros(())
        return jnp.sum(jnp.log(jnp.abs(jnp.diag(self.scale_tril))))


def _check_affine(owner: str, dim: int, loc: Any, scale_tril: Any):
    if loc is not None:
        loc = jnp.asarray(loc, jnp.result_type(float))
        if loc.shape != (dim,):
            raise ValueError(f"{owner}: loc must have shape ({dim},); got {loc.shape}.")
    if scale_tril is not None:
        scale_tril = jnp.asarray(scale_tril, jnp.result_type(float))
        if scale_tril.shape != (dim, dim):
            raise ValueError(f"{owner}: scale_tril must have shape ({dim}, {dim}); got "
                             f"{scale_tril.shape}.")
        scale_tril = jnp.tril(scale_tril)
    return loc, scale_tril


def _affine_parts(loc, tril) -> _Affine:
    a = _Affine()
    a.loc, a.scale_tril = loc, tril
    return a
