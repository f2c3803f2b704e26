"""Objective programs: ``@ppl.expectation`` with ``ppl.sim`` and ``ppl.density`` inside.

An objective is a function of differentiable arguments whose value is a scalar expectation,
written with :func:`sim` (draw all choices of a program, each with its site's gradient
strategy) and :func:`density` (a program's log density at given values)::

    @ppl.expectation
    def elbo(params, x):
        z, log_q = ppl.sim(guide, params)
        return ppl.density(model, z, x) - log_q

:class:`Expectation` offers ``.estimate(key, *args)`` (an unbiased estimate of the value) and
``.grad_estimate(key, *args)`` (an unbiased estimate of its gradient, one entry per
argument, each with the argument's pytree structure). Both work under ``jax.jit`` and
``jax.vmap`` (over keys), and ``jax.vmap`` over particles inside the objective works.

Design: the objective runs under a seed handler fed by the key; :func:`sim` binds one
:data:`ppl.choice.random_choice_p` per unobserved site. For gradients, the seeded objective is
traced to a jaxpr and interpreted by the ADEV forward-mode interpreter (:mod:`ppl.adev`); the
estimator is a ``jax.custom_jvp`` whose rule is that interpreter, so ``jax.grad`` transposes
it (reverse mode) and ``jax.jvp`` uses it directly (forward mode, :meth:`Expectation.jvp_estimate`).

Random choices inside ``jax.lax.scan``, ``cond``, ``while_loop``, an inner ``jax.jit`` or
``jax.grad`` within the objective are not supported and are an error at the ``sim`` call.

Example:
    >>> import jax, numpyro, numpyro.distributions as dist, ppl
    >>> def q(theta):
    ...     numpyro.sample("z", dist.Normal(theta, 1.0))
    >>> @ppl.expectation
    ... def second_moment(theta):
    ...     values, log_q = ppl.sim(q, theta)
    ...     return values["z"] ** 2
    >>> (g,) = second_moment.grad_estimate(jax.random.key(0), 1.5)
    >>> g.shape
    ()
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from numpyro import handlers
from numpyro.primitives import Messenger

from ppl import adev
from ppl.choice import bind_choice
from ppl import jax_internals
from ppl.density import log_density
from ppl.errors import ModelError
from ppl.strategy import Reparam, resolve_strategy
from ppl.tracing import check_arguments, model_name

__all__ = ["Expectation", "expectation", "sim", "density", "ExpectationError"]


class ExpectationError(ModelError):
    """An objective program that cannot be estimated as written (the message says why)."""


def _current_trace():
    return jax_internals.current_trace()


class _Seed(Messenger):
    """Feeds keys to ``sim`` (and plates), and refuses keys requested inside control flow.

    Under ``jax.vmap`` inside the objective, every element gets its own key, so vmapped
    particles are independent even when the vmapped function ignores its argument.

    A key requested under a trace other than the objective's own (or a ``jax.vmap`` of it),
    e.g. inside a ``jax.lax.scan`` body, would leak that body's tracer into the handler, so it
    is an error that says what is supported.

    Plates: every plate of the same name gets the same key within one estimate (and within
    one element of a ``jax.vmap``), so a subsampled plate draws the same indices in the guide
    and in the model, as NumPyro's SVI replays the guide's subsample into the model.
    """

    def __init__(self, key: jax.Array):
        if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.wrap_key_data(key)
        self.key = key
        self.trace = _current_trace()
        self.plate_keys: list[tuple[str, list, jax.Array]] = []  # (name, vmap levels, key)
        super().__init__()

    def _plate_key(self, name: str) -> jax.Array:
        levels = self._vmap_levels(f"plate '{name}'")
        for known, known_levels, key in self.plate_keys:
            if known == name and len(known_levels) == len(levels) and all(
                    a is b for a, b in zip(known_levels, levels)):
                return key
        key = self._split(f"plate '{name}'")
        self.plate_keys.append((name, levels, key))
        return key

    def _vmap_levels(self, what: str) -> list:
        """The ``jax.vmap`` traces between the objective's trace and the current one, outermost
        first; anything else in between is an error."""
        levels = []
        trace = _current_trace()
        while trace is not self.trace and jax_internals.is_vmap(trace):
            levels.append(trace)
            trace = jax_internals.parent(trace)
        if trace is not self.trace:
            raise ExpectationError(
                f"{what} is inside a JAX transformation other than jax.vmap (jax.lax.scan, "
                "cond, while_loop, or an inner jax.jit / jax.grad) within the objective; random "
                "choices are supported at the objective's top level and under jax.vmap. Unroll "
                "the loop in Python or draw per-step choices with jax.vmap."
            )
        return levels[::-1]

    def _split(self, what: str) -> jax.Array:
        levels = self._vmap_levels(what)
        self.key, sub = jax.random.split(self.key)
        # Under jax.vmap, each element gets its own key: independent particles.
        for level in levels:
            sub = jax_internals.batched(level, jax.random.split(sub, jax_internals.axis_size(level)))
        return sub

    def process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"] and msg["value"] is None:
            raise ExpectationError(
                f"sample site '{msg['name']}' is drawn directly inside an expectation; draw "
                "random choices through ppl.sim(program, ...) so that they get a gradient "
                "strategy."
            )
        if msg["type"] == "control_flow":
            raise ExpectationError(
                "numpyro.contrib.control_flow (scan / cond) inside an objective is not supported: "
                "its sites are drawn inside a traced loop, out of reach of the gradient "
                "strategies. Unroll the loop in Python or draw per-step choices with jax.vmap."
            )
        if msg["type"] not in ("prng_key", "plate"):
            return
        if msg["kwargs"].get("rng_key") is not None or msg["value"] is not None:
            return
        if msg["type"] == "plate":
            msg["kwargs"]["rng_key"] = self._plate_key(msg["name"])
            return
        msg["kwargs"]["rng_key"] = self._split(
            f"site '{msg.get('name')}'" if msg["type"] != "prng_key" else "a random choice"
        )


class _Sim(Messenger):
    """Replaces every unobserved, not yet valued sample site by a random-choice primitive."""

    def process_message(self, msg):
        if msg["type"] != "sample" or msg["is_observed"] or msg["value"] is not None:
            return
        name, fn = msg["name"], msg["fn"]
        strategy = resolve_strategy(name, fn, (msg.get("infer") or {}).get("grad"))
        key = numpyro.prng_key()
        if key is None:
            raise ExpectationError(
                f"ppl.sim: site '{name}' needs a random key; call ppl.sim inside a function "
                "decorated with @ppl.expectation (or under numpyro.handlers.seed)."
            )
        sample_shape = tuple(msg["kwargs"].get("sample_shape", ()) or ())
        reparam = getattr(fn, "__ppl_reparam__", None)
        if reparam is not None and isinstance(strategy, Reparam):
            # The distribution draws noise and pushes it (a flow): the noise is the random
            # choice, and the push's intermediates score the draw without inverting it.
            noise, push = reparam()
            eps = bind_choice(key, noise, name=name, strategy=strategy, sample_shape=sample_shape)
            msg["value"], msg["intermediates"] = push(eps)
            return
        msg["value"] = bind_choice(key, fn, name=name, strategy=strategy,
                                   sample_shape=sample_shape)


def sim(program: Callable, *args: Any, **kwargs: Any) -> tuple[dict[str, jax.Array], jax.Array]:
    """Draw all unobserved choices of ``program(*args, **kwargs)``, each with its strategy.

    Returns ``(values, log_q)``: the choices' values keyed by site name, and the sum of their
    log densities (times any plate subsampling scale). Observed sites are not drawn and do
    not count in ``log_q``. Call it inside an :func:`expectation`. A reparameterised site
    whose distribution has ``__ppl_reparam__`` (a flow, :class:`inference.vi.guides.FlowDistribution`)
    is drawn as noise pushed forward and scored by that forward pass, never by inverting it.

    For an approximate program (:func:`ppl.marginal`, :func:`ppl.normalize`) ``log_q`` is an
    estimate whose exponential is reciprocal-unbiased: ``E[1 / exp(log_q) | values] =
    1 / q(values)`` (see :mod:`ppl.marginal`).

    Example:
        >>> import jax, numpyro, numpyro.distributions as dist, ppl
        >>> def q():
        ...     numpyro.sample("b", dist.Bernoulli(0.25))
        >>> @ppl.expectation
        ... def log_q_of_draw():
        ...     values, log_q = ppl.sim(q)
        ...     return log_q
        >>> round(float(jax.numpy.exp(log_q_of_draw.estimate(jax.random.key(0)))), 2) in (0.25, 0.75)
        True
    """
    custom = getattr(program, "__ppl_sim__", None)
    if custom is not None:  # approximate programs (ppl.marginal, ppl.normalize)
        return custom(*args, **kwargs)
    trace = sim_trace(program, *args, **kwargs)
    values, log_q = {}, jnp.zeros(())
    for name, site in trace.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        values[name] = site["value"]
        if site.get("intermediates"):  # a draw pushed from noise, scored by its own pass
            term = jnp.sum(site["fn"].log_prob(site["value"], site["intermediates"]))
        else:
            term = jnp.sum(site["fn"].log_prob(site["value"]))
        if site.get("scale") is not None:
            term = site["scale"] * term
        log_q = log_q + term
    return values, log_q


def sim_trace(program: Callable, *args: Any, **kwargs: Any) -> dict:
    """The NumPyro trace of ``program(*args, **kwargs)`` with its choices drawn as :func:`sim`
    draws them (internal: objectives that need per-site or per-element log densities,
    :mod:`ppl.objectives`, read them from it). Plain programs only."""
    check_arguments(program, args, kwargs)
    with _Sim():
        return handlers.trace(program).get_trace(*args, **kwargs)


def density_trace(program: Callable, values: dict[str, Any], *args: Any, **kwargs: Any) -> dict:
    """The NumPyro trace of ``program(*args, **kwargs)`` with ``values`` substituted, every
    latent site required to have one, as :func:`density` runs it (internal, plain programs)."""
    check_arguments(program, args, kwargs)
    substituted = handlers.substitute(_RequireValues(program, values, program), data=values)
    return handlers.trace(substituted).get_trace(*args, **kwargs)


class _RequireValues(Messenger):
    def __init__(self, fn, values, program):
        self.values = values
        self.program = program
        super().__init__(fn)

    def process_message(self, msg):
        if (msg["type"] == "sample" and not msg["is_observed"] and msg["value"] is None
                and msg["name"] not in self.values):
            raise ExpectationError(
                f"ppl.density: latent site '{msg['name']}' of program "
                f"{model_name(self.program)} has no value in `values` (got {sorted(self.values)}); "
                "pass a value for every latent site."
            )


def density(program: Callable, values: dict[str, Any], *args: Any, **kwargs: Any) -> jax.Array:
    """``log p(values, observed data)`` of ``program(*args, **kwargs)`` (see :func:`ppl.log_density`).

    Observed sites, ``factor`` terms and plate scales are included; every latent site needs a
    value in ``values``. For an approximate program (:func:`ppl.marginal`,
    :func:`ppl.normalize`) it is the log of an unbiased estimate of the density.

    Example:
        >>> import numpyro, numpyro.distributions as dist, ppl
        >>> def model(y=None):
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> round(float(ppl.density(model, {"mu": 0.0}, y=0.0)), 4)
        -1.8379
    """
    custom = getattr(program, "__ppl_density__", None)
    if custom is not None:  # approximate programs (ppl.marginal, ppl.normalize)
        return custom(values, *args, **kwargs)
    check_arguments(program, args, kwargs)
    return log_density(_RequireValues(program, values, program), values, *args, **kwargs)


class Expectation:
    """An objective program: a function whose value is an expectation over its random choices.

    Create with :func:`expectation`. Calling it inside another expectation inlines it.

    Called outside any JAX transformation, ``estimate``, ``grad_estimate`` and
    ``jvp_estimate`` compile themselves with ``jax.jit`` (array and float arguments traced,
    ints and other leaves static), so the objective must be a pure function of its arguments,
    as under ``jax.jit``. Inside ``jit``/``vmap`` they simply trace.
    """

    def __init__(self, fn: Callable):
        self.fn = fn
        functools.update_wrapper(self, fn)

        self._compiled: dict = {}

    def _compiled_call(self, name: str, impl: Callable, key: jax.Array, args: tuple):
        """Run ``impl(key, *args)`` compiled with ``jax.jit`` when called outside any trace.

        Array and float leaves are traced; other leaves (ints, bools, objects) are static and
        key a small per-instance table of compiled functions. Inside ``jit``/``vmap``, or with
        unhashable static leaves, ``impl`` runs as is. (Op-by-op evaluation of the ADEV
        interpreter would compile every operation separately.)
        """
        leaves, tree = jax.tree_util.tree_flatten(args)
        if any(isinstance(x, jax.core.Tracer) for x in [key, *leaves]):
            return impl(key, *args)
        dynamic = tuple(
            isinstance(x, (jax.Array, np.ndarray, float, complex)) for x in leaves
        )
        static = tuple(x for x, d in zip(leaves, dynamic) if not d)
        cache_key = (name, tree, dynamic, static)
        try:
            hash(cache_key)
        except TypeError:
            return impl(key, *args)
        fn = self._compiled.get(cache_key)
        if fn is None:

            def run(key, dyn):
                dyn_it, static_it = iter(dyn), iter(static)
                full = [next(dyn_it) if d else next(static_it) for d in dynamic]
                return impl(key, *jax.tree_util.tree_unflatten(tree, full))

            fn = self._compiled[cache_key] = jax.jit(run)
        return fn(key, [x for x, d in zip(leaves, dynamic) if d])

    def __call__(self, *args: Any) -> jax.Array:
        return self._checked(self.fn(*args))

    def _checked(self, out: Any) -> jax.Array:
        shape = jnp.shape(out) if hasattr(out, "shape") or isinstance(out, (int, float)) else None
        if shape != () or not jnp.issubdtype(jnp.result_type(out), jnp.floating):
            got = f"shape {shape}" if shape is not None else f"a {type(out).__name__}"
            raise ExpectationError(
                f"expectation {model_name(self.fn)} must return a floating-point scalar, got "
                f"{got}; reduce it (e.g. jnp.sum or jnp.mean) or return one objective."
            )
        return jnp.asarray(out)

    def estimate(self, key: jax.Array, *args: Any) -> jax.Array:
        """An unbiased estimate of the expectation's value, with randomness from ``key``.

        Example:
            >>> import jax, numpyro, numpyro.distributions as dist, ppl
            >>> @ppl.expectation
            ... def mean_z(mu):
            ...     values, _ = ppl.sim(lambda: numpyro.sample("z", dist.Normal(mu, 1.0)))
            ...     return values["z"]
            >>> jax.vmap(mean_z.estimate, (0, None))(jax.random.split(jax.random.key(0), 4), 2.0).shape
            (4,)
        """
        return self._compiled_call("estimate", self._estimate, key, args)

    def _estimate(self, key: jax.Array, *args: Any) -> jax.Array:
        with _Seed(key):
            return self._checked(self.fn(*args))

    def _estimator(self, key: jax.Array, args: tuple) -> jax.Array:
        """The estimate as a ``custom_jvp`` of the differentiable leaves of ``args``.

        Leaves that are not floating point (Python ints such as plate sizes, integer arrays,
        other objects) are closed over as constants, so they stay concrete inside the
        objective; the ADEV interpreter is the JVP rule for the floating-point leaves.
        """
        dleaves, rebuild, _ = _split_differentiable(args)

        @jax.custom_jvp
        def estimator(key, dleaves):
            return self._estimate(key, *rebuild(dleaves))

        @estimator.defjvp
        def estimator_jvp(primals, tangents):
            key, dleaves = primals
            _, tleaves = tangents
            closed = jax.make_jaxpr(lambda k, *d: self._estimate(k, *rebuild(d)))(key, *dleaves)
            return adev.jvp_jaxpr(closed, [key, *dleaves], [None, *tleaves])

        return estimator(key, dleaves)

    def jvp_estimate(self, key: jax.Array, args: tuple, tangents: tuple) -> tuple:
        """Forward mode: ``(value, directional derivative)`` estimates along ``tangents``.

        Example:
            >>> import jax, numpyro, numpyro.distributions as dist, ppl
            >>> @ppl.expectation
            ... def mean_z(mu):
            ...     values, _ = ppl.sim(lambda: numpyro.sample("z", dist.Normal(mu, 1.0)))
            ...     return values["z"]
            >>> float(mean_z.jvp_estimate(jax.random.key(0), (2.0,), (1.0,))[1])
            1.0
        """
        def impl(key, args, tangents):
            return jax.jvp(lambda *a: self._estimator(key, a), tuple(args), tuple(tangents))

        return self._compiled_call("jvp", impl, key, (tuple(args), tuple(tangents)))

    def grad_estimate(self, key: jax.Array, *args: Any) -> tuple:
        """Unbiased gradient estimates: one per argument after the key, each with its structure.

        Integer leaves get ``float0`` zeros (JAX's convention for non-differentiable leaves).

        Example:
            >>> import jax, numpyro, numpyro.distributions as dist, ppl
            >>> @ppl.expectation
            ... def mean_z(mu):
            ...     values, _ = ppl.sim(lambda: numpyro.sample("z", dist.Normal(mu, 1.0)))
            ...     return values["z"]
            >>> [float(g) for g in mean_z.grad_estimate(jax.random.key(0), 2.0)]
            [1.0]
        """
        if not args:
            return ()
        return self._compiled_call("grad", self._grad_estimate, key, args)

    def value_and_grad_estimate(self, key: jax.Array, *args: Any) -> tuple[jax.Array, tuple]:
        """``(estimate(key, *args), grad_estimate(key, *args))`` from one pass.

        The value is the primal of the gradient estimator: an unbiased estimate of the same
        expectation, equal to :meth:`estimate` with the same key when every random choice
        is drawn once (``Reparam``, plain ``Reinforce``, ``MVD``). An ``Enum`` site is summed
        over its support and a ``Reinforce(baseline="mean")`` site averages its draws, so
        there the value has less variance than :meth:`estimate`'s and differs from it. Use
        this in training loops instead of calling both.

        Example:
            >>> import jax, numpyro, numpyro.distributions as dist, ppl
            >>> @ppl.expectation
            ... def mean_z(mu):
            ...     values, _ = ppl.sim(lambda: numpyro.sample("z", dist.Normal(mu, 1.0)))
            ...     return values["z"]
            >>> value, (g,) = mean_z.value_and_grad_estimate(jax.random.key(0), 2.0)
            >>> bool(value == mean_z.estimate(jax.random.key(0), 2.0)), float(g)
            (True, 1.0)
        """
        if not args:
            return self.estimate(key), ()
        return self._compiled_call("value_and_grad", self._value_and_grad, key, args)

    def _grad_estimate(self, key: jax.Array, *args: Any) -> tuple:
        return self._value_and_grad(key, *args)[1]

    def _value_and_grad(self, key: jax.Array, *args: Any) -> tuple[jax.Array, tuple]:
        dleaves, rebuild, constant = _split_differentiable(args)
        val, grads = jax.value_and_grad(lambda d: self._estimator(key, rebuild(d)))(dleaves)
        # Non-differentiable leaves get float0 zeros, JAX's convention.
        zeros = [np.zeros(np.shape(x), jax.dtypes.float0) for x in constant]
        return val, rebuild(grads, zeros)


def _split_differentiable(args: tuple) -> tuple[list, Callable, list]:
    """Split ``args`` into its floating-point leaves and the rest (held constant).

    Returns ``(dleaves, rebuild, constant)``: ``rebuild(dleaves)`` puts the tree back
    together, and ``rebuild(dleaves, other)`` does so with ``other`` in place of the
    constant leaves.
    """
    leaves, tree = jax.tree_util.tree_flatten(args)
    mask = [_differentiable(x) for x in leaves]
    constant = [x for x, d in zip(leaves, mask) if not d]

    def rebuild(dleaves, other=None):
        it, rest = iter(dleaves), iter(constant if other is None else other)
        return jax.tree_util.tree_unflatten(tree, [next(it) if d else next(rest) for d in mask])

    return [x for x, d in zip(leaves, mask) if d], rebuild, constant


def _differentiable(x: Any) -> bool:
    """Floating-point leaves get gradients; ints, bools and other objects are constants."""
    if isinstance(x, (bool, int)) or not hasattr(x, "dtype") and not isinstance(x, (float, complex)):
        return False
    return bool(jnp.issubdtype(jnp.result_type(x), jnp.inexact))


def expectation(fn: Callable) -> Expectation:
    """Decorate an objective program; see :class:`Expectation` and the module docstring.

    Example:
        >>> import jax, numpyro, numpyro.distributions as dist, ppl
        >>> @ppl.expectation
        ... def p_one(p):
        ...     values, _ = ppl.sim(lambda: numpyro.sample("b", dist.Bernoulli(p), infer={"grad": "enum"}))
        ...     return values["b"].astype(float)
        >>> [round(float(g), 4) for g in p_one.grad_estimate(jax.random.key(0), 0.3)]
        [1.0]
    """
    return Expectation(fn)
