r"""The discrete blocks of :mod:`inference.mcmc.gibbs`: exact enumeration and discrete Metropolis.

**Enumeration, element-wise or joint.** A discrete site with batch shape (mixture
assignments ``z`` of shape ``(N,)`` under ``numpyro.plate``) is drawn *element-wise* when
its elements are conditionally independent given the other sites: for each support value
``k`` the model is evaluated once at the constant vector ``z = (k, ..., k)`` and each log
density term is attributed to the elements whose batch axes it carries (``K`` evaluations
for ``K`` support values). That is exact only if element ``i``'s part of every term depends
on ``z_i`` alone. A term can carry the plate's axis and still link elements -- ``jnp.roll``,
a ``numpyro.contrib.control_flow.scan`` over the elements (a Markov chain), a matrix
product -- so the shape of a term proves nothing.

*The coupling check* (when the kernel is built, on the model's arguments): a term is
element-local if changing some elements never changes the other elements' parts of it.
It evaluates the terms at ``R = 64`` random configurations ``z`` and at each with a random
half ``S`` of its elements moved to another support value (a fixed seed, so the decision is
reproducible), and calls a term *coupling* if some element outside ``S`` saw its part
change. A term in which element ``i`` depends on element ``j`` escapes one such test with
probability 3/4 (``j`` must be moved and ``i`` kept), so all 64 with probability
``(3/4)^64 ~ 1e-8`` whatever the number of elements -- group testing, ``2 R`` model
evaluations instead of one per element. Terms without the plate's axes that depend on the
site (``y ~ Normal(z.sum(), 1)``) are coupling by construction; terms that do not depend
on the site at all (found by tracing the jaxpr) are left out: they cancel in its
conditional.

A coupled site is enumerated *jointly*: the model is evaluated at all ``K^n``
configurations of its ``n`` elements and one is drawn from their exact conditional, as long
as ``K^n <= Enumerate.max_joint``. Beyond that, with ``Enumerate(sequential=True)``, each
element in turn is drawn from its exact conditional given all the others (single-site
Gibbs: ``n K`` model evaluations per sweep, valid for any coupling, but slower to mix when
the coupling is strong); otherwise the kernel refuses to build, naming the coupling terms
(use ``sequential=True`` or :class:`DiscreteMH`, split the site, or marginalise it).

**Discrete Metropolis.** :class:`DiscreteMH` proposes to move ``num_elements`` elements
drawn uniformly without replacement (each to a uniformly drawn other support value, or by
``+-U{1..step_size}`` on an unbounded support), ``num_steps`` times per sweep. Both the
choice of elements and each element's move are symmetric, so the acceptance probability is
``min(1, p(z') / p(z))``, and every configuration is reachable.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np

from inference.arguments import CONCRETE_ERRORS
from ppl.errors import ModelError

__all__ = ["Enumerate", "DiscreteMH"]

#: Random configurations of the coupling check (see the module docstring).
COUPLING_TESTS = 64


@dataclass(frozen=True)
class Enumerate:
    """Exact conditional draw of a discrete site with finite support, by enumerating it.

    A site with batch shape is enumerated element-wise (``K`` model evaluations) when its
    elements are conditionally independent, and jointly (``K^n`` evaluations) when some
    term couples them and ``K^n <= max_joint``; beyond that, with ``sequential=True``, one
    element at a time given the others (``n K`` evaluations), and otherwise building the
    kernel is an error that names the coupling terms (see :mod:`inference.mcmc.gibbs_discrete`).

    Example:
        >>> Enumerate(max_joint=64).max_joint
        64
    """

    max_joint: int = 1024
    sequential: bool = False

    def __post_init__(self):
        if not (isinstance(self.max_joint, int) and self.max_joint >= 1):
            raise ValueError(f"Enumerate(max_joint={self.max_joint!r}): must be a positive int "
                             "(the most configurations a joint enumeration may evaluate).")
        if not isinstance(self.sequential, bool):
            raise TypeError(f"Enumerate(sequential={self.sequential!r}): must be True or False.")


@dataclass(frozen=True)
class DiscreteMH:
    """Metropolis steps for a discrete site, with a symmetric proposal.

    Each step moves ``num_elements`` elements of the site (drawn uniformly without
    replacement; all of them if the site has fewer): with a finite support
    (``enumerate_support``, contiguous integers) each to a uniformly drawn *other* value,
    otherwise (e.g. Poisson) by ``+-U{1, ..., step_size}``; a proposal outside the support is
    rejected. ``num_steps`` steps per sweep (``None``: one per element of the site).

    Example:
        >>> DiscreteMH(num_elements=2).num_steps is None
        True
    """

    step_size: int = 1
    num_elements: int = 1
    num_steps: int | None = None

    def __post_init__(self):
        for name in ("step_size", "num_elements", "num_steps"):
            v = getattr(self, name)
            if name == "num_steps" and v is None:
                continue
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"DiscreteMH({name}={v!r}): must be a positive int.")


# ----------------------------------------------------------------------------------------
# Attribution of log density terms to a site's batch elements
# ----------------------------------------------------------------------------------------
def _check_aligned(shape: tuple, batch: tuple, site: str, other: str) -> None:
    for d, b in zip(shape, batch):
        if b != 1 and d not in (1, b):
            raise ModelError(
                f"Enumerate('{site}'): the log density of site '{other}' has shape "
                f"{shape}, which does not align with '{site}''s batch shape {batch}."
            )


def _align(term: Any, batch: tuple, site: str, other: str,
           abstract: bool = False) -> tuple[Any, bool]:
    """``term`` summed onto the batch axes ``batch`` (right-aligned, as NumPyro's plates are).

    Returns ``(aligned, shares_all_axes)``; the flag is False when ``term`` lacks some
    non-trivial axis of ``batch`` (it is then shared by several elements).
    """
    if abstract:  # shapes only
        shape = tuple(term.shape)[max(len(term.shape) - len(batch), 0):]
        shape = (1,) * (len(batch) - len(shape)) + shape
        _check_aligned(shape, batch, site, other)
        shape = tuple(1 if b == 1 else d for d, b in zip(shape, batch))
        return None, all(d == b for d, b in zip(shape, batch) if b != 1)
    term = jnp.asarray(term)
    r = len(batch)
    if term.ndim > r:
        term = jnp.sum(term, axis=tuple(range(term.ndim - r)))
    term = term.reshape((1,) * (r - term.ndim) + term.shape)
    _check_aligned(tuple(term.shape), batch, site, other)
    axes = tuple(j for j in range(r) if batch[j] == 1 and term.shape[j] != 1)
    if axes:
        term = jnp.sum(term, axis=axes, keepdims=True)
    shares = all(term.shape[j] == batch[j] for j in range(r) if batch[j] != 1)
    return jnp.broadcast_to(term, batch), shares


def _depends_on_input(fn: Callable, x: Any) -> list[bool]:
    """Which outputs of ``fn(x)`` depend on ``x`` (conservative taint through the jaxpr)."""
    closed = jax.make_jaxpr(fn)(x)
    tainted = {v for v in closed.jaxpr.invars}
    for eqn in closed.jaxpr.eqns:
        if any(isinstance(v, jcore.Var) and v in tainted for v in eqn.invars):
            tainted.update(eqn.outvars)
    return [isinstance(v, jcore.Var) and v in tainted for v in closed.jaxpr.outvars]


def _changed(new: jax.Array, old: jax.Array) -> jax.Array:
    """Elementwise: did a log density term's value change (beyond rounding)?"""
    same = (new == old) | (jnp.isnan(new) & jnp.isnan(old))
    tol = 64 * jnp.finfo(jnp.result_type(new, float)).eps * (1.0 + jnp.abs(old))
    return ~same & ~(jnp.abs(new - old) <= tol)


# ----------------------------------------------------------------------------------------
# Enumeration
# ----------------------------------------------------------------------------------------
class _Enumerator:
    """Exact conditional draw of one discrete site: element-wise, or jointly if coupled.

    ``coupling``: ``{term: reason}`` from an earlier check of the same model (the check
    needs concrete arguments; :class:`inference.mcmc.gibbs.Gibbs` runs it on the real data and
    passes the result into its compiled program); ``None`` runs the check here.
    """

    def __init__(self, m: Any, name: str, spec: Enumerate = Enumerate(),
                 coupling: dict | None = None):
        s = m.sites[name]
        self.m, self.name, self.site, self.spec = m, name, s, spec
        if not s.fn.has_enumerate_support:
            raise ValueError(
                f"Enumerate() on site '{name}' of model {m.name}: its distribution "
                f"{type(s.fn).__name__} has no finite support to enumerate (support "
                f"{s.support}). Use DiscreteMH() for it, or marginalise it out."
            )
        support = jnp.asarray(s.fn.enumerate_support(expand=False))
        self.k = int(support.shape[0])
        self.support = support.reshape((self.k,) + s.event_shape).astype(jnp.int32)
        self.batch = s.batch_shape
        self.n = int(math.prod(self.batch))
        self._find_relevant()
        self.coupling = self._find_coupling() if coupling is None else dict(coupling)
        self.joint = bool(self.coupling) and self._joint_fits()
        self.sequential = bool(self.coupling) and not self.joint
        if self.joint:
            idx = np.array(list(itertools.product(range(self.k), repeat=self.n)), np.int32)
            self.configs = self.support[jnp.asarray(idx.reshape((-1,) + self.batch))]

    def _terms(self, values: dict, z: jax.Array) -> dict:
        return self.m.site_terms({**values, self.name: z})

    def _values(self) -> dict:
        return {n: self.m.trace[n]["value"] for n in self.m.sites}

    def _find_relevant(self) -> None:
        """The terms that depend on the site (only those enter its conditional)."""
        values = self._values()
        z0 = jnp.broadcast_to(self.support[0], self.site.shape)
        self.shapes = {n: tuple(t.shape) for n, t in
                       jax.eval_shape(lambda z: self._terms(values, z), z0).items()}
        names = list(self.shapes)
        deps = _depends_on_input(lambda z: [self._terms(values, z)[n] for n in names], z0)
        # Terms that do not depend on z are constant in z and cancel in its conditional;
        # leaving them out also lets them have any shape (e.g. a vector of component means).
        self.relevant = tuple(n for n, d in zip(names, deps) if d)

    def _find_coupling(self) -> dict[str, str]:
        """``{term: why it couples the site's elements}`` (see the module docstring)."""
        if self.n <= 1 or self.k <= 1:
            return {}
        out, local = {}, []
        for t in self.relevant:
            try:
                shares = _align(jax.ShapeDtypeStruct(self.shapes[t], jnp.float32), self.batch,
                                self.name, t, abstract=True)[1]
            except ModelError:
                out[t] = f"its log density has shape {self.shapes[t]}, not aligned with {self.batch}"
                continue
            if shares:
                local.append(t)
            else:
                out[t] = f"its log density (shape {self.shapes[t]}) lacks the batch axes {self.batch}"
        if not local:
            return out
        values = self._values()
        R = COUPLING_TESTS
        k_base, k_sub, k_shift = jax.random.split(jax.random.key(0), 3)
        base = jax.random.randint(k_base, (R,) + self.batch, 0, self.k)
        moved = jax.random.bernoulli(k_sub, 0.5, (R,) + self.batch)
        shift = jax.random.randint(k_shift, (R,) + self.batch, 1, self.k)
        other = jnp.where(moved, (base + shift) % self.k, base)

        def parts(idx):
            terms = self._terms(values, self.support[idx])
            return [_align(terms[t], self.batch, self.name, t)[0] for t in local]

        def coupled(idx0, idx1, moved):
            return [jnp.any(_changed(b, a) & ~moved) for a, b in zip(parts(idx0), parts(idx1))]

        try:
            with jax.ensure_compile_time_eval():
                flags = np.asarray(jax.jit(jax.vmap(coupled))(base, other, moved)).any(axis=-1)
        except CONCRETE_ERRORS as e:
            raise ModelError(
                f"Enumerate() on site '{self.name}' of model {self.m.name}: checking whether "
                "its elements are coupled evaluates the model, which needs concrete "
                "arguments; build the Gibbs kernel outside jax.jit / jax.vmap (or use "
                "inference.Gibbs, which checks on the data it is given)."
            ) from e
        for t, f in zip(local, np.atleast_1d(flags)):
            if f:
                out[t] = ("the log density of some element changes when other elements "
                          "change (e.g. jnp.roll, scan, a matrix product)")
        return out

    def _joint_fits(self) -> bool:
        """Is a joint enumeration within ``max_joint``? If not, may it go element by element
        (``sequential=True``)? Otherwise an error naming the coupling terms."""
        size = self.k ** self.n
        if size <= self.spec.max_joint:
            return True
        if self.spec.sequential:
            return False
        reasons = "; ".join(f"'{t}': {r}" for t, r in self.coupling.items())
        raise ModelError(
            f"Enumerate() on site '{self.name}' of model {self.m.name}: site(s) "
            f"{list(self.coupling)} depend on '{self.name}' jointly across its elements "
            f"({reasons}), so its {self.n} elements (batch shape {self.batch}) are not "
            "conditionally independent and cannot be enumerated element-wise; a joint "
            f"enumeration needs {self.k}^{self.n} = {size} configurations, over "
            f"Enumerate(max_joint={self.spec.max_joint}). Use "
            "Enumerate(sequential=True) (each element drawn exactly given the others, "
            f"{self.n} x {self.k} model evaluations per sweep) or DiscreteMH() for "
            f"'{self.name}', give each element its own site, marginalise it, or raise "
            "max_joint."
        )

    def logits(self, values: dict) -> jax.Array:
        """Element-wise: ``(K, *batch)``, each element's conditional log probability per
        support value. Joint: ``(K^n,)``, one per configuration (``self.configs``)."""
        if self.joint:
            return jax.vmap(lambda z: self._total(values, z))(self.configs)

        def one(value):
            z = jnp.broadcast_to(value, self.site.shape)
            total = jnp.zeros(self.batch)
            terms = self._terms(values, z)
            for other in self.relevant:
                total = total + _align(terms[other], self.batch, self.name, other)[0]
            return total

        return jax.vmap(one)(self.support)

    def _total(self, values: dict, z: jax.Array) -> jax.Array:
        terms = self._terms(values, z)
        return sum((jnp.sum(terms[t]) for t in self.relevant), jnp.zeros((), jnp.result_type(float)))

    def _draw_sequential(self, key: jax.Array, values: dict) -> jax.Array:
        """Each element in turn from its exact conditional given the others."""
        event = self.site.event_shape
        shape = self.site.shape

        def body(i, z):
            flat = z.reshape((self.n,) + event)
            cands = jax.vmap(lambda v: flat.at[i].set(v).reshape(shape))(self.support)
            logits = jax.vmap(lambda c: self._total(values, c))(cands)
            logits = jnp.where(jnp.isnan(logits), -jnp.inf, logits)
            return cands[jax.random.categorical(jax.random.fold_in(key, i), logits)]

        z0 = jnp.asarray(values[self.name]).astype(self.support.dtype)
        return jax.lax.fori_loop(0, self.n, body, z0)

    def draw(self, key: jax.Array, values: dict) -> jax.Array:
        if self.sequential:
            return self._draw_sequential(key, values)
        logits = self.logits(values)
        logits = jnp.where(jnp.isnan(logits), -jnp.inf, logits)
        idx = jax.random.categorical(key, logits, axis=0)
        return self.configs[idx] if self.joint else self.support[idx]


# ----------------------------------------------------------------------------------------
# Discrete Metropolis
# ----------------------------------------------------------------------------------------
class _DiscreteMH:
    """Metropolis steps for one discrete site, ``num_elements`` random elements at a time."""

    def __init__(self, m: Any, name: str, spec: DiscreteMH):
        s = m.sites[name]
        self.m, self.name, self.site, self.spec = m, name, s, spec
        if s.event_shape:
            raise ValueError(f"DiscreteMH() on site '{name}': event-shaped discrete "
                             f"distributions ({type(s.fn).__name__}) are not supported; use Enumerate().")
        self.finite = bool(s.fn.has_enumerate_support)
        if self.finite:
            with jax.ensure_compile_time_eval():  # concrete while a program is traced
                support = jnp.asarray(s.fn.enumerate_support(expand=False)).reshape(-1)
                self.low, self.k = int(support[0]), int(support.shape[0])
        self.size = int(math.prod(s.shape))
        self.num_elements = min(spec.num_elements, self.size)
        self.num_steps = self.size if spec.num_steps is None else spec.num_steps

    def _propose(self, key: jax.Array, z: jax.Array) -> jax.Array:
        k_sub, k_prop, k_dir = jax.random.split(key, 3)
        if self.finite:
            shift = jax.random.randint(k_prop, z.shape, 1, max(self.k, 2))
            new = self.low + (z - self.low + shift) % self.k if self.k > 1 else z
        else:
            size = jax.random.randint(k_prop, z.shape, 1, self.spec.step_size + 1)
            sign = jnp.where(jax.random.bernoulli(k_dir, 0.5, z.shape), 1, -1)
            new = z + sign * size
        if self.num_elements < self.size:
            chosen = jax.random.choice(k_sub, self.size, (self.num_elements,), replace=False)
            mask = jnp.zeros(self.size, bool).at[chosen].set(True).reshape(z.shape)
            new = jnp.where(mask, new, z)
        return new.astype(z.dtype)

    def step(self, key: jax.Array, position: dict, logdensity: jax.Array):
        """``num_steps`` Metropolis steps: ``(value, logdensity, mean acceptance probability)``."""

        def one(carry, key):
            z, lp = carry
            k_prop, k_acc = jax.random.split(key)
            new = self._propose(k_prop, z)
            inside = jnp.all(self.site.support(new))
            lp_new = jnp.where(inside, self.m.log_joint({**position, self.name: new}), -jnp.inf)
            lp_new = jnp.where(jnp.isnan(lp_new), -jnp.inf, lp_new)
            log_ratio = lp_new - lp
            rate = jnp.exp(jnp.minimum(log_ratio, 0.0))
            accept = jnp.log(jax.random.uniform(k_acc)) < log_ratio
            return ((jnp.where(accept, new, z), jnp.where(accept, lp_new, lp)),
                    rate.astype(jnp.result_type(float)))

        (z, lp), rates = jax.lax.scan(one, (position[self.name], logdensity),
                                      jax.random.split(key, self.num_steps))
        return z, lp, jnp.mean(rates)
