"""Shared pieces of the Langevin kernels: checks, flat views of a position, the preconditioner."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree



def _concrete(x: Any) -> float | None:
    """``float(x)`` when ``x`` is a concrete scalar, None under tracing."""
    try:
        return float(x)
    except (jax.errors.ConcretizationTypeError, TypeError):
        return None


def _check_positive(kernel: str, name: str, value: Any) -> None:
    v = _concrete(value)
    if v is not None and not v > 0.0:
        raise ValueError(f"langevin.{kernel}({name}={value}): must be > 0.")


def _check_finite_init(kernel: str, logdensity: jax.Array) -> None:
    v = _concrete(logdensity)
    if v is not None and not jnp.isfinite(v):
        raise ValueError(
            f"langevin.{kernel}: the log density at the initial position is {v}; start the "
            "chain where the target density is positive (and finite)."
        )


def _flat_value_and_grad(logdensity_fn: Callable, unravel: Callable) -> Callable:
    vg = jax.value_and_grad(logdensity_fn)

    def fn(x):
        value, grad = vg(unravel(x))
        return value, ravel_pytree(grad)[0]

    return fn


class _Metric(NamedTuple):
    """The inverse mass matrix ``M``: identity, diagonal (vector) or dense (matrix)."""

    imm: jax.Array | None
    chol: jax.Array | None  # lower Cholesky factor of a dense M

    @staticmethod
    def make(kernel: str, inverse_mass_matrix: Any, dim: int, allow_dense: bool = True) -> "_Metric":
        if inverse_mass_matrix is None:
            return _Metric(None, None)
        if isinstance(inverse_mass_matrix, (dict, list, tuple)):
            inverse_mass_matrix = ravel_pytree(inverse_mass_matrix)[0]  # a pytree of diagonals
        imm = jnp.asarray(inverse_mass_matrix)
        if imm.shape == (dim,):
            return _Metric(imm, None)
        if imm.shape == (dim, dim) and allow_dense:
            return _Metric(imm, jnp.linalg.cholesky(imm))
        want = f"({dim},) or ({dim}, {dim})" if allow_dense else f"({dim},)"
        raise ValueError(f"langevin.{kernel}: inverse_mass_matrix has shape {imm.shape}; "
                         f"expected {want} for a position with {dim} scalars.")

    def mul(self, v):  # M v
        if self.imm is None:
            return v
        return self.imm * v if self.chol is None else self.imm @ v

    def solve(self, v):  # M^{-1} v
        if self.imm is None:
            return v
        if self.chol is None:
            return v / self.imm
        return jax.scipy.linalg.cho_solve((self.chol, True), v)

    def sqrt_mul(self, z):  # M^{1/2} z (a factor S with S S^T = M): z ~ N(0, I) -> N(0, M)
        if self.imm is None:
            return z
        return jnp.sqrt(self.imm) * z if self.chol is None else self.chol @ z

    def inv_sqrt_mul(self, z):  # z ~ N(0, I) -> N(0, M^{-1})
        if self.imm is None:
            return z
        if self.chol is None:
            return z / jnp.sqrt(self.imm)
        return jax.scipy.linalg.solve_triangular(self.chol.T, z, lower=False)

    def inv_quad(self, v):  # v^T M^{-1} v
        if self.imm is None or self.chol is None:
            return jnp.sum(v * self.solve(v))
        w = jax.scipy.linalg.solve_triangular(self.chol, v, lower=True)
        return jnp.sum(w * w)

    def kinetic(self, p):  # p^T M p / 2
        return 0.5 * jnp.sum(p * self.mul(p))


def _as_int(n: int) -> jax.Array:
    return jnp.asarray(n, dtype=jnp.int32)
