"""Checks behind :mod:`inference.smc`: gradient counts, LAPACK on CPU devices, invalid data.

* :func:`probe_move` traces one kernel init and one step (nothing runs) and counts the
  gradients of the target they take, for kernels that do not report ``info.n_grad``; the
  same trace lists the LAPACK-backed primitives (:func:`lapack_ops`).
* :func:`cpu_mesh_without_lapack`: JAX's CPU LAPACK kernels (Cholesky, triangular solves,
  ...) split a batch over the process's one CPU thread pool and block until it is done.
  Several CPU devices run their shards at once on that same pool, so when as many of them as
  the pool has threads block in such a kernel, no thread is left for the work they wait on
  and the program hangs (measured: a Gaussian-process SMC on 2 CPU devices of a 2-core
  machine never returned; both pool threads sat in the Cholesky kernel's wait). CPU devices
  share the host's cores anyway, so such work runs on one CPU device instead.
* :func:`raise_if_no_likelihood`: a likelihood that is not finite at any initial particle
  (NaN data, data outside the support) is a :class:`ppl.errors.ModelError` naming the
  observed sites, as NUTS's initialisation does.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ppl.errors import ModelError
from ppl.tracing import model_name

__all__ = ["LAPACK_PRIMITIVES", "Probe", "probe_move", "lapack_ops", "cpu_mesh_without_lapack",
           "raise_if_no_likelihood"]

#: Primitives that JAX lowers to LAPACK/BLAS custom calls on CPU.
LAPACK_PRIMITIVES = frozenset({
    "cholesky", "triangular_solve", "eigh", "eig", "lu", "geqrf", "geqp3", "householder_product",
    "svd", "schur", "hessenberg", "tridiagonal", "tridiagonal_solve",
})


def _subjaxprs(value: Any):
    if hasattr(value, "eqns"):
        yield value
    elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        yield value.jaxpr
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _subjaxprs(v)


def lapack_ops(jaxpr: Any) -> set[str]:
    """Names of the LAPACK-backed primitives anywhere in ``jaxpr`` (sub-jaxprs included).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> sorted(lapack_ops(jax.make_jaxpr(jnp.linalg.cholesky)(jnp.eye(2)).jaxpr))
        ['cholesky']
    """
    found: set[str] = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in LAPACK_PRIMITIVES:
            found.add(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in _subjaxprs(value):
                found |= lapack_ops(sub)
    return found


class Probe(NamedTuple):
    """What :func:`probe_move` found."""

    init_grads: int  # gradients of the target one kernel init takes (as traced)
    step_grads: int  # gradients of the target one kernel step takes (as traced)
    lapack: frozenset  # LAPACK-backed primitives in the target, the init or the step


def probe_move(build: Callable, logprior_fn: Callable, loglikelihood_fn: Callable,
               particle: Any, key: jax.Array) -> Probe:
    """Trace one init and one step of ``build(target)`` (nothing runs): gradients and LAPACK.

    The tempered target is wrapped in a ``jax.custom_jvp`` whose rule counts every time it
    is traced: once per ``jax.grad``/``value_and_grad``/``jvp`` of the target, in the init
    and in the step. A gradient inside a loop of the kernel (e.g. a leapfrog integrator) is
    traced once: such kernels report ``info.n_grad`` or ``info.num_integration_steps``,
    which the SMC prefers to the traced count.

    Args:
        build: ``logdensity_fn -> SamplingAlgorithm`` (the step size etc. already bound).
        logprior_fn, loglikelihood_fn: the two halves of the target (``beta = 1/2`` here).
        particle: one position (a pytree without the particle axis).
        key: a ``jax.random.key`` (only traced).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from inference.mcmc import langevin
        >>> p = probe_move(lambda f: langevin.mala(f, 0.1), lambda x: -x**2, lambda x: -x**2,
        ...                jnp.zeros(()), jax.random.key(0))
        >>> p.init_grads, p.step_grads, sorted(p.lapack)
        (1, 1, [])
    """
    count = [0]

    def tempered(p):
        return logprior_fn(p) + 0.5 * loglikelihood_fn(p)

    @jax.custom_jvp
    def counted(p):
        return tempered(p)

    @counted.defjvp
    def _counted_jvp(primals, tangents):
        count[0] += 1
        return jax.jvp(tempered, primals, tangents)

    alg = build(counted)
    marks = []

    def init_and_step(p, k):
        k_init, k_step = jax.random.split(k)
        state = alg.init(p, k_init)
        marks.append(count[0])
        return alg.step(k_step, state)

    jaxpr = jax.make_jaxpr(init_and_step)(particle, key)
    return Probe(marks[0], count[0] - marks[0], frozenset(lapack_ops(jaxpr.jaxpr)))


def cpu_mesh_without_lapack(mesh: Any, ops: set, what: str, where: str) -> Any:
    """``mesh``, or None (with a warning) where several CPU devices would run LAPACK kernels.

    See the module docstring for why; ``None`` runs the work on one device: the same
    program, keys and draws as ``devices=1``.

    Example:
        >>> cpu_mesh_without_lapack(None, {"cholesky"}, "chains", "SMC") is None
        True
    """
    if mesh is None or not ops or mesh.devices.size < 2 or mesh.devices.flat[0].platform != "cpu":
        return mesh
    warnings.warn(
        f"{where}: the model or kernel uses {sorted(ops)}, which JAX computes on CPU with "
        f"LAPACK kernels that can deadlock when {mesh.devices.size} CPU devices run them at "
        f"once (they share one thread pool); the {what} run on one CPU device instead, with "
        "the same draws as devices=1. CPU devices share the host's cores, so this costs "
        "nothing; pass devices=1 (or None) to silence this warning.",
        stacklevel=4,
    )
    return None


def raise_if_no_likelihood(model: Callable, trace: dict, checks: dict, n: int) -> None:
    """A :class:`ModelError` when some chain's likelihood is not finite at any initial particle.

    ``checks`` (from the SMC program, leading axis chains): ``dead`` (no particle with a
    finite log-likelihood), and per observed site ``all_bad`` (not finite at every particle)
    and ``any_bad`` (not finite at some particle). Tempering cannot start from such a
    population (every weight is 0 or NaN). The error names the sites not finite at every
    particle (else those not finite somewhere) and the NaN count of their observed values
    (from ``trace``, the model's trace).

    Example:
        >>> import numpy as np
        >>> checks = {"dead": np.array([False]), "all_bad": {"y": np.array([False])},
        ...           "any_bad": {"y": np.array([False])}}
        >>> raise_if_no_likelihood(print, {}, checks, 100) is None
        True
    """
    dead = np.asarray(checks["dead"]).reshape(-1)
    if not dead.any():
        return None
    chain = int(np.argmax(dead))
    pick = lambda d: [s for s, v in d.items() if bool(np.asarray(v).reshape(-1)[chain])]  # noqa: E731
    bad = pick(checks["all_bad"]) or pick(checks["any_bad"])
    nan_data = []
    for name in bad:
        site = trace.get(name, {})
        value = np.asarray(site.get("value", np.zeros(())))
        if site.get("is_observed") and np.issubdtype(value.dtype, np.floating):
            count = int(np.isnan(value).sum())
            if count:
                nan_data.append(f"{name!r} ({count} of {value.size} values are NaN)")
    raise ModelError(
        f"SMC: model {model_name(model)}: the log-likelihood is not finite (NaN or -inf) at "
        f"any of the {n} prior draws of chain {chain}, so tempering cannot start. Observed "
        f"site(s) whose log-likelihood is not finite: {bad or 'none found'}"
        + (f"; observed data with NaN: {', '.join(nan_data)}" if nan_data else "")
        + ". Check those sites' observed values (NaN, or values outside the distribution's "
        "support such as a negative count or a Bernoulli outcome of 2) and parameters. If the "
        "data are valid, the prior puts almost no mass where the likelihood is positive: use "
        "a prior closer to the data or more particles."
    )
