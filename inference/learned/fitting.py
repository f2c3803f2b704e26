"""Fitting a proposal to draws: a normalizing flow by maximum likelihood, a flow-matching
field by flow matching, or reading back the flow of a VI fit."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from inference import flow_matching as fm
from inference.training import leaf_flags, non_finite_error, run_steps
from inference.flows import FlowSpec, check_kind
from inference.learned.checks import _STANDARDIZE, _check_optimizer, _positive_int
from inference.learned.draws import _as_points
from inference.learned.flow import Flow
from inference.learned.flow_matching_sampler import FlowMatchingSampler
from inference.learned.whitening import _affine_parts, _whitening
from ppl.potential import potential as make_potential

__all__ = ["FittedFlow", "FittedFlowMatching", "fit_flow_to_draws",
           "fit_flow_matching_to_draws", "flow_from_vi"]


class FittedFlow(NamedTuple):
    """What :func:`fit_flow_to_draws` returns.

    Attributes:
        flow: the fitted :class:`Flow` (the weights with the lowest held-out negative
            log-likelihood when draws were held out; the last ones otherwise).
        losses: per-step training loss (mean negative log-likelihood of each minibatch, on
            the whitened scale), shape ``(steps,)``.
        val_losses: held-out negative log-likelihood at each evaluation (every
            ``steps // 50`` steps), or ``None`` without held-out draws.
        best_step: the number of steps behind ``flow`` (0: the whitening alone was best).
    """

    flow: Flow
    losses: jax.Array
    val_losses: jax.Array | None = None
    best_step: int = 0


class FittedFlowMatching(NamedTuple):
    """What :func:`fit_flow_matching_to_draws` returns: the :class:`FlowMatchingSampler`
    and the per-step flow-matching losses."""

    flow: FlowMatchingSampler
    losses: jax.Array


def fit_flow_to_draws(
    draws: Any,
    flow: str | FlowSpec | Flow = "spline_coupling",
    *,
    key: jax.Array | int = 0,
    steps: int = 2000,
    batch_size: int = 256,
    optimizer: optax.GradientTransformation | None = None,
    standardize: str | None = "full",
    flow_options: dict | None = None,
    validation: float = 0.1,
    progress: bool = False,
    on_interrupt: str = "warn",
) -> FittedFlow:
    """Fit a normalizing flow to draws by maximum likelihood (minibatch Adam on ``-log q``).

    Args:
        draws: points ``(n, D)`` (or ``(chains, draws, D)``), e.g. :func:`unconstrained_draws`
            of a NUTS run.
        flow: a kind of :data:`inference.flows.KINDS` (built with ``flow_options``), a
            :class:`inference.flows.FlowSpec` of dimension ``D`` (fresh weights), or a
            :class:`Flow` to start from (its weights and affine map are kept: e.g. a flow
            fitted by VI, :func:`flow_from_vi`, refined on draws).
        key: randomness of the initial weights and the minibatches.
        steps, batch_size: optimizer steps; draws per minibatch (drawn with replacement).
        optimizer: an optax transformation; default Adam with a cosine-decayed learning
            rate from ``3e-3`` and gradient clipping.
        standardize: whitening of the draws before the flow (the flow starts at the
            identity, i.e. at ``N(mean, cov)`` of the draws): ``"full"`` (mean and Cholesky
            factor of the covariance), ``"diag"`` (mean and standard deviations) or ``None``.
            Ignored when starting from a :class:`Flow`.
        flow_options: keyword arguments of :class:`inference.flows.FlowSpec` (``layers``,
            ``width``, ``depth``, ``knots``, ``interval``, ...) for a kind.
        validation: the fraction of the draws held out (at random); their negative
            log-likelihood is evaluated 50 times during the fit and the best weights are
            kept (early stopping: a flexible flow overfits a few thousand draws, and an
            overfitted proposal has light tails between the draws). 0 trains on all draws
            and keeps the last weights.
        progress: show a progress bar.
        on_interrupt: what Ctrl-C does (:func:`inference.training.run_steps`): return the
            flow reached with a warning (``"warn"``), or propagate (``"raise"``, as
            :class:`Learned` does: a flow fitted part way is no proposal to sample with).

    Returns:
        :class:`FittedFlow` ``(flow, losses, val_losses, best_step)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = 3.0 + 0.5 * jax.random.normal(jax.random.key(0), (2000, 2))
        >>> r = fit_flow_to_draws(x, "affine_coupling", steps=100, flow_options={"layers": 1,
        ...                       "width": 8})
        >>> r.flow.sample(jax.random.key(1), 4000).mean(0).round(1).tolist()
        [3.0, 3.0]
    """
    owner = "fit_flow_to_draws"
    key = jax.random.key(key) if isinstance(key, int) and not isinstance(key, bool) else key
    steps = _positive_int(owner, "steps", steps)
    batch_size = _positive_int(owner, "batch_size", batch_size)
    _check_optimizer(owner, optimizer)
    if standardize not in _STANDARDIZE:
        raise ValueError(f"{owner}(standardize={standardize!r}): use 'full', 'diag' or None.")
    k_init, k_fit = jax.random.split(key)
    if isinstance(flow, Flow):
        if flow_options:
            raise ValueError(f"{owner}: flow_options apply to a flow kind, not to a Flow to "
                             "start from.")
        x = _as_points(owner, draws, flow.dim)
        spec, theta0, loc, tril = flow.spec, flow.theta, flow.loc, flow.scale_tril
    else:
        x = _as_points(owner, draws)
        if isinstance(flow, FlowSpec):
            if flow_options:
                raise ValueError(f"{owner}: flow_options apply to a flow kind; a FlowSpec "
                                 "already fixes them.")
            spec = flow
            if spec.dim != x.shape[1]:
                raise ValueError(f"{owner}: the FlowSpec has dim={spec.dim} but the draws have "
                                 f"dimension {x.shape[1]}.")
        elif isinstance(flow, str):
            spec = FlowSpec(check_kind(flow, owner), x.shape[1], **dict(flow_options or {}))
        else:
            raise TypeError(f"{owner}(flow={flow!r}): use a flow kind, a FlowSpec or a Flow.")
        theta0 = jax.jit(spec.init)(k_init)  # one program, not one per flowjax init op
        loc, tril = _whitening(x, standardize)
    if not (isinstance(validation, (int, float)) and not isinstance(validation, bool)
            and 0.0 <= validation < 1.0):
        raise ValueError(f"{owner}(validation={validation!r}): must be a fraction in [0, 1).")
    n_val = int(round(validation * x.shape[0]))
    if x.shape[0] - n_val < 2 or (validation > 0 and n_val < 1):
        raise ValueError(f"{owner}: need at least 2 training draws (and 1 held out with "
                         f"validation={validation}); got {x.shape[0]} draws.")
    y, y_val, k_fit = _split_whitened(x, loc, tril, k_fit, n_val)
    if optimizer is None:
        optimizer = optax.chain(optax.clip_by_global_norm(10.0),
                                optax.adam(optax.cosine_decay_schedule(3e-3, steps, alpha=0.05)))

    def loss_fn(theta, batch):
        return -jnp.mean(jax.vmap(lambda v: spec.log_prob(theta, v))(batch))

    n = y.shape[0]
    every = max(1, steps // 50)
    n_evals = steps // every

    def step(state, i, key, data, guard):
        theta, opt_state, best = state
        y, y_val = data
        idx = jax.random.randint(jax.random.fold_in(key, i), (batch_size,), 0, n)
        loss, grad = jax.value_and_grad(loss_fn)(theta, y[idx])
        updates, opt_state = optimizer.update(grad, opt_state, theta)
        new_theta = optax.apply_updates(theta, updates)
        if y_val is not None:  # held-out NLL every `every` steps; keep the best weights

            def evaluate(best):
                best_theta, best_val, best_step, vals = best
                v = loss_fn(new_theta, y_val)
                better = v < best_val  # a NaN is never better
                return (jnp.where(better, new_theta, best_theta), jnp.where(better, v, best_val),
                        jnp.where(better, i + 1, best_step), vals.at[(i + 1) // every - 1].set(v))

            best = jax.lax.cond((i + 1) % every == 0, evaluate, lambda b: b, best)
        ok = None
        if guard:
            ok = jnp.concatenate([jnp.isfinite(loss)[None], leaf_flags(grad),
                                  leaf_flags(new_theta)])
        return (new_theta, opt_state, best), loss, ok

    dtype = theta0.dtype
    start = jax.jit(loss_fn)(theta0, y_val) if y_val is not None else jnp.asarray(jnp.inf, dtype)
    best = (theta0, start, jnp.zeros((), jnp.int32), jnp.full(n_evals, jnp.nan, dtype))
    # The one training loop (inference.training): chunked, guarded, with the bar.
    trained = run_steps(step, (theta0, optimizer.init(theta0), best), steps=steps, key=k_fit,
                        data=(y, y_val), progress=progress, label="flow fit",
                        postfix=lambda losses: {"nll": float(jnp.mean(losses))},
                        on_interrupt=on_interrupt)
    if trained.stopped is not None:
        stopped = trained.stopped
        raise non_finite_error(
            owner, stopped._replace(state=stopped.state[:2], previous=stopped.previous[:2]),
            trained.outputs, ["theta"], quantity="negative log-likelihood",
            advice="standardize the draws (standardize='full')")
    theta, _, (best_theta, _, best_step, val_losses) = trained.state
    losses = trained.outputs
    if y_val is None:
        return FittedFlow(Flow(spec, theta, loc, tril), losses, None, steps)
    return FittedFlow(Flow(spec, best_theta, loc, tril), losses, val_losses, int(best_step))


def _split_whitened(x, loc, tril, key, n_val):
    """The whitened draws, split at random into training and held-out ones (``None`` when
    ``n_val`` is 0), and the key for the fit. (The split is drawn on the host.)"""
    k_split, k_fit = jax.random.split(key)
    y = jax.jit(lambda v, m, t: _affine_parts(m, t)._to_y(v))(x, loc, tril)
    if not n_val:
        return y, None, k_fit
    seed = np.asarray(jax.random.key_data(k_split)).ravel()
    perm = np.random.default_rng(seed).permutation(x.shape[0])
    return y[perm[n_val:]], y[perm[:n_val]], k_fit


def fit_flow_matching_to_draws(
    draws: Any,
    *,
    key: jax.Array | int = 0,
    steps: int = 2000,
    batch_size: int = 256,
    optimizer: optax.GradientTransformation | None = None,
    standardize: str | None = "full",
    width: int = 64,
    depth: int = 2,
    time_frequencies: int = 4,
    ode_steps: int = 16,
    ode_method: str = "rk4",
    density: str | None = "jacobian",
    path: str = "straight",
    progress: bool = False,
    on_interrupt: str = "warn",
) -> FittedFlowMatching:
    """Train a flow-matching field on (whitened) draws: a sampler from ``N(0, I)`` by its ODE.

    A :class:`inference.flow_matching.VelocityMLP` (``width``, ``depth``,
    ``time_frequencies``) is trained with :func:`inference.flow_matching.train` (``path``,
    ``steps``, ``batch_size``, ``optimizer``) on the draws whitened as in
    :func:`fit_flow_to_draws`; the result samples with ``ode_steps`` steps of ``ode_method``
    and has the density ``density`` (see :class:`FlowMatchingSampler`). ``on_interrupt``:
    what Ctrl-C does, as in :func:`fit_flow_to_draws`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x = 3.0 + 0.5 * jax.random.normal(jax.random.key(0), (2000, 1))
        >>> r = fit_flow_matching_to_draws(x, steps=100, width=16, ode_steps=4)
        >>> round(float(r.flow.sample(jax.random.key(1), 4000).mean()), 1)
        3.0
    """
    owner = "fit_flow_matching_to_draws"
    key = jax.random.key(key) if isinstance(key, int) and not isinstance(key, bool) else key
    if standardize not in _STANDARDIZE:
        raise ValueError(f"{owner}(standardize={standardize!r}): use 'full', 'diag' or None.")
    _check_optimizer(owner, optimizer)
    x = _as_points(owner, draws)
    loc, tril = _whitening(x, standardize)
    sampler = FlowMatchingSampler(lambda y, t: y, x.shape[1], ode_steps, ode_method, density,
                                  loc, tril)
    y = sampler._to_y(x)
    k_init, k_fit = jax.random.split(key)
    v = fm.VelocityMLP(x.shape[1], k_init, width=width, depth=depth,
                       time_frequencies=time_frequencies)
    if optimizer is None:
        optimizer = optax.adam(optax.cosine_decay_schedule(3e-3, steps, alpha=0.05))
    result = fm.train(v, k_fit, y, steps=steps, batch_size=batch_size, optimizer=optimizer,
                      path=path, progress=progress, on_interrupt=on_interrupt)
    return FittedFlowMatching(
        FlowMatchingSampler(result.field, x.shape[1], ode_steps, ode_method, density, loc, tril),
        result.losses)


def flow_from_vi(result: Any) -> Flow:
    """The flow of a VI fit with the flow guide, as a :class:`Flow` on the unconstrained space.

    ``result`` is the :class:`inference.Result` of ``infer(model, ..., method=VI(guide="flow",
    guide_options={...}))`` (its fitted weights are ``result.tuning["params"]["guide.flow"]``
    and its kind and sizes are those of ``guide_options``). The flow's coordinates are the
    model's unconstrained sites in model order, as :func:`unconstrained_draws`.

    Example:
        >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist, inference
        >>> def model(y=None):
        ...     mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> vi = inference.VI(guide="flow", steps=200, guide_options={"layers": 1, "width": 4})
        >>> r = inference.infer(model, y=1.0, method=vi, num_samples=10, num_chains=1,
        ...                     progress=False)
        >>> q = flow_from_vi(r)
        >>> q.dim, q.spec.kind
        (1, 'affine_coupling')
    """
    from inference.vi import VI

    method = getattr(result, "method", None)
    if not (isinstance(method, VI) and method.guide == "flow"):
        raise TypeError(
            "flow_from_vi: expects the Result of infer(..., method=VI(guide='flow', ...)); got "
            f"a result of {type(method).__name__ if method is not None else type(result).__name__}"
            + (f" (guide={method.guide!r})" if isinstance(method, VI) else "") + ".")
    options = dict(method.guide_options or {})
    prefix = options.pop("prefix", "guide")
    kind = check_kind(options.pop("kind", "affine_coupling"), "flow_from_vi")
    theta = result.tuning["params"][f"{prefix}.flow"]
    pot = make_potential(result.model, *result.model_args, **result.model_kwargs)
    return Flow(FlowSpec(kind, pot.dimension, **options), theta)
