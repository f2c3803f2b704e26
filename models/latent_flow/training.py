"""Learning: one update per minibatch, and :func:`fit` on the library's training loop."""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from inference.vi.fit import FitResult, NonFiniteError, all_finite
from inference.training import run_steps

from models.latent_flow.densities import _check_data, _check_points, _log_likelihood, _prior_draws, _prior_draws_jit
from models.latent_flow.model import LatentFlowModel, _PARTS, _as_key, _positive_float, _positive_int
from models.latent_flow.posterior import _infer


class Optimizers(NamedTuple):
    """The two optax transformations of :func:`update` and :func:`fit`: one for the
    generator's weights, one for the flow prior's (``flow_theta``).

    Example:
        >>> from models.latent_flow import init
        >>> import jax, optax
        >>> m = init(jax.random.key(0), data_dim=3, latent_dim=2, hidden=8, flow_layers=1,
        ...          flow_width=8)
        >>> opts = Optimizers(optax.adam(1e-3), optax.adam(1e-2))
        >>> len(opts.init(m))
        2
    """

    generator: optax.GradientTransformation = optax.adam(1e-3)
    prior: optax.GradientTransformation = optax.adam(1e-3)

    def init(self, model: LatentFlowModel) -> tuple[Any, Any]:
        """The optimizer state ``(generator_state, prior_state)`` for ``model``."""
        return (self.generator.init(eqx.filter(model.generator, eqx.is_inexact_array)),
                self.prior.init(model.flow_theta))


def _update(model, opt_state, x, z, optimizers):
    z = jax.lax.stop_gradient(z)
    gen_params, gen_static = eqx.partition(model.generator, eqx.is_inexact_array)

    def gen_loss(p):
        m = eqx.tree_at(lambda mm: mm.generator, model, eqx.combine(p, gen_static))
        return -jnp.mean(_log_likelihood(m, x, z))

    def prior_loss(theta):
        return -jnp.mean(jax.vmap(lambda zi: model.spec.log_prob(theta, zi))(z))

    g_val, g_grad = jax.value_and_grad(gen_loss)(gen_params)
    p_val, p_grad = jax.value_and_grad(prior_loss)(model.flow_theta)
    g_upd, g_state = optimizers.generator.update(g_grad, opt_state[0], gen_params)
    p_upd, p_state = optimizers.prior.update(p_grad, opt_state[1], model.flow_theta)
    new_gen = eqx.combine(optax.apply_updates(gen_params, g_upd), gen_static)
    new_theta = optax.apply_updates(model.flow_theta, p_upd)
    new_model = eqx.tree_at(lambda m: (m.generator, m.flow_theta), model, (new_gen, new_theta))
    info = {
        "log_likelihood": -g_val,
        "log_prior": -p_val,
        "generator_finite": jnp.isfinite(g_val) & all_finite(g_grad) & all_finite(new_gen),
        "prior_finite": jnp.isfinite(p_val) & jnp.all(jnp.isfinite(p_grad))
        & jnp.all(jnp.isfinite(new_theta)),
    }
    return new_model, (g_state, p_state), info


_update_jit = eqx.filter_jit(_update)


def update(
    model: LatentFlowModel,
    opt_state: tuple[Any, Any],
    x: jax.Array,
    z: jax.Array,
    optimizers: Optimizers = Optimizers(),
) -> tuple[LatentFlowModel, tuple[Any, Any], dict[str, jax.Array]]:
    """One learning step on fixed latents ``z`` (no gradient flows into ``z``): the
    generator steps up ``mean_i log p(x_i | z_i)`` and the prior up ``mean_i log q(z_i)``
    (maximum likelihood of the flow on ``z``), each with its own optimizer.

    Returns ``(model, opt_state, info)``; ``info`` has ``"log_likelihood"`` and
    ``"log_prior"`` (the two means before the step) and ``"generator_finite"``,
    ``"prior_finite"`` (whether each part's objective, gradient and new weights are finite;
    the step is applied regardless, :func:`fit` keeps the last finite model). Pure and
    jittable (``eqx.filter_jit``).

    Example:
        >>> from models.latent_flow import init, log_prior
        >>> import jax, jax.numpy as jnp
        >>> m = init(jax.random.key(0), data_dim=3, latent_dim=2, hidden=8, flow_layers=1,
        ...          flow_width=8)
        >>> opts = Optimizers()
        >>> z = jnp.ones((4, 2)); x = jnp.zeros((4, 3))
        >>> m2, state, info = update(m, opts.init(m), x, z, opts)
        >>> bool(log_prior(m2, z).mean() > info["log_prior"])
        True
    """
    owner = "latent_flow.update"
    x = _check_data(model, x, owner)
    z = _check_points("z", owner, z, model.latent_dim, "a batch of latents")
    if x.shape[0] != z.shape[0]:
        raise ValueError(f"{owner}: x has {x.shape[0]} rows but z has {z.shape[0]}.")
    if not isinstance(optimizers, Optimizers):
        raise ValueError(f"{owner}(optimizers={optimizers!r}): must be latent_flow.Optimizers"
                         "(generator=..., prior=...).")
    return _update_jit(model, opt_state, x, z, optimizers)


class _Config(NamedTuple):
    """What a step of :func:`fit` is specialised on."""

    static: Any  # the model's non-array part
    optimizers: Optimizers
    langevin_steps: int
    step_size: float
    steps: int
    batch: int
    persistent: bool


def _fit_step(config: _Config, state, i, key, data, guard):
    """One learning step for :func:`inference.training.run_steps`: flags ``[latents,
    generator, prior]`` (the order of ``_PARTS``)."""
    params, opt_state, bank = state
    m = eqx.combine(params, config.static)
    k_batch, k_init, k_lang = jax.random.split(jax.random.fold_in(key, i), 3)
    idx = jax.random.choice(k_batch, data.shape[0], (config.batch,), replace=False)
    xb = data[idx]
    z0 = bank[idx] if config.persistent else _prior_draws(m, k_init, config.batch)
    z = _infer(m, xb, z0, k_lang, config.langevin_steps, config.step_size)
    new_m, new_opt, info = _update(m, opt_state, xb, z, config.optimizers)
    ok = jnp.stack([jnp.all(jnp.isfinite(z)), info["generator_finite"], info["prior_finite"]])
    new_params = eqx.filter(new_m, eqx.is_inexact_array)
    new_bank = bank.at[idx].set(z) if config.persistent else bank
    return (new_params, new_opt, new_bank), (info["log_likelihood"], info["log_prior"]), ok


def fit(
    model: LatentFlowModel,
    data: jax.Array,
    key: jax.Array | int,
    steps: int = 2000,
    batch: int = 128,
    *,
    langevin_steps: int = 20,
    step_size: float = 0.01,
    persistent: bool = False,
    optimizers: Optimizers | None = None,
    updates: int = 20,
    progress: bool = False,
) -> tuple[LatentFlowModel, dict[str, jax.Array]]:
    """Learn the generator and the flow prior by alternating short-run Langevin inference
    and one :func:`update` per minibatch (see the module docstring).

    Args:
        model: the initial model (e.g. from :func:`init`).
        data: training data, shape ``(N, D)``.
        key: PRNG key or int seed; step ``i`` uses ``fold_in(key, i)``.
        steps: learning steps (minibatches).
        batch: minibatch size (rows drawn without replacement each step), ``1..N``.
        langevin_steps: ``K``, Langevin steps of the posterior inference per minibatch.
        step_size: the Langevin step ``h``.
        persistent: start each data point's chain where its last one stopped (a bank of
            ``N`` latents, first filled from the initial prior) instead of from fresh prior
            draws. More posterior-accurate latents for the same ``K``: on the 8x8 digits
            (``examples/latent_flow_digits.py``, ``K = 20``) fresh chains let the training
            ``log p(x|z)`` peak early and then fall, and gave samples ~3x further from the
            data than persistent ones. Held-out data then need longer chains (they have no
            bank): there 1000 steps from the prior.
        optimizers: :class:`Optimizers`; default Adam(1e-3) for both parts.
        updates: the run is compiled as one chunk of steps (a ``lax.scan``) called about
            this many times; between chunks the host checks for non-finite values.
        progress: show a progress bar.

    Returns:
        ``(model, history)``; ``history`` has ``"log_likelihood"`` and ``"log_prior"``, shape
        ``(steps,)``: each minibatch's mean ``log p(x|z)`` and ``log q(z)`` at its inferred
        latents, before that step's update.

    Raises:
        inference.NonFiniteError: at the first step whose latents, generator or prior update
            is not finite; ``err.leaf`` names the part (``"latents"``, ``"generator"`` or
            ``"prior"``), ``err.step`` the step, ``err.result.params`` the last finite model
            and ``err.result.values`` the history before that step.

    Example:
        >>> from models.latent_flow import init
        >>> import jax, jax.numpy as jnp
        >>> m = init(jax.random.key(0), data_dim=3, latent_dim=2, hidden=8, flow_layers=1,
        ...          flow_width=8)
        >>> x = jnp.linspace(-1, 1, 40)[:, None] * jnp.array([1.0, -1.0, 0.5])
        >>> m2, h = fit(m, x, 0, steps=200, batch=20, langevin_steps=10, step_size=0.02)
        >>> bool(h["log_likelihood"][-20:].mean() > h["log_likelihood"][:20].mean())
        True
    """
    owner = "latent_flow.fit"
    if not isinstance(model, LatentFlowModel):
        raise ValueError(f"{owner}(model={type(model).__name__}): must be a LatentFlowModel "
                         "(see latent_flow.init).")
    data = _check_data(model, data, owner, name="data")
    key = _as_key(key, owner)
    steps = _positive_int("steps", steps, owner)
    n = data.shape[0]
    batch = _positive_int("batch", batch, owner)
    if batch > n:
        raise ValueError(f"{owner}(batch={batch}): more than the {n} rows of data.")
    K = _positive_int("langevin_steps", langevin_steps, owner, allow_zero=True)
    h = _positive_float("step_size", step_size, owner)
    updates = _positive_int("updates", updates, owner)
    optimizers = Optimizers() if optimizers is None else optimizers
    if not isinstance(optimizers, Optimizers):
        raise ValueError(f"{owner}(optimizers={optimizers!r}): must be latent_flow.Optimizers"
                         "(generator=..., prior=...).")

    params, static = eqx.partition(model, eqx.is_inexact_array)
    persistent = bool(persistent)
    bank = _prior_draws_jit(model, jax.random.fold_in(key, 2**31 - 1), n) if persistent else \
        jnp.zeros((0, model.latent_dim))
    config = _Config(static, optimizers, K, h, steps, batch, persistent)
    # The one training loop (inference.training): chunked, guarded, with the bar.
    trained = run_steps(
        lambda state, i, key, data, guard: _fit_step(config, state, i, key, data, guard),
        (params, optimizers.init(model), bank), steps=steps, key=key, data=data,
        updates=updates, progress=progress, label=owner,
        postfix=lambda out: {"log p(x|z)": float(jnp.nanmean(out[0])),
                             "log q(z)": float(jnp.nanmean(out[1]))})
    fitted = eqx.combine(trained.state[0], static)
    ll, lp = trained.outputs
    if trained.stopped is None:
        return fitted, {"log_likelihood": ll, "log_prior": lp}
    bad = trained.stopped.step
    part = _PARTS[int(np.argmin(trained.stopped.ok))]  # the first part that is not finite
    history = {"log_likelihood": ll[:bad], "log_prior": lp[:bad]}
    advice = {
        "latents": "the Langevin chains diverged: lower step_size (below 2 / the curvature "
                   "of log p(z|x), about noise_sd^2 / |dg/dz|^2) or langevin_steps",
        "generator": "the generator's objective, gradient or update: lower its learning rate",
        "prior": "the flow prior's objective, gradient or update: lower its learning rate",
    }[part]
    raise NonFiniteError(
        f"{owner}: non-finite {part} at step {bad} (0-based; {bad} step(s) were applied): "
        f"{advice}. Training stopped; err.result.params holds the last finite model.",
        bad, part, FitResult(fitted, history),
    )
