"""Langevin kernels behind ``inference.infer``: one argument switches a model to them.

``infer(model, ..., method=MALA())`` (or ``ULA()``, ``Underdamped(adjusted=True)``,
``RandomizedMidpoint()``, ``SGLD(batch_size=...)``, ``SGHMC(...)``) runs the kernels of
:mod:`inference.langevin` over the model's unconstrained space, chains ``vmap``-ped in one
compiled program, and returns the same :class:`inference.Result` as NUTS.

Warmup. With ``step_size=None`` (the default) each chain first climbs ``find_mode`` L-BFGS
steps from its initial point (0 turns it off; see ``_towards_mode`` for why these kernels
need it and NUTS does not), then is tuned by
:func:`inference.langevin.adapt` over ``num_warmup`` steps: adjusted kernels (MALA, OBABO)
by Stan's windowed dual averaging to ``target_accept_prob`` with a diagonal (or dense)
mass matrix; unadjusted ones (ULA, BAOAB, randomized midpoint, SGLD, SGHMC) by the same
warmup with MALA for the mass matrix, then a step size from the bias rule
``tolerance`` (the stationary variance of a Gaussian is off by at most that relative
amount; see :mod:`inference.mcmc.adaptation`). With a ``step_size`` given, warmup steps are
plain burn-in with that step size (and ``inverse_mass_matrix`` if given).

Degenerate modes. The mode of a hierarchical model is often degenerate: the centred
funnel's is at ``y = -40.5`` where the ``x`` have scale ``e^-20``, and the baseball
model's concentration ``kappa`` climbs without bound. A chain warmed up there tunes a
collapsed step size and freezes (while its acceptance rate looks fine). So a chain whose
tuned step size (that of the MALA warmup, for unadjusted kernels) comes out below
``0.01 d^{-1/3}`` (:mod:`inference.methods.warmup_checks`; MALA's optimal step is ``~1.4 d^{-1/3}``)
is warmed up again from its initial point without the climb (``tuning["warmup_restarted"]``,
and a :class:`inference.methods.warmup_checks.WarmupWarning`). After the run, a chain still
collapsed, or one whose draws of a site never change (a start in a funnel's neck shrinks
the mass matrix with the chain, hiding the collapse from the step size), gets a
``WarmupWarning`` naming the sites that barely move and where they sit.

Draws. ``thinning`` kernel steps per kept draw (stats summed or averaged over them). The
sampler statistics use ArviZ's names: ``lp``, ``acceptance_rate`` (adjusted kernels),
``diverging`` and ``energy`` (OBABO), ``step_size``, and ``n_grad`` -- the gradient
evaluations behind each kept draw, so ESS per gradient compares kernels fairly. Warmup's
gradients are in ``tuning["warmup_n_grad"]`` (per chain, named like NUTS's
``warmup_divergences``): the L-BFGS climb (its first gradient and one per line-search step),
every warmup transition, the step-size searches, the curvature estimates of unadjusted
kernels (a Hessian-vector product counts as two gradients), the initial states, and a
restarted warmup's both runs. A run's total is ``tuning["warmup_n_grad"].sum() +
stats["n_grad"].sum()``; ``warmup_n_grad`` also holds the search for initial points (one
gradient per candidate tried, :mod:`inference.initialization`). Counts are per chain as if it ran alone; chains batched with
``vmap`` can evaluate more (a batched conditional evaluates both branches, e.g. in
L-BFGS's line search).

Stochastic gradients. ``SGLD`` and ``SGHMC`` use the model's own subsampled plate,
``numpyro.plate("data", N, subsample_size=B)`` with the data indexed by the plate's indices
(NumPyro's idiom): each step draws a fresh minibatch, and NumPyro's ``N / B`` scaling makes
the gradient unbiased. ``batch_size`` resizes the minibatch without editing the model. Their
warmup tunes on one fixed minibatch. They report no ``lp`` (they never evaluate the full
density).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import jax
import jax.flatten_util
import jax.numpy as jnp
import optax

from inference.mcmc import langevin
from inference.arguments import check_number
from inference.methods import warmup_checks
from inference.chains import Sampler
from inference.method import ChainMethod, Outputs, Request
from ppl.potential import potential as make_potential
from ppl.potential import potential_from_trace

__all__ = ["ULA", "MALA", "Underdamped", "RandomizedMidpoint", "SGLD", "SGHMC"]


def _positive(owner: str, name: str, value: Any, allow_none: bool = True) -> None:
    if not (value is None and allow_none):
        check_number(owner, name, value)


@dataclass(frozen=True)
class _LangevinMethod(ChainMethod):
    """Fields and the ``sampler`` shared by every Langevin method (see the module docstring)."""

    step_size: float | None = None
    inverse_mass_matrix: Any = None
    dense_mass: bool = False
    thinning: int = 1
    find_mode: int = 100

    #: SGLD / SGHMC: ``sampler`` receives ``logdensity_estimate(position, key)``.
    stochastic_gradients: ClassVar[bool] = False

    def __post_init__(self):
        owner = type(self).__name__
        _positive(owner, "step_size", self.step_size)
        if not (isinstance(self.find_mode, int) and self.find_mode >= 0):
            raise ValueError(f"{owner}(find_mode={self.find_mode!r}): must be a non-negative int "
                             "(L-BFGS steps before warmup; 0 turns it off).")
        if not (isinstance(self.thinning, int) and self.thinning >= 1):
            raise ValueError(f"{owner}(thinning={self.thinning!r}): must be a positive int.")
        if self.inverse_mass_matrix is not None and self.step_size is None:
            raise ValueError(
                f"{owner}(inverse_mass_matrix=...) is used with a fixed step_size; with "
                "step_size=None warmup estimates the mass matrix itself (dense_mass=True for "
                "a dense one)."
            )
        self._check()

    def _check(self) -> None:
        """Checks of the subclass's own fields."""

    # What a subclass says about its kernel.
    def tuned_as(self) -> Callable:
        """The kernel factory that :func:`inference.langevin.adapt` tunes (its rule applies)."""
        return self.factory()

    def tune_kernel_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``tuned_as()`` passed through ``adapt``."""
        return self.kernel_kwargs()

    def limit_step_size(self, step_size: jax.Array) -> jax.Array:
        """The tuned step size, capped where the kernel needs it."""
        return step_size

    @abc.abstractmethod
    def factory(self) -> Callable:
        """The kernel factory of :mod:`inference.langevin` (``f(logdensity_fn, step_size, ...)``)."""

    def kernel_kwargs(self) -> dict[str, Any]:
        """Fixed keyword arguments of the kernel (e.g. ``friction``)."""
        return {}

    def tune_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`inference.langevin.adapt` (target or tolerance)."""
        return {}

    def kernel(self, logdensity_fn: Callable, step_size: Any, inverse_mass_matrix: Any = None):
        """The kernel with the given tuning, as a BlackJAX ``SamplingAlgorithm``."""
        return self.factory()(logdensity_fn, step_size=step_size,
                              inverse_mass_matrix=inverse_mass_matrix, **self.kernel_kwargs())

    def draw(self, model: Callable, args: tuple, kwargs: dict, request: Request) -> Outputs:
        """:meth:`ChainMethod.draw`, then the warmup checks: a :class:`WarmupWarning` names
        chains whose warmup was restarted without the L-BFGS climb, and chains whose tuned
        step size collapsed or whose draws never change (:mod:`inference.methods.warmup_checks`)."""
        out = super().draw(model, args, kwargs, request)
        if self.step_size is None:
            samples, _, tuning, _ = out
            name, trace = type(self).__name__, request.trace

            def sites() -> dict:
                pot = (make_potential(model, *args, **kwargs) if trace is None
                       else potential_from_trace(model, tuple(args), dict(kwargs), trace))
                return dict(pot.sites)

            warmup_checks.warn_restarted(name, tuning, self.find_mode, stacklevel=5)
            warmup_checks.warn_collapsed(name, tuning, samples, sites, stacklevel=5)
        return out

    def sampler(self, logdensity_fn: Callable, num_warmup: int, num_samples: int) -> Sampler:
        """The chains as a :class:`inference.chains.Sampler`: warmup inside ``init``, then
        ``num_samples`` kept draws of ``thinning`` kernel steps each."""
        name = type(self).__name__
        if self.step_size is None and num_warmup == 0:
            raise ValueError(
                f"{name}(step_size=None) tunes its step size during warmup, but num_warmup=0: "
                f"give {name}(step_size=...) or num_warmup > 0."
            )
        return _sampler(self, logdensity_fn, num_warmup, num_samples)


def _towards_mode(logdensity_fn: Callable, position: Any, num_steps: int) -> tuple[Any, jax.Array]:
    """``num_steps`` of L-BFGS ascent on the log density from ``position`` (a warmup start).

    A chain started in the far tails sees gradients of size ~1e8 (e.g. a regression with a
    tiny initial noise scale), so a one-gradient-per-step kernel must begin with a tiny
    step size, barely moves, and the first mass-matrix window estimates a near-zero
    variance from which warmup never recovers; and a chain started near a minor local mode
    (a mixture) stays there. NUTS escapes by doubling its trajectory; these kernels start
    their warmup near a mode instead. The ascent is kept only where it improved the log
    density and stayed finite. A mode can also be degenerate (a hierarchical model's);
    ``_sampler`` then warms up again without the climb.

    Returns the new position and the gradient evaluations made: one at the start, then one
    per step of each iteration's zoom line search (each iteration starts from the value and
    gradient its line search accepted, so none is evaluated twice).
    """
    flat, unravel = jax.flatten_util.ravel_pytree(position)
    f = lambda x: -logdensity_fn(unravel(x))  # noqa: E731
    opt = optax.lbfgs()

    def step(carry, _):
        x, state, value, grad, n = carry
        updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=f)
        searched = optax.tree_utils.tree_get(state, "num_linesearch_steps")
        value = optax.tree_utils.tree_get(state, "value")  # at the accepted step
        grad = optax.tree_utils.tree_get(state, "grad")
        n = n + jnp.asarray(searched, jnp.int32)
        return (optax.apply_updates(x, updates), state, value, grad, n), None

    f0, g0 = jax.value_and_grad(f)(flat)
    carry = (flat, opt.init(flat), f0, g0, jnp.ones((), jnp.int32))
    (x, _, f1, _, n), _ = jax.lax.scan(step, carry, None, length=num_steps)
    ok = jnp.isfinite(f1) & (f1 <= f0) & jnp.all(jnp.isfinite(x))
    return unravel(jnp.where(ok, x, flat)), n


def _sampler(method, logdensity_fn, W, S) -> Sampler:
    """Warm up every chain in ``init``; each loop step is one kept draw of ``thinning`` steps."""
    thin = method.thinning
    if method.stochastic_gradients:
        kernel_logdensity = logdensity_fn  # (position, key) -> unbiased log density estimate
        fixed = jax.random.key(0)
        exact = lambda x: kernel_logdensity(x, fixed)  # noqa: E731  (one minibatch, for warmup)
    else:
        exact = kernel_logdensity = logdensity_fn

    def warm(key, position, climb):
        """One chain's warmup: ``(state, step_size, imm, diagnostics)``; ``diagnostics``
        holds ``warmup_n_grad`` (every gradient it evaluated) and, for an unadjusted kernel,
        ``warmup_step_size``: the step size of the MALA warmup that tuned it."""
        k_tune, k_init = jax.random.split(key)
        if method.step_size is not None:  # burn-in with the given tuning
            step_size = jnp.asarray(method.step_size, jnp.result_type(float))
            imm = method.inverse_mass_matrix
            alg = method.kernel(kernel_logdensity, step_size, imm)

            def burn(carry, k):
                state, n = carry
                state, info = alg.step(k, state)
                return (state, n + jnp.asarray(info.n_grad, jnp.int32)), None

            state = alg.init(position, k_init)  # one gradient
            (state, n), _ = jax.lax.scan(burn, (state, jnp.ones((), jnp.int32)),
                                         jax.random.split(k_tune, W))
            return state, step_size, imm, {"warmup_n_grad": n}
        n = jnp.zeros((), jnp.int32)
        if climb:
            position, n = _towards_mode(exact, position, method.find_mode)
        state, params = langevin.adapt(
            method.tuned_as(), exact, position, k_tune, W, dense_mass=method.dense_mass,
            **method.tune_kwargs(), **method.tune_kernel_kwargs())
        step_size = method.limit_step_size(params["step_size"])
        imm = params["inverse_mass_matrix"]
        diagnostics = {k: v for k, v in params.items() if k.startswith("warmup_")}
        if "warmup_mala_step_size" in diagnostics:  # unadjusted: the MALA warmup's step size
            diagnostics["warmup_step_size"] = diagnostics.pop("warmup_mala_step_size")
        # Restart the tuned kernel where warmup ended (drawing a momentum if it has one):
        # one more gradient.
        state = method.kernel(kernel_logdensity, step_size, imm).init(state.position, k_init)
        diagnostics["warmup_n_grad"] = n + params["warmup_n_grad"] + 1
        return state, step_size, imm, diagnostics

    def one_step(key, state, step_size, imm):
        alg = method.kernel(kernel_logdensity, step_size, imm)

        def inner(carry, k):
            state, n_grad, acc, div = carry
            state, info = alg.step(k, state)
            acc = acc + getattr(info, "acceptance_rate", 0.0)
            div = div | getattr(info, "is_divergent", False)
            return (state, n_grad + info.n_grad, acc, div), getattr(info, "energy", None)

        carry0 = (state, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.result_type(float)),
                  jnp.zeros((), bool))
        (state, n_grad, acc, div), energy = jax.lax.scan(inner, carry0, jax.random.split(key, thin))
        stats = {"n_grad": n_grad, "step_size": jnp.asarray(step_size)}
        if hasattr(state, "logdensity"):
            stats["lp"] = state.logdensity
        if method.adjusted:
            stats["acceptance_rate"] = acc / thin
        if energy is not None:
            stats["energy"] = energy[-1]
            stats["diverging"] = div
        return state, stats

    vstep = jax.vmap(one_step)

    def init(key, positions):
        num_chains = jax.tree.leaves(positions)[0].shape[0]
        keys = jax.random.split(key, num_chains)
        climb = method.step_size is None and method.find_mode > 0
        out = jax.vmap(lambda k, x: warm(k, x, climb))(keys, positions)
        if not climb:
            return out
        # A chain whose climb ended in a degenerate mode (a funnel's neck, a concentration
        # going to infinity) tunes a collapsed step size and freezes there: warm it up again
        # from its initial point without the climb. The second warmup runs only when some
        # chain needs it (the predicate is one scalar), and replaces only those chains.
        dim = jax.flatten_util.ravel_pytree(jax.tree.map(lambda x: x[0], positions))[0].size
        bad = warmup_checks.collapsed_chains(out[3].get("warmup_step_size", out[1]), dim)

        def again(out):
            new = jax.vmap(lambda k, x: warm(k, x, False))(keys, positions)
            # Both warmups are this chain's cost.
            new[3]["warmup_n_grad"] = new[3]["warmup_n_grad"] + out[3]["warmup_n_grad"]
            pick = lambda a, b: jnp.where(  # noqa: E731
                bad.reshape((-1,) + (1,) * (jnp.ndim(a) - 1)), a, b)
            return jax.tree.map(pick, new, out)

        out = jax.lax.cond(jnp.any(bad), again, lambda o: o, out)
        out[3]["warmup_restarted"] = bad
        return out

    def step(carry, t, key):
        state, step_size, imm, diag = carry
        keys = jax.random.split(key, jax.tree.leaves(state.position)[0].shape[0])
        state, stats = vstep(keys, state, step_size, imm)
        return (state, step_size, imm, diag), state.position, stats

    def tuning(carry):
        _, step_size, imm, diag = carry
        out = {"step_size": step_size, "inverse_mass_matrix": imm, **diag}
        return {k: v for k, v in out.items() if v is not None}

    def postfix(carry):
        return {"step size": jnp.mean(carry[1])}

    return Sampler(init, step, loop_warmup=0, num_steps=S, tuning=tuning, postfix=postfix,
                   init_warmup=W)


# ----------------------------------------------------------------------------------------
# The methods
# ----------------------------------------------------------------------------------------
def _check_tolerance(owner: str, tolerance: float) -> None:
    if not (isinstance(tolerance, (int, float)) and 0.0 < tolerance < 1.0):
        raise ValueError(f"{owner}(tolerance={tolerance!r}): must be in (0, 1).")


def _check_target(owner: str, target: float | None) -> None:
    if target is not None and not (isinstance(target, (int, float)) and 0.0 < target < 1.0):
        raise ValueError(f"{owner}(target_accept_prob={target!r}): must be in (0, 1).")


@dataclass(frozen=True)
class ULA(_LangevinMethod):
    """Unadjusted Langevin (:func:`inference.langevin.ula`) as an ``infer`` method.

    Biased: with ``step_size=None`` the step size is set so that a Gaussian's stationary
    variance is off by at most ``tolerance`` (relative) in every direction.

    Example:
        >>> import numpyro.distributions as dist, ppl, inference
        >>> def model():
        ...     ppl.sample("x", dist.Normal(0.0, 1.0))
        >>> r = inference.infer(model, method=inference.ULA(step_size=0.1), num_samples=200,
        ...                     num_warmup=200, num_chains=2, progress=False)
        >>> r.samples["x"].shape, int(r.stats["n_grad"][0, 0])
        ((2, 200), 1)
    """

    tolerance: float = 0.05
    adjusted: ClassVar[bool] = False

    def _check(self):
        _check_tolerance("ULA", self.tolerance)

    def factory(self):
        return langevin.ula

    def tune_kwargs(self):
        return {"tolerance": self.tolerance}


@dataclass(frozen=True)
class MALA(_LangevinMethod):
    """Metropolis-adjusted Langevin (:func:`inference.langevin.mala`) as an ``infer`` method.

    Exact. Warmup: dual averaging of the step size to ``target_accept_prob`` (0.574, the
    optimal rate in high dimension) and a diagonal (``dense_mass=True``: dense) mass matrix.

    Example:
        >>> import numpyro.distributions as dist, ppl, inference
        >>> def model():
        ...     ppl.sample("x", dist.Normal(0.0, 1.0))
        >>> r = inference.infer(model, method=inference.MALA(), num_samples=200,
        ...                     num_warmup=200, num_chains=2, progress=False)
        >>> sorted(r.stats)
        ['acceptance_rate', 'lp', 'n_grad', 'step_size']
    """

    target_accept_prob: float = 0.574
    adjusted: ClassVar[bool] = True

    def _check(self):
        _check_target("MALA", self.target_accept_prob)

    def factory(self):
        return langevin.mala

    def tune_kwargs(self):
        return {"target": self.target_accept_prob}


@dataclass(frozen=True)
class Underdamped(_LangevinMethod):
    """Kinetic Langevin as an ``infer`` method: BAOAB, or OBABO with ``adjusted=True``.

    ``friction`` is ``gamma`` in units of the preconditioned time (after warmup's mass
    matrix, the target has roughly unit scale). Unadjusted (BAOAB): biased, step size from
    the ``tolerance`` rule; adjusted (OBABO, generalized HMC with ``num_integration_steps``
    leapfrog steps per step): exact, dual averaging to ``target_accept_prob`` (0.75).

    Example:
        >>> import numpyro.distributions as dist, ppl, inference
        >>> def model():
        ...     ppl.sample("x", dist.Normal(0.0, 1.0))
        >>> r = inference.infer(model, method=inference.Underdamped(adjusted=True),
        ...                     num_samples=200, num_warmup=200, num_chains=2, progress=False)
        >>> "diverging" in r.stats and "acceptance_rate" in r.stats
        True
    """

    friction: float = 1.0
    adjusted: bool = False
    num_integration_steps: int = 1
    target_accept_prob: float = 0.75
    tolerance: float = 0.05

    def _check(self):
        _positive("Underdamped", "friction", self.friction, allow_none=False)
        _check_target("Underdamped", self.target_accept_prob)
        _check_tolerance("Underdamped", self.tolerance)
        if not (isinstance(self.num_integration_steps, int) and self.num_integration_steps >= 1):
            raise ValueError(f"Underdamped(num_integration_steps={self.num_integration_steps!r}): "
                             "must be a positive int.")
        if self.num_integration_steps != 1 and not self.adjusted:
            raise ValueError("Underdamped(num_integration_steps=...) applies to adjusted=True "
                             "(OBABO) only; BAOAB takes one gradient per step.")

    def factory(self):
        return langevin.obabo if self.adjusted else langevin.underdamped

    def kernel_kwargs(self):
        kw = {"friction": self.friction}
        if self.adjusted:
            kw["num_integration_steps"] = self.num_integration_steps
        return kw

    def tune_kwargs(self):
        return {"target": self.target_accept_prob} if self.adjusted else {"tolerance": self.tolerance}


@dataclass(frozen=True)
class RandomizedMidpoint(_LangevinMethod):
    """The randomized midpoint kinetic Langevin kernel (Shen & Lee 2019) as an ``infer`` method.

    Biased (no accept step); two gradients per step; step size from the ``tolerance`` rule.

    Example:
        >>> import numpyro.distributions as dist, ppl, inference
        >>> def model():
        ...     ppl.sample("x", dist.Normal(0.0, 1.0))
        >>> r = inference.infer(model, method=inference.RandomizedMidpoint(step_size=0.3),
        ...                     num_samples=100,
        ...                     num_warmup=200, num_chains=2, progress=False)
        >>> int(r.stats["n_grad"][0, 0])
        2
    """

    friction: float = 1.0
    tolerance: float = 0.05
    adjusted: ClassVar[bool] = False

    def _check(self):
        _positive("RandomizedMidpoint", "friction", self.friction, allow_none=False)
        _check_tolerance("RandomizedMidpoint", self.tolerance)

    def factory(self):
        return langevin.randomized_midpoint

    def kernel_kwargs(self):
        return {"friction": self.friction}

    def tune_kwargs(self):
        return {"tolerance": self.tolerance}


def _grad_estimator(logdensity_estimate: Callable) -> Callable:
    grad = jax.grad(logdensity_estimate)
    return lambda position, key: grad(position, key)


@dataclass(frozen=True)
class _StochasticGradientMethod(_LangevinMethod):
    batch_size: int | None = None
    tolerance: float = 0.05
    stochastic_gradients: ClassVar[bool] = True
    adjusted: ClassVar[bool] = False

    def _check(self):
        owner = type(self).__name__
        _check_tolerance(owner, self.tolerance)
        if self.batch_size is not None and not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ValueError(f"{owner}(batch_size={self.batch_size!r}): must be a positive int.")
        if self.dense_mass:
            raise ValueError(f"{owner}(dense_mass=True): stochastic-gradient kernels take a "
                             "diagonal inverse mass matrix only.")

    def tune_kwargs(self):
        return {"tolerance": self.tolerance}


@dataclass(frozen=True)
class SGLD(_StochasticGradientMethod):
    """Stochastic-gradient Langevin dynamics (Welling & Teh 2011) on a model's subsampled plate.

    The model declares ``numpyro.plate("data", N, subsample_size=B)`` and indexes its data
    with the plate's indices; ``batch_size`` (if given) replaces ``B``. Each step draws a
    fresh minibatch. Warmup (``step_size=None``) tunes a diagonal mass matrix and the ULA
    ``tolerance`` step size on one fixed minibatch; the minibatch noise adds its own bias
    on top (see :func:`inference.langevin.sgld`).

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, inference
        >>> def model(y):
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     with numpyro.plate("data", y.shape[0], subsample_size=20) as idx:
        ...         numpyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])
        >>> y = 1.0 + jax.random.normal(jax.random.key(0), (200,))
        >>> r = inference.infer(model, y, method=inference.SGLD(batch_size=50, step_size=1e-3),
        ...                     num_samples=300, num_warmup=300, num_chains=2, progress=False)
        >>> abs(float(r.samples["mu"].mean()) - float(y.mean())) < 0.3
        True
    """

    def tuned_as(self):
        return langevin.ula

    def factory(self):
        def make(logdensity_estimate, step_size, inverse_mass_matrix=None):
            return langevin.sgld(_grad_estimator(logdensity_estimate), step_size, inverse_mass_matrix)

        return make


@dataclass(frozen=True)
class SGHMC(_StochasticGradientMethod):
    """Stochastic-gradient HMC (Chen, Fox & Guestrin 2014) on a model's subsampled plate.

    As :class:`SGLD`, with momentum and ``friction`` (``friction * step_size < 1``).
    Warmup tunes the step size by the BAOAB ``tolerance`` rule (the analogous kinetic
    rule) on one fixed minibatch, capped so that ``friction * step_size <= 0.5``.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, inference
        >>> def model(y):
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     with numpyro.plate("data", y.shape[0], subsample_size=50) as idx:
        ...         numpyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])
        >>> y = 1.0 + jax.random.normal(jax.random.key(0), (200,))
        >>> r = inference.infer(model, y, method=inference.SGHMC(step_size=1e-3), num_samples=300,
        ...                     num_warmup=300, num_chains=2, progress=False)
        >>> r.samples["mu"].shape
        (2, 300)
    """

    friction: float = 1.0

    def _check(self):
        super()._check()
        _positive("SGHMC", "friction", self.friction, allow_none=False)

    def tuned_as(self):
        return langevin.underdamped

    def tune_kernel_kwargs(self):
        return {"friction": self.friction}

    def limit_step_size(self, step_size):
        return jnp.minimum(step_size, 0.5 / self.friction)

    def factory(self):
        friction = self.friction

        def make(logdensity_estimate, step_size, inverse_mass_matrix=None):
            return langevin.sghmc(_grad_estimator(logdensity_estimate), step_size, friction,
                                  inverse_mass_matrix)

        return make
