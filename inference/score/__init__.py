r"""Score-based sampling: forward processes, score-matching losses, reverse-time samplers.

Forward processes (one small protocol, :class:`Process`): ``x_t = a(t) x0 + s(t) eps``,
``t`` in ``[t_min, t_max]``, with ``marginal(t) -> (a, s)``, the SDE ``dx = f(t) x dt +
g(t) dW`` (``drift(x, t) = f(t) x``, ``diffusion(t) = g(t)``; both derived from the marginal:
``f = d log a / dt`` and ``g^2 = d s^2/dt - 2 f s^2``) and ``prior_sample``:

* :class:`VP` -- variance preserving, ``beta(t)`` linear (Song et al. 2021);
* :class:`VE` -- variance exploding, ``a = 1``, ``s`` geometric from ``sigma_min`` to ``sigma_max``;
* :class:`Linear` -- the linear interpolant ``a = 1 - t``, ``s = t`` (rectified flow's path).

A network ``net(x, t)`` may predict the ``"score"`` ``grad log p_t``, the ``"noise"`` eps,
the ``"data"`` ``E[x0 | x_t]`` or the ``"velocity"`` ``a'(t) x0 + s'(t) eps`` (the path's time
derivative, flow matching's target); :func:`convert` maps any of these into any other.

Losses (per-example Equinox networks ``net(x, t)``, vmapped over a batch):
:func:`dsm_loss` (denoising score matching, Vincent 2011 / Song et al. 2021, with the standard
weighting ``lambda(t) = s(t)^2`` or the prediction's native MSE) and :func:`ssm_loss` (sliced
score matching, Song et al. 2019). :func:`fit_score` trains with either.

Samplers: each takes ``(fn, process, key, shape or x_T, steps)`` where ``fn(x, t)`` acts on
the whole batch ``x`` (``(n, ...)``) at a scalar ``t`` (wrap a per-example network with
:func:`batched`), runs one ``jax.jit``-compiled ``lax.scan`` and returns
:class:`ScoreSamples` ``(x, nfe, path)``:

* :func:`euler_maruyama` -- the reverse SDE ``dx = [f x - g^2 score] dt + g dW``;
* :func:`pf_ode` -- the probability-flow ODE ``dx/dt = f x - g^2 score / 2``, Euler or Heun,
  integrated in the scaled variables ``x / a`` against ``s / a`` (where it reads
  ``d(x/a)/d(s/a) = eps``; Euler there is DDIM);
* :func:`dpm_solver` -- an exponential-integrator multistep solver in the data prediction,
  orders 1-3, steps uniform in log-SNR (in the spirit of DPM-Solver++, Lu et al. 2022);
* :func:`predictor_corrector` -- Euler-Maruyama predictor + Langevin corrector with the
  signal-to-noise step rule (Song et al. 2021);
* :func:`annealed_langevin` -- Langevin dynamics at each of a decreasing sequence of noise
  levels (Song & Ermon 2019).

Analytical start: :class:`GaussianStart` replaces the high-noise part of the trajectory by
the closed-form probability-flow map of the data's Gaussian approximation
(:func:`gaussian_flow`), and the solver's steps all go to the remaining interval.

Unnormalised targets: :func:`sample_target` runs annealed Langevin along tempered or
Gaussian-smoothed versions of a log density (any flat ``logdensity_fn`` or a
``ppl.potential``). Score priors: :func:`posterior_score` adds a likelihood's guidance
(``grad_x log p(y | E[x0 | x_t])``, diffusion posterior sampling, Chung et al. 2023) to a
prior score; :func:`observation_loglik` makes that likelihood from a NumPyro observation model.

Example:
    >>> import jax
    >>> from models.score_gmm import ring_mixture
    >>> gmm, proc = ring_mixture(4), VP()
    >>> out = dpm_solver(gmm.score_fn(proc), proc, jax.random.key(0), (256, 2), steps=10)
    >>> out.x.shape, out.nfe
    ((256, 2), 10)
"""

from __future__ import annotations

import abc
import math
from typing import Any, Callable, NamedTuple, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax.scipy.special import logsumexp

__all__ = [
    "Process", "VP", "VE", "Linear", "process",
    "PREDICTIONS", "convert", "batched",
    "dsm_loss", "ssm_loss", "fit_score", "relative_score_error",
    "timesteps", "ScoreSamples",
    "euler_maruyama", "pf_ode", "dpm_solver", "predictor_corrector", "annealed_langevin",
    "GaussianStart", "gaussian_flow",
    "sample_target", "posterior_score", "observation_loglik",
]

PREDICTIONS = ("score", "noise", "data", "velocity")
SCHEDULES = ("uniform", "logsnr", "edm")


# =======================================================================================
# forward processes
# =======================================================================================


class Process(eqx.Module):
    """A forward noising process ``x_t = a(t) x0 + s(t) eps``, ``t in [t_min, t_max]``.

    Subclasses define :meth:`marginal` and :meth:`t_from_log_snr`; the SDE coefficients
    follow from the marginal (``f = d log a/dt``, ``g^2 = d s^2/dt - 2 f s^2``).
    """

    t_min: float
    t_max: float

    @abc.abstractmethod
    def marginal(self, t) -> tuple[jax.Array, jax.Array]:
        """``(a(t), s(t))``: the mean scale and the std of ``x_t`` given ``x0``."""

    @abc.abstractmethod
    def t_from_log_snr(self, lam) -> jax.Array:
        """The inverse of :meth:`log_snr`."""

    def log_snr(self, t) -> jax.Array:
        """``lambda(t) = log(a / s)``, decreasing in ``t``."""
        a, s = self.marginal(t)
        return jnp.log(a) - jnp.log(s)

    def marginal_and_derivative(self, t):
        """``((a, s), (da/dt, ds/dt))``."""
        t = jnp.asarray(t, jnp.float32)
        return jax.jvp(self.marginal, (t,), (jnp.ones_like(t),))

    def drift(self, x, t) -> jax.Array:
        """``f(t) x``, the forward SDE's drift."""
        (a, _), (da, _) = self.marginal_and_derivative(t)
        return (da / a) * x

    def diffusion(self, t) -> jax.Array:
        """``g(t)``, the forward SDE's diffusion coefficient."""
        (a, s), (da, ds) = self.marginal_and_derivative(t)
        return jnp.sqrt(jnp.maximum(2.0 * s * ds - 2.0 * (da / a) * s**2, 0.0))

    def prior_std(self) -> jax.Array:
        return self.marginal(jnp.asarray(self.t_max, jnp.float32))[1]

    def prior_sample(self, key: jax.Array, shape: Sequence[int]) -> jax.Array:
        """Draws of the reference law at ``t_max``: ``N(0, s(t_max)^2 I)``."""
        return self.prior_std() * jax.random.normal(key, tuple(shape))


class VP(Process):
    """Variance preserving: ``beta(t) = beta_min + t (beta_max - beta_min)``,
    ``a = exp(-int beta / 2)``, ``s = sqrt(1 - a^2)``.

    Example:
        >>> a, s = VP().marginal(0.5)
        >>> round(float(a**2 + s**2), 6)
        1.0
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3
    t_max: float = 1.0

    def _int_beta(self, t):
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def marginal(self, t):
        ib = self._int_beta(jnp.asarray(t, jnp.float32))
        return jnp.exp(-0.5 * ib), jnp.sqrt(-jnp.expm1(-ib))

    def t_from_log_snr(self, lam):
        ib = jax.nn.softplus(-2.0 * jnp.asarray(lam, jnp.float32))  # log(1 + e^{-2 lam})
        db = self.beta_max - self.beta_min
        return 2.0 * ib / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2.0 * db * ib))


class VE(Process):
    """Variance exploding: ``a = 1``, ``s = sigma_min (sigma_max / sigma_min)^t``.

    Example:
        >>> [round(float(v), 3) for v in VE(sigma_min=0.01, sigma_max=10.0).marginal(1.0)]
        [1.0, 10.0]
    """

    sigma_min: float = 0.01
    sigma_max: float = 10.0
    t_min: float = 0.0
    t_max: float = 1.0

    def marginal(self, t):
        t = jnp.asarray(t, jnp.float32)
        return jnp.ones_like(t), self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def t_from_log_snr(self, lam):
        return (-jnp.asarray(lam, jnp.float32) - math.log(self.sigma_min)) / math.log(
            self.sigma_max / self.sigma_min)


class Linear(Process):
    """The linear interpolant ``x_t = (1 - t) x0 + t eps`` (rectified flow's path).

    ``t_max < 1`` keeps the drift ``-x / (1 - t)`` finite; the prior ``N(0, t_max^2 I)``
    then ignores the ``(1 - t_max) x0`` remainder.

    Example:
        >>> [round(float(v), 3) for v in Linear().marginal(0.25)]
        [0.75, 0.25]
    """

    t_min: float = 1e-3
    t_max: float = 0.999

    def marginal(self, t):
        t = jnp.asarray(t, jnp.float32)
        return 1.0 - t, t

    def t_from_log_snr(self, lam):
        return jax.nn.sigmoid(-jnp.asarray(lam, jnp.float32))


_PROCESSES = {"vp": VP, "ve": VE, "linear": Linear}


def process(name: str | Process, **kwargs: Any) -> Process:
    """A process by name (``"vp"``, ``"ve"``, ``"linear"``) or passed through.

    Example:
        >>> process("ve", sigma_max=5.0).sigma_max
        5.0
    """
    if isinstance(name, Process):
        return name
    if not isinstance(name, str) or name.lower() not in _PROCESSES:
        raise ValueError(f"unknown process {name!r}; expected one of {sorted(_PROCESSES)} or a "
                         "Process instance (VP(), VE(), Linear()).")
    return _PROCESSES[name.lower()](**kwargs)


def _check_process(fn: str, proc: Any) -> Process:
    if not isinstance(proc, Process):
        raise TypeError(f"{fn}: process must be a Process (VP(), VE(), Linear()) or built by "
                        f"inference.score.process(name); got {type(proc).__name__}.")
    return proc


# =======================================================================================
# parameterisations
# =======================================================================================


def _check_prediction(fn: str, prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"{fn}: unknown prediction {prediction!r}; expected one of {PREDICTIONS}.")


def _to_noise(out, x, t, proc: Process, source: str):
    (a, s), (da, ds) = proc.marginal_and_derivative(t)
    if source == "noise":
        return out
    if source == "score":
        return -s * out
    if source == "data":
        return (x - a * out) / s
    return (a * out - da * x) / (a * ds - s * da)  # velocity


def _from_noise(eps, x, t, proc: Process, target: str):
    (a, s), (da, ds) = proc.marginal_and_derivative(t)
    if target == "noise":
        return eps
    if target == "score":
        return -eps / s
    x0 = (x - s * eps) / a
    if target == "data":
        return x0
    return da * x0 + ds * eps  # velocity


def convert(output, x, t, proc: Process, source: str, target: str) -> jax.Array:
    """Convert a network's ``source`` prediction at ``(x, t)`` into the ``target`` one.

    With ``x = a x0 + s eps``: ``score = -eps / s``, ``data = (x - s eps) / a``,
    ``velocity = a' x0 + s' eps``. ``t`` is a scalar or broadcasts against ``x``.

    Example:
        >>> import jax.numpy as jnp
        >>> p, x, eps = VP(), jnp.array([0.3, -1.0]), jnp.array([1.0, 2.0])
        >>> v = convert(eps, x, 0.4, p, "noise", "velocity")
        >>> back = convert(v, x, 0.4, p, "velocity", "noise")
        >>> bool(jnp.allclose(back, eps, atol=1e-5))
        True
    """
    _check_prediction("convert", source)
    _check_prediction("convert", target)
    if source == target:
        return output
    return _from_noise(_to_noise(output, x, t, proc, source), x, t, proc, target)


class batched(eqx.Module):
    """``batched(net)(x, t) = vmap(net)(x, t)`` over ``x``'s first axis, ``t`` a scalar.

    What the samplers need from a per-example Equinox network ``net(x, t)``.

    Example:
        >>> import jax.numpy as jnp
        >>> batched(lambda x, t: x * t)(jnp.ones((3, 2)), 2.0).shape
        (3, 2)
    """

    net: Callable

    def __call__(self, x, t):
        return jax.vmap(self.net, in_axes=(0, None))(x, t)


# =======================================================================================
# losses and training
# =======================================================================================


def _weight(weighting, prediction: str, t, proc: Process):
    """lambda(t) for the loss lambda(t) |score_hat - score_target|^2."""
    (a, s), (da, ds) = proc.marginal_and_derivative(t)
    if callable(weighting):
        return weighting(t)
    if weighting == "standard":
        return s**2
    if weighting == "native":  # (d prediction / d score)^2: the MSE in the prediction's space
        return {"score": jnp.ones_like(s), "noise": s**2, "data": s**4 / a**2,
                "velocity": (da * s**2 / a - ds * s) ** 2}[prediction]
    raise ValueError(f"unknown weighting {weighting!r}; expected 'standard', 'native' or a "
                     "callable t -> lambda(t).")


def _check_batch(fn: str, x0) -> jax.Array:
    x0 = jnp.asarray(x0)
    if x0.ndim < 2:
        raise ValueError(f"{fn}: x0 must be a batch of shape (batch, ...); got {x0.shape}.")
    return x0


def _sample_t(key, n, proc, t_min):
    lo = proc.t_min if t_min is None else t_min
    lo = max(lo, 1e-5)
    return jax.random.uniform(key, (n,), minval=lo, maxval=proc.t_max)


def _bcast(v, x):
    return jnp.reshape(v, v.shape + (1,) * (x.ndim - v.ndim))


def dsm_loss(net: Callable, proc: Process, x0: jax.Array, key: jax.Array, *,
             prediction: str = "noise", weighting: Any = "standard",
             t_min: float | None = None) -> jax.Array:
    r"""Denoising score matching: ``E_t E_{x0, eps} lambda(t) |score_hat(x_t, t) + eps / s(t)|^2``.

    ``net(x, t)`` is a per-example network predicting ``prediction``; ``t ~ U(t_min, t_max)``.
    ``weighting="standard"`` is ``lambda = s^2`` (the loss is then ``|eps_hat - eps|^2``
    whatever the parameterisation), ``"native"`` the MSE in the prediction's own space,
    or a callable ``t -> lambda(t)``. Minimised (over all functions) by the exact score of
    ``p_t``; the result is the batch mean of the per-example sum over dimensions.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x0 = jnp.zeros((512, 1))  # data at 0: the exact eps predictor is x_t / s
        >>> exact = lambda x, t: x / VP().marginal(t)[1]
        >>> round(float(dsm_loss(exact, VP(), x0, jax.random.key(0))), 6)
        0.0
    """
    _check_prediction("dsm_loss", prediction)
    proc = _check_process("dsm_loss", proc)
    x0 = _check_batch("dsm_loss", x0)
    kt, ke = jax.random.split(key)
    t = _sample_t(kt, x0.shape[0], proc, t_min)
    eps = jax.random.normal(ke, x0.shape, x0.dtype)
    a, s = proc.marginal(t)
    xt = _bcast(a, x0) * x0 + _bcast(s, x0) * eps
    out = jax.vmap(net)(xt, t)
    if out.shape != xt.shape:
        raise ValueError(f"dsm_loss: net(x, t) returned shape {out.shape[1:]} for x of shape "
                         f"{xt.shape[1:]}; it must return the shape of x.")
    eps_hat = jax.vmap(lambda o, x, tt: _to_noise(o, x, tt, proc, prediction))(out, xt, t)
    lam = _weight(weighting, prediction, t, proc)
    sq = jnp.sum((eps_hat - eps).reshape(x0.shape[0], -1) ** 2, axis=1)
    return jnp.mean(lam / s**2 * sq)


def ssm_loss(net: Callable, proc: Process, x0: jax.Array, key: jax.Array, *,
             prediction: str = "score", num_projections: int = 1,
             variance_reduction: bool = True, weighting: Any = "standard",
             t_min: float | None = None) -> jax.Array:
    r"""Sliced score matching on the noised data: ``E lambda(t) [v^T J v + |score|^2 / 2]``.

    ``J`` is the Jacobian of the predicted score of ``p_t`` at a draw ``x_t``; ``v`` standard
    normal projections (``num_projections`` per example). With ``variance_reduction=True`` the
    ``(v^T score)^2 / 2`` term is replaced by its expectation ``|score|^2 / 2`` (SSM-VR).
    Equals ``E lambda |score_hat - score|^2 / 2`` up to a constant, so it needs no noise
    knowledge beyond samples of ``p_t``; one Jacobian-vector product per projection.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> x0 = jax.random.normal(jax.random.key(1), (256, 2))  # N(0, I): p_t = N(0, (a^2+s^2) I)
        >>> def exact(x, t):
        ...     a, s = VP().marginal(t); return -x / (a**2 + s**2)
        >>> bool(ssm_loss(exact, VP(), x0, jax.random.key(0)) < 0)  # -E lam |score|^2 / 2
        True
    """
    _check_prediction("ssm_loss", prediction)
    proc = _check_process("ssm_loss", proc)
    x0 = _check_batch("ssm_loss", x0)
    if int(num_projections) < 1:
        raise ValueError(f"ssm_loss: num_projections must be >= 1; got {num_projections}.")
    kt, ke, kv = jax.random.split(key, 3)
    t = _sample_t(kt, x0.shape[0], proc, t_min)
    a, s = proc.marginal(t)
    xt = _bcast(a, x0) * x0 + _bcast(s, x0) * jax.random.normal(ke, x0.shape, x0.dtype)
    v = jax.random.normal(kv, (num_projections,) + x0.shape, x0.dtype)

    def one(x, tt, vs):
        score = lambda y: convert(net(y, tt), y, tt, proc, prediction, "score")  # noqa: E731

        def proj(vv):
            sc, jv = jax.jvp(score, (x,), (vv,))
            quad = 0.5 * jnp.sum(sc**2) if variance_reduction else 0.5 * jnp.sum(vv * sc) ** 2
            return jnp.sum(vv * jv) + quad

        return jnp.mean(jax.vmap(proj)(vs))

    per = jax.vmap(one, in_axes=(0, 0, 1))(xt, t, v)
    return jnp.mean(_weight(weighting, prediction, t, proc) * per)


def relative_score_error(net: Callable, exact: Callable, proc: Process, x0: jax.Array,
                         key: jax.Array, *, prediction: str = "noise") -> jax.Array:
    """``E s^2 |score_net - score| ^2 / E s^2 |score|^2`` over ``t ~ U``, ``x_t`` from ``x0``.

    ``net`` per example (predicting ``prediction``), ``exact(x, t)`` the true score
    (batched, as for the samplers). In noise units: ``E|eps_net - eps*|^2 / E|eps*|^2``.

    Example:
        >>> import jax
        >>> from models.score_gmm import ring_mixture
        >>> g = ring_mixture(3); f = g.score_fn(VP())
        >>> float(relative_score_error(lambda x, t: f(x, t), f, VP(), g.sample(jax.random.key(0), 64),
        ...                            jax.random.key(1), prediction="score"))
        0.0
    """
    x0 = _check_batch("relative_score_error", x0)
    kt, ke = jax.random.split(key)
    t = _sample_t(kt, x0.shape[0], proc, None)
    a, s = proc.marginal(t)
    xt = _bcast(a, x0) * x0 + _bcast(s, x0) * jax.random.normal(ke, x0.shape)
    got = jax.vmap(lambda x, tt: convert(net(x, tt), x, tt, proc, prediction, "score"))(xt, t)
    want = jax.vmap(lambda x, tt: exact(x[None], tt)[0])(xt, t)
    w = _bcast(s**2, x0)
    return jnp.sum(w * (got - want) ** 2) / jnp.sum(w * want**2)


def fit_score(net: eqx.Module, proc: Process, data: jax.Array, key: jax.Array, *,
              steps: int = 2000, batch_size: int = 256, learning_rate: float = 2e-3,
              loss: str = "dsm", prediction: str = "noise", weighting: Any = "standard",
              chunk: int = 200) -> tuple[eqx.Module, jax.Array]:
    """Train ``net`` by ``loss`` (``"dsm"`` or ``"ssm"``) with Adam (cosine-decayed rate).

    Minibatches of ``batch_size`` rows of ``data`` drawn with replacement; ``chunk`` steps per
    jit-compiled ``lax.scan``. Returns ``(trained net, loss per step)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from models.score_net import ScoreMLP
        >>> net = ScoreMLP(2, hidden=16, depth=1, key=jax.random.key(0))
        >>> data = jax.random.normal(jax.random.key(1), (100, 2))
        >>> net, losses = fit_score(net, VP(), data, jax.random.key(2), steps=20, chunk=10)
        >>> losses.shape
        (20,)
    """
    _check_prediction("fit_score", prediction)
    proc = _check_process("fit_score", proc)
    data = _check_batch("fit_score", data)
    if loss not in ("dsm", "ssm"):
        raise ValueError(f"fit_score: unknown loss {loss!r}; expected 'dsm' or 'ssm'.")
    steps, chunk = int(steps), max(1, min(int(chunk), int(steps)))
    if steps < 1:
        raise ValueError(f"fit_score: steps must be >= 1; got {steps}.")
    loss_fn = dsm_loss if loss == "dsm" else ssm_loss
    sched = optax.cosine_decay_schedule(learning_rate, steps, alpha=0.05)
    opt = optax.adam(sched)
    params, static = eqx.partition(net, eqx.is_inexact_array)
    opt_state = opt.init(params)

    @jax.jit
    def run(params, opt_state, keys):
        def step(carry, k):
            params, opt_state = carry
            kb, kl = jax.random.split(k)
            idx = jax.random.randint(kb, (batch_size,), 0, data.shape[0])

            def objective(p):
                return loss_fn(eqx.combine(p, static), proc, data[idx], kl,
                               prediction=prediction, weighting=weighting)

            value, grads = jax.value_and_grad(objective)(params)
            upd, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, upd), opt_state), value

        return jax.lax.scan(step, (params, opt_state), keys)

    keys = jax.random.split(key, steps)
    history = []
    for start in range(0, steps, chunk):  # a ragged last chunk compiles once more
        (params, opt_state), vals = run(params, opt_state, keys[start:start + chunk])
        history.append(vals)
    losses = jnp.concatenate(history)
    if not bool(jnp.all(jnp.isfinite(losses))):
        bad = int(jnp.argmax(~jnp.isfinite(losses)))
        raise FloatingPointError(f"fit_score: the {loss} loss became non-finite at step {bad}; "
                                 "lower learning_rate.")
    return eqx.combine(params, static), losses


# =======================================================================================
# time grids, the analytical start, shared plumbing
# =======================================================================================


def timesteps(proc: Process, steps: int, schedule: str = "uniform", t_start=None,
              rho: float = 7.0) -> jax.Array:
    """``steps + 1`` decreasing times from ``t_start`` (default ``t_max``) to ``t_min``.

    ``"uniform"`` in ``t``; ``"logsnr"`` uniform in ``lambda = log(a/s)``; ``"edm"`` uniform
    in ``(s/a)^(1/rho)`` (Karras et al. 2022), dense at low noise.

    Example:
        >>> [round(float(t), 3) for t in timesteps(Linear(t_min=0.1, t_max=0.9), 2)]
        [0.9, 0.5, 0.1]
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"timesteps: unknown schedule {schedule!r}; expected one of {SCHEDULES}.")
    t0 = jnp.asarray(proc.t_max if t_start is None else t_start, jnp.float32)
    t1 = jnp.asarray(max(proc.t_min, 1e-5), jnp.float32)
    u = jnp.linspace(0.0, 1.0, steps + 1)
    if schedule == "uniform":
        ts = t0 + u * (t1 - t0)
    else:
        l0, l1 = proc.log_snr(t0), proc.log_snr(t1)
        if schedule == "logsnr":
            lam = l0 + u * (l1 - l0)
        else:
            r0, r1 = jnp.exp(-l0 / rho), jnp.exp(-l1 / rho)
            lam = -rho * jnp.log(r0 + u * (r1 - r0))
        ts = proc.t_from_log_snr(lam)
    return ts.at[0].set(t0).at[-1].set(t1)


class GaussianStart(eqx.Module):
    """The analytical start: follow the Gaussian approximation's exact flow down to ``t``.

    For data ``N(mean, cov)`` the probability-flow ODE is linear and solvable: in the
    eigenbasis of ``cov`` each whitened coordinate ``(x - a mean) / sqrt(a^2 lambda + s^2)``
    is constant along the flow. At high noise the true score is close to that Gaussian's,
    so the solver may start at ``t`` from ``gaussian_flow(x_T)`` and spend its steps below.

    Example:
        >>> import jax.numpy as jnp
        >>> gs = GaussianStart.fit(jnp.array([[0.0, 1.0], [2.0, -1.0], [1.0, 0.0]]), t=0.5)
        >>> gs.cov.shape, gs.t
        ((2, 2), 0.5)
    """

    mean: jax.Array
    cov: jax.Array
    t: float

    @classmethod
    def fit(cls, data: jax.Array, t: float) -> "GaussianStart":
        """Mean and covariance of ``data`` (rows are draws, flattened)."""
        x = jnp.asarray(data).reshape(jnp.shape(data)[0], -1)
        return cls(jnp.mean(x, 0), jnp.atleast_2d(jnp.cov(x, rowvar=False)), float(t))


def gaussian_flow(proc: Process, mean: jax.Array, cov: jax.Array, x: jax.Array,
                  t_from, t_to) -> jax.Array:
    """The exact probability-flow map from ``t_from`` to ``t_to`` when the data are
    ``N(mean, cov)``; ``x`` is ``(n, ...)`` with ``prod(...) = len(mean)``.

    Example:
        >>> import jax.numpy as jnp
        >>> p = VE(sigma_min=1e-3, sigma_max=10.0)
        >>> y = gaussian_flow(p, jnp.zeros(1), jnp.ones((1, 1)), jnp.array([[10.0]]), 1.0, 0.0)
        >>> round(float(y[0, 0]), 3)  # 10 * sqrt(1 + 1e-6) / sqrt(1 + 100)
        0.995
    """
    n = x.shape[0]
    flat = x.reshape(n, -1)
    if flat.shape[1] != mean.shape[0] or cov.shape != (mean.shape[0],) * 2:
        raise ValueError(f"gaussian_flow: x has {flat.shape[1]} dimensions per draw but mean "
                         f"{mean.shape} and cov {cov.shape}.")
    lam, U = jnp.linalg.eigh(0.5 * (cov + cov.T))
    lam = jnp.maximum(lam, 0.0)
    a0, s0 = proc.marginal(t_from)
    a1, s1 = proc.marginal(t_to)
    ratio = jnp.sqrt((a1**2 * lam + s1**2) / (a0**2 * lam + s0**2))
    z = (flat - a0 * mean) @ U
    return (a1 * mean + (z * ratio) @ U.T).reshape(x.shape)


class ScoreSamples(NamedTuple):
    """A sampler's output: draws ``x``, the number of function (network) evaluations ``nfe``
    and, with ``return_path=True``, the path ``(steps + 1, *x.shape)`` (else ``None``)."""

    x: jax.Array
    nfe: int
    path: jax.Array | None = None


def _check_steps(fn: str, steps, name: str = "steps") -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int,)) and not (
            hasattr(steps, "__index__") and not hasattr(steps, "shape")):
        raise TypeError(f"{fn}: {name} must be a Python int; got {type(steps).__name__}.")
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"{fn}: {name} must be >= 1; got {steps}.")
    return steps


def _initial(fn_name: str, proc: Process, key, x_or_shape) -> jax.Array:
    if isinstance(x_or_shape, (tuple, list)) and all(isinstance(v, int) for v in x_or_shape):
        if len(x_or_shape) < 1:
            raise ValueError(f"{fn_name}: shape must be (batch, ...); got {tuple(x_or_shape)}.")
        return proc.prior_sample(key, x_or_shape)
    x = jnp.asarray(x_or_shape)
    if x.ndim < 1 or not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{fn_name}: expected x_T (a float array (batch, ...)) or a shape "
                         f"tuple; got {type(x_or_shape).__name__} {getattr(x, 'shape', '')}.")
    return x


def _model(fn_name: str, fn: Callable, proc: Process, prediction: str, x: jax.Array):
    """Check fn's output shape once (abstractly) and return eps(x, t), x0(x, t) helpers."""
    _check_prediction(fn_name, prediction)
    out = jax.eval_shape(fn, jax.ShapeDtypeStruct(x.shape, x.dtype), jnp.float32(proc.t_max))
    if out.shape != x.shape:
        raise ValueError(f"{fn_name}: fn(x, t) returned shape {out.shape} for x of shape "
                         f"{x.shape}; it must act on the whole batch and return x's shape "
                         "(wrap a per-example network with inference.score.batched).")


def _eps(fn, proc, prediction, x, t):
    return _to_noise(fn(x, t), x, t, proc, prediction)


def _start(proc: Process, x, start: GaussianStart | None):
    if start is None:
        return x, None
    t = float(start.t)
    if not (proc.t_min < t <= proc.t_max):
        raise ValueError(f"GaussianStart.t={t} must lie in ({proc.t_min}, {proc.t_max}].")
    return gaussian_flow(proc, start.mean, start.cov, x, proc.t_max, t), t


def _finish(x, path, x0, return_path):
    if return_path:
        path = jnp.concatenate([x0[None], path])
    return x, path


# =======================================================================================
# samplers
# =======================================================================================


@eqx.filter_jit
def _em_run(fn, proc, prediction, key, x, steps, schedule, t_start, return_path):
    _model("euler_maruyama", fn, proc, prediction, x)  # at trace time only
    ts = timesteps(proc, steps, schedule, t_start)
    keys = jax.random.split(key, steps)
    last = jnp.arange(steps) == steps - 1

    def body(x, inp):
        (t, t_next), k, is_last = inp
        h = t - t_next
        g = proc.diffusion(t)
        score = -_eps(fn, proc, prediction, x, t) / proc.marginal(t)[1]
        mean = x - h * (proc.drift(x, t) - g**2 * score)
        noise = jnp.where(is_last, 0.0, g * jnp.sqrt(h)) * jax.random.normal(k, x.shape, x.dtype)
        y = mean + noise
        return y, (y if return_path else None)

    pairs = jnp.stack([ts[:-1], ts[1:]], 1)
    x_end, path = jax.lax.scan(body, x, (pairs, keys, last))
    return _finish(x_end, path, x, return_path)


def euler_maruyama(fn: Callable, proc: Process, key: jax.Array, x_T: Any, steps: int, *,
                   prediction: str = "score", schedule: str = "uniform",
                   start: GaussianStart | None = None, return_path: bool = False) -> ScoreSamples:
    r"""Euler-Maruyama on the reverse SDE ``dx = [f(t) x - g(t)^2 score(x, t)] dt + g dW-bar``.

    ``fn(x, t)`` (batched; predicting ``prediction``), ``x_T`` an array or a shape (then
    drawn from the prior with ``key``), ``steps`` steps on the ``schedule`` grid from
    ``t_max`` (or ``start.t``) to ``t_min``; the last step adds no noise. NFE = ``steps``.

    Example:
        >>> import jax
        >>> from models.score_gmm import ring_mixture
        >>> g, p = ring_mixture(4), VP()
        >>> out = euler_maruyama(g.score_fn(p), p, jax.random.key(0), (100, 2), steps=50)
        >>> out.x.shape, out.nfe
        ((100, 2), 50)
    """
    proc = _check_process("euler_maruyama", proc)
    steps = _check_steps("euler_maruyama", steps)
    k0, k1 = jax.random.split(key)
    x = _initial("euler_maruyama", proc, k0, x_T)
    _check_prediction("euler_maruyama", prediction)
    x, t_start = _start(proc, x, start)
    out, path = _em_run(fn, proc, prediction, k1, x, steps, schedule, t_start, return_path)
    return ScoreSamples(out, steps, path)


@eqx.filter_jit
def _ode_run(fn, proc, prediction, x, steps, schedule, t_start, method, return_path):
    _model("pf_ode", fn, proc, prediction, x)
    ts = timesteps(proc, steps, schedule, t_start)

    def body(x, tt):
        t, t_next = tt
        a, s = proc.marginal(t)
        a2, s2 = proc.marginal(t_next)
        r, r2 = s / a, s2 / a2  # the scaled noise level s/a, decreasing
        xbar = x / a
        d = _eps(fn, proc, prediction, x, t)  # d xbar / d r = eps
        xbar2 = xbar + (r2 - r) * d
        if method == "heun":
            d2 = _eps(fn, proc, prediction, a2 * xbar2, t_next)
            xbar2 = xbar + (r2 - r) * 0.5 * (d + d2)
        y = a2 * xbar2
        return y, (y if return_path else None)

    x_end, path = jax.lax.scan(body, x, jnp.stack([ts[:-1], ts[1:]], 1))
    return _finish(x_end, path, x, return_path)


def pf_ode(fn: Callable, proc: Process, key: jax.Array, x_T: Any, steps: int, *,
           method: str = "heun", prediction: str = "score", schedule: str = "edm",
           start: GaussianStart | None = None, return_path: bool = False) -> ScoreSamples:
    r"""The probability-flow ODE ``dx/dt = f x - g^2 score / 2``, by Euler or Heun.

    Integrated in ``xbar = x / a`` against ``r = s / a``, where the ODE reads
    ``d xbar / d r = eps(x, t)`` exactly (the same trajectories; Euler there is DDIM and
    exact for a point mass). Deterministic given ``x_T`` (``key`` only draws ``x_T`` when a
    shape is given). NFE = ``steps`` (Euler) or ``2 steps`` (Heun).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from models.score_gmm import ring_mixture
        >>> g, p = ring_mixture(4), VP()
        >>> xT = p.prior_sample(jax.random.key(0), (64, 2))
        >>> a = pf_ode(g.score_fn(p), p, jax.random.key(1), xT, 10)
        >>> b = pf_ode(g.score_fn(p), p, jax.random.key(2), xT, 10)
        >>> bool(jnp.all(a.x == b.x)), a.nfe
        (True, 20)
    """
    proc = _check_process("pf_ode", proc)
    steps = _check_steps("pf_ode", steps)
    if method not in ("euler", "heun"):
        raise ValueError(f"pf_ode: unknown method {method!r}; expected 'euler' or 'heun'.")
    x = _initial("pf_ode", proc, key, x_T)
    _check_prediction("pf_ode", prediction)
    x, t_start = _start(proc, x, start)
    out, path = _ode_run(fn, proc, prediction, x, steps, schedule, t_start, method, return_path)
    return ScoreSamples(out, steps * (2 if method == "heun" else 1), path)


@eqx.filter_jit
def _dpm_run(fn, proc, prediction, x, steps, order, schedule, t_start, lower_order_final,
             return_path):
    _model("dpm_solver", fn, proc, prediction, x)
    ts = timesteps(proc, steps, schedule, t_start)
    lam = proc.log_snr(ts)
    h_all = lam[1:] - lam[:-1]

    def body(carry, i):
        x, d_prev, d_prev2 = carry  # data predictions at the two previous grid points
        t, t_next = ts[i], ts[i + 1]
        a, s = proc.marginal(t)
        a2, s2 = proc.marginal(t_next)
        h = h_all[i]
        d0 = (x - s * _eps(fn, proc, prediction, x, t)) / a
        phi1 = jnp.expm1(-h)  # e^{-h} - 1
        phi2 = phi1 / h + 1.0
        phi3 = phi2 / h - 0.5
        base = (s2 / s) * x - a2 * phi1 * d0
        h1 = h_all[jnp.maximum(i - 1, 0)]
        h2 = h_all[jnp.maximum(i - 2, 0)]
        slope1 = (d0 - d_prev) / h1  # backward differences in lambda
        slope2 = (d_prev - d_prev2) / h2
        curv = (slope1 - slope2) / (h1 + h2)  # half the second derivative
        deriv = slope1 + curv * h1  # first derivative at lambda_i of the quadratic
        x2 = base + a2 * h * phi2 * slope1
        x3 = base + a2 * h * phi2 * deriv - a2 * h**2 * phi3 * 2.0 * curv
        # effective order: warm up (i + 1 points known), optionally lower at the end
        eff = jnp.minimum(order, i + 1)
        if lower_order_final and steps < 15:
            eff = jnp.minimum(eff, steps - i)
        y = jnp.where(eff >= 3, x3, jnp.where(eff == 2, x2, base))
        return (y, d0, d_prev), (y if return_path else None)

    (x_end, _, _), path = jax.lax.scan(body, (x, jnp.zeros_like(x), jnp.zeros_like(x)),
                                       jnp.arange(steps))
    return _finish(x_end, path, x, return_path)


def dpm_solver(fn: Callable, proc: Process, key: jax.Array, x_T: Any, steps: int, *,
               order: int = 2, prediction: str = "score", schedule: str = "logsnr",
               lower_order_final: bool = True, start: GaussianStart | None = None,
               return_path: bool = False) -> ScoreSamples:
    r"""Multistep exponential integrator of the probability-flow ODE (DPM-Solver++ style).

    In ``lambda = log(a/s)`` the ODE's exact solution from ``t`` to ``t'`` is
    ``x' = (s'/s) x + s' int e^lambda x0_hat(lambda) dlambda``; the solver integrates the
    linear part exactly and a polynomial in ``lambda`` through the last ``order`` data
    predictions (``order`` 1: DDIM; 2 and 3: multistep, the first steps of lower order, and
    with ``lower_order_final`` the last ones too when ``steps < 15``). One evaluation per step:
    NFE = ``steps``. Deterministic given ``x_T``.

    Example:
        >>> import jax
        >>> from models.score_gmm import ring_mixture
        >>> g, p = ring_mixture(4), VE()
        >>> dpm_solver(g.score_fn(p), p, jax.random.key(0), (32, 2), 8, order=3).nfe
        8
    """
    proc = _check_process("dpm_solver", proc)
    steps = _check_steps("dpm_solver", steps)
    if order not in (1, 2, 3):
        raise ValueError(f"dpm_solver: order must be 1, 2 or 3; got {order!r}.")
    x = _initial("dpm_solver", proc, key, x_T)
    _check_prediction("dpm_solver", prediction)
    x, t_start = _start(proc, x, start)
    out, path = _dpm_run(fn, proc, prediction, x, steps, int(order), schedule, t_start,
                         bool(lower_order_final), return_path)
    return ScoreSamples(out, steps, path)


def _langevin_step(score, x, k, step):
    return x + step * score + jnp.sqrt(2.0 * step) * jax.random.normal(k, x.shape, x.dtype)


def _snr_step(score, z, snr):
    n = score.shape[0]
    gnorm = jnp.mean(jnp.linalg.norm(score.reshape(n, -1), axis=1))
    znorm = jnp.mean(jnp.linalg.norm(z.reshape(n, -1), axis=1))
    return 2.0 * (snr * znorm / jnp.maximum(gnorm, 1e-12)) ** 2


@eqx.filter_jit
def _pc_run(fn, proc, prediction, key, x, steps, corrector_steps, snr, schedule, return_path):
    _model("predictor_corrector", fn, proc, prediction, x)
    ts = timesteps(proc, steps, schedule)
    keys = jax.random.split(key, (steps, corrector_steps + 1))
    last = jnp.arange(steps) == steps - 1

    def score_at(x, t):
        return -_eps(fn, proc, prediction, x, t) / proc.marginal(t)[1]

    def body(x, inp):
        (t, t_next), ks, is_last = inp
        h = t - t_next
        g = proc.diffusion(t)
        mean = x - h * (proc.drift(x, t) - g**2 * score_at(x, t))
        x = mean + jnp.where(is_last, 0.0, g * jnp.sqrt(h)) * jax.random.normal(ks[0], x.shape)

        def correct(x, k):  # Langevin on p_{t_next}, step from the target signal-to-noise
            sc = score_at(x, t_next)
            kz, kn = jax.random.split(k)
            z = jax.random.normal(kz, x.shape, x.dtype)
            eps_l = _snr_step(sc, z, snr)
            return x + eps_l * sc + jnp.sqrt(2.0 * eps_l) * z, None

        x, _ = jax.lax.scan(correct, x, ks[1:])
        return x, (x if return_path else None)

    pairs = jnp.stack([ts[:-1], ts[1:]], 1)
    x_end, path = jax.lax.scan(body, x, (pairs, keys, last))
    return _finish(x_end, path, x, return_path)


def predictor_corrector(fn: Callable, proc: Process, key: jax.Array, x_T: Any, steps: int, *,
                        corrector_steps: int = 1, snr: float = 0.1, prediction: str = "score",
                        schedule: str = "uniform", return_path: bool = False) -> ScoreSamples:
    r"""Euler-Maruyama predictor, then ``corrector_steps`` Langevin corrector steps at the new time.

    The corrector step is ``x + e score + sqrt(2 e) z`` with ``e = 2 (snr |z| / |score|)^2``
    (batch means of the per-draw norms), so the drift move ``e |score|`` is ``snr`` times
    the noise move ``sqrt(2 e) |z|`` whatever the noise level (Song et al. 2021). NFE = ``steps (1 + corrector_steps)``.

    Example:
        >>> import jax
        >>> from models.score_gmm import ring_mixture
        >>> g, p = ring_mixture(4), VP()
        >>> predictor_corrector(g.score_fn(p), p, jax.random.key(0), (32, 2), 20).nfe
        40
    """
    proc = _check_process("predictor_corrector", proc)
    steps = _check_steps("predictor_corrector", steps)
    corrector_steps = _check_steps("predictor_corrector", corrector_steps, "corrector_steps")
    if not snr > 0:
        raise ValueError(f"predictor_corrector: snr must be > 0; got {snr}.")
    k0, k1 = jax.random.split(key)
    x = _initial("predictor_corrector", proc, k0, x_T)
    _check_prediction("predictor_corrector", prediction)
    out, path = _pc_run(fn, proc, prediction, k1, x, steps, corrector_steps, float(snr),
                        schedule, return_path)
    return ScoreSamples(out, steps * (1 + corrector_steps), path)


@eqx.filter_jit
def _ald_run(fn, proc, prediction, key, x, steps, steps_per_level, step_size, schedule,
             return_path):
    _model("annealed_langevin", fn, proc, prediction, x)
    ts = timesteps(proc, steps, schedule)[1:]  # the levels, ending at t_min
    keys = jax.random.split(key, (steps, steps_per_level))

    def level(x, inp):
        t, ks = inp
        s = proc.marginal(t)[1]
        step = step_size * s**2

        def move(x, k):
            sc = -_eps(fn, proc, prediction, x, t) / s
            return _langevin_step(sc, x, k, step), None

        x, _ = jax.lax.scan(move, x, ks)
        return x, (x if return_path else None)

    x_end, path = jax.lax.scan(level, x, (ts, keys))
    return _finish(x_end, path, x, return_path)


def annealed_langevin(fn: Callable, proc: Process, key: jax.Array, x_T: Any, steps: int, *,
                      steps_per_level: int = 10, step_size: float = 0.05,
                      prediction: str = "score", schedule: str = "uniform",
                      return_path: bool = False) -> ScoreSamples:
    r"""Annealed Langevin dynamics: ``steps`` noise levels ``t_1 > ... > t_min``, at each
    ``steps_per_level`` unadjusted Langevin steps on ``p_t`` with step ``step_size s(t)^2``.

    The step shrinks with the noise scale as in Song & Ermon (2019) (``eps sigma_i^2 /
    sigma_L^2`` there); the last level is at ``t_min``. NFE = ``steps * steps_per_level``.

    Example:
        >>> import jax
        >>> from models.score_gmm import ring_mixture
        >>> g, p = ring_mixture(4), VE()
        >>> annealed_langevin(g.score_fn(p), p, jax.random.key(0), (32, 2), 20, steps_per_level=5).nfe
        100
    """
    proc = _check_process("annealed_langevin", proc)
    steps = _check_steps("annealed_langevin", steps)
    steps_per_level = _check_steps("annealed_langevin", steps_per_level, "steps_per_level")
    if not step_size > 0:
        raise ValueError(f"annealed_langevin: step_size must be > 0; got {step_size}.")
    k0, k1 = jax.random.split(key)
    x = _initial("annealed_langevin", proc, k0, x_T)
    _check_prediction("annealed_langevin", prediction)
    out, path = _ald_run(fn, proc, prediction, k1, x, steps, steps_per_level, float(step_size),
                         schedule, return_path)
    return ScoreSamples(out, steps * steps_per_level, path)


# =======================================================================================
# unnormalised targets
# =======================================================================================


@eqx.filter_jit
def _target_run(logdensity_fn, key, x, levels, steps_per_level, step_size, path, particles,
                reference_scale):
    grad_lp = jax.vmap(jax.grad(logdensity_fn))
    lp = jax.vmap(logdensity_fn)
    keys = jax.random.split(key, (levels.shape[0], steps_per_level))

    def tempered_score(x, beta, _k):
        return beta * grad_lp(x) - (1.0 - beta) * x / reference_scale**2

    def smoothed_score(x, sigma, k):
        # grad log (pi * N(0, sigma^2)) (x) = E_w[grad log pi(x + sigma z)], w ~ pi(x + sigma z),
        # by self-normalised importance sampling with `particles` draws of z per point.
        z = jax.random.normal(k, (particles,) + x.shape, x.dtype)
        z = z.at[0].set(0.0) if particles > 1 else z * 0.0  # include the point itself
        y = x[None] + sigma * z
        flat = y.reshape((-1,) + x.shape[1:])
        logw = lp(flat).reshape(particles, x.shape[0])
        g = grad_lp(flat).reshape(y.shape)
        w = jax.nn.softmax(jnp.where(jnp.isfinite(logw), logw, -jnp.inf), axis=0)
        return jnp.einsum("pn,pn...->n...", w, g)

    score = tempered_score if path == "tempered" else smoothed_score

    def level(x, inp):
        lv, ks = inp
        step = step_size if path == "tempered" else step_size * (1.0 + lv**2)

        def move(x, k):
            ks_, kn = jax.random.split(k)
            return _langevin_step(score(x, lv, ks_), x, kn, step), None

        x, _ = jax.lax.scan(move, x, ks)
        return x, None

    x, _ = jax.lax.scan(level, x, (levels, keys))
    return x


def sample_target(target: Any, key: jax.Array, num_samples: int, *, path: str = "tempered",
                  levels: int = 20, steps_per_level: int = 50, step_size: float = 0.05,
                  schedule: jax.Array | None = None, particles: int = 8,
                  reference_scale: float = 1.0, max_sigma: float = 2.0,
                  x0: jax.Array | None = None) -> ScoreSamples:
    r"""Annealed Langevin on an unnormalised density along a path ending at the target.

    ``target``: a flat ``logdensity_fn(x)`` of one ``(d,)`` position (then give ``x0``) or a
    ``ppl.potential(...)`` (flat unconstrained positions; map back with
    ``jax.vmap(pot.unravel)`` and ``pot.to_constrained``).

    * ``path="tempered"``: ``log p_beta = beta log pi + (1 - beta) log N(0, reference_scale^2 I)``,
      ``beta`` from the ``schedule`` (default geometric ``1e-2 .. 1``), exact scores.
    * ``path="smoothed"``: ``p_sigma = pi * N(0, sigma^2 I)``, ``sigma`` decreasing from
      ``max_sigma`` to 0 (default geometric, then 0); the score ``E_w[grad log pi(x + sigma z)]``
      is a self-normalised estimate with ``particles`` draws (biased for finite particles,
      exact at ``sigma = 0``), so NFE per step = ``particles`` gradient evaluations.

    ULA steps of ``step_size`` (times ``1 + sigma^2`` on the smoothed path), ``steps_per_level``
    per level. Start: ``x0`` or ``N(0, reference_scale^2 I)``.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro.distributions as dist, ppl
        >>> def model():
        ...     ppl.sample("m", dist.Normal(3.0, 0.5))
        >>> out = sample_target(ppl.potential(model), jax.random.key(0), 500, levels=10)
        >>> round(float(out.x.mean()), 1), out.nfe
        (3.0, 500)
    """
    if path not in ("tempered", "smoothed"):
        raise ValueError(f"sample_target: unknown path {path!r}; expected 'tempered' or 'smoothed'.")
    levels = _check_steps("sample_target", levels, "levels")
    steps_per_level = _check_steps("sample_target", steps_per_level, "steps_per_level")
    particles = _check_steps("sample_target", particles, "particles")
    num_samples = _check_steps("sample_target", num_samples, "num_samples")
    if not step_size > 0:
        raise ValueError(f"sample_target: step_size must be > 0; got {step_size}.")
    if hasattr(target, "flat_logdensity_fn") and hasattr(target, "dimension"):
        logdensity_fn, dim = target.flat_logdensity_fn, target.dimension
    elif callable(target):
        if x0 is None:
            raise ValueError("sample_target: with a plain logdensity_fn give x0 (num_samples, d) "
                             "or pass a ppl.potential (its dimension is known).")
        logdensity_fn, dim = target, None
    else:
        raise TypeError(f"sample_target: target must be a ppl.potential or a callable; got "
                        f"{type(target).__name__}.")
    k0, k1 = jax.random.split(key)
    if x0 is None:
        x = reference_scale * jax.random.normal(k0, (num_samples, dim))
    else:
        x = jnp.asarray(x0, jnp.float32)
        if x.ndim != 2 or x.shape[0] != num_samples or (dim is not None and x.shape[1] != dim):
            raise ValueError(f"sample_target: x0 must have shape ({num_samples}, "
                             f"{dim if dim is not None else 'd'}); got {x.shape}.")
    if schedule is None:
        if path == "tempered":
            schedule = jnp.geomspace(1e-2, 1.0, levels)
        else:
            schedule = jnp.concatenate([jnp.geomspace(max_sigma, 1e-2, levels - 1), jnp.zeros(1)]) \
                if levels > 1 else jnp.zeros(1)
    schedule = jnp.asarray(schedule, jnp.float32)
    if schedule.shape != (levels,):
        raise ValueError(f"sample_target: schedule must have shape ({levels},); got {schedule.shape}.")
    out = _target_run(logdensity_fn, k1, x, schedule, steps_per_level, float(step_size), path,
                      particles, float(reference_scale))
    per_step = 1 if path == "tempered" else particles
    return ScoreSamples(out, levels * steps_per_level * per_step, None)


# =======================================================================================
# score priors with a likelihood
# =======================================================================================


class _PosteriorScore(eqx.Module):
    prior: Callable
    proc: Process
    log_likelihood: Callable
    prediction: str
    scale: float
    batched: bool
    max_ratio: float | None

    def __call__(self, x, t):
        a, s = self.proc.marginal(t)

        def guided(x):
            out = self.prior(x, t)
            eps = _to_noise(out, x, t, self.proc, self.prediction)
            x0 = (x - s * eps) / a
            ll = self.log_likelihood(x0) if self.batched else jax.vmap(self.log_likelihood)(x0)
            return jnp.sum(ll), eps

        grad_ll, eps = jax.grad(guided, has_aux=True)(x)
        score = -eps / s
        guide = self.scale * grad_ll
        if self.max_ratio is not None:  # per draw: |guide| <= max_ratio |score|
            n = x.shape[0]
            gn = jnp.linalg.norm(guide.reshape(n, -1), axis=1)
            sn = jnp.linalg.norm(score.reshape(n, -1), axis=1)
            f = jnp.minimum(1.0, self.max_ratio * sn / jnp.maximum(gn, 1e-30))
            guide = jnp.where(jnp.isfinite(guide), guide, 0.0) * _bcast(f, x)
        return score + guide


def posterior_score(prior: Callable, proc: Process, log_likelihood: Callable, *,
                    prediction: str = "score", scale: float = 1.0,
                    batched: bool = False, max_ratio: float | None = None) -> Callable:
    r"""The guided score ``score_prior(x, t) + scale * grad_x log p(y | x0_hat(x, t))``.

    ``x0_hat = E[x0 | x_t]`` is the prior's Tweedie denoiser, differentiated through the
    prior network (diffusion posterior sampling, Chung et al. 2023: ``p(y | x_t)`` approximated
    by ``p(y | x0_hat)``). ``log_likelihood(x0)`` takes one clean example (see
    :func:`observation_loglik`); with ``batched=True`` it takes the whole batch ``(n, ...)``
    instead (e.g. a model with one observation per draw). With a learned prior, the
    Tweedie Jacobian at high noise carries the network's error divided by ``a(t)``;
    ``max_ratio`` caps each draw's guidance at ``max_ratio`` times its prior score's norm
    (a stabiliser; ``None``: no cap). The result is a batched ``fn(x, t)`` predicting the score,
    usable by every sampler (one prior evaluation and its VJP per call; counted as one NFE).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from models.score_gmm import ring_mixture
        >>> g, p = ring_mixture(4), VP()
        >>> ll = lambda x0: -0.5 * jnp.sum((x0[0] - 2.0) ** 2) / 0.1**2  # observe x[0] = 2
        >>> fn = posterior_score(g.score_fn(p), p, ll)
        >>> out = euler_maruyama(fn, p, jax.random.key(0), (200, 2), 200)
        >>> round(float(out.x[:, 0].mean()), 1)
        2.0
    """
    _check_prediction("posterior_score", prediction)
    proc = _check_process("posterior_score", proc)
    if not callable(log_likelihood):
        raise TypeError("posterior_score: log_likelihood must be a callable x0 -> log p(y | x0).")
    return _PosteriorScore(prior, proc, log_likelihood, prediction, float(scale), bool(batched),
                           None if max_ratio is None else float(max_ratio))


def observation_loglik(model: Callable, *args: Any, **kwargs: Any) -> Callable:
    """``x0 -> log p(observed sites | x0)`` from a NumPyro observation model ``model(x0, *args,
    **kwargs)`` whose sample sites are all observed (``obs=...``).

    Example:
        >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist
        >>> def obs(x, y=None):
        ...     numpyro.sample("y", dist.Normal(x[:1], 0.5).to_event(1), obs=y)
        >>> ll = observation_loglik(obs, y=jnp.array([1.0]))
        >>> round(float(ll(jnp.array([1.0, 7.0]))), 4)  # log N(1; 1, 0.5)
        -0.2258
    """
    from numpyro import handlers
    from numpyro.infer import util as numpyro_util

    def loglik(x0):
        tr = handlers.trace(handlers.seed(model, 0)).get_trace(x0, *args, **kwargs)
        latent = [n for n, site in tr.items() if site["type"] == "sample" and not site["is_observed"]]
        if latent:
            raise ValueError(f"observation_loglik: model {getattr(model, '__name__', model)!r} "
                             f"has unobserved sample sites {latent}; an observation model must "
                             "observe all its sites (fix or observe them).")
        return numpyro_util.log_density(model, (x0,) + args, kwargs, {})[0]

    return loglik
