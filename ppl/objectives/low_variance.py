"""Lower-variance gradients for the guide: sticking the landing (ELBO) and DReG (IWAE).

Both estimate the same gradient as the standard estimator (they are unbiased), with less
noise, by dropping the *score* term ``d/dphi log q_phi(z)|_{z fixed}`` of the guide's
parameters ``phi`` and keeping only the *path* through the reparameterised draws
``z = T_phi(eps)``:

* **STL** (sticking the landing, Roeder et al. 2017), for the ELBO:
  ``d/dphi [log p(x, z) - log q_{phi'}(z)]`` with ``z = T_phi(eps)`` and ``phi' = phi`` held
  fixed. The dropped score term has expectation zero, so the estimate stays unbiased; when
  ``q = p(z | x)`` the remaining term is exactly zero for every ``eps`` (zero variance at the
  optimum), where the standard estimator's is not.
* **DReG** (doubly reparameterised gradient, Tucker et al. 2019), for IWAE_K:
  ``sum_k wbar_k^2 d/dphi log w_k(z_k)`` with ``wbar_k`` the self-normalised weights and the
  same path-only derivative of ``log w_k = log p(x, z_k) - log q_{phi'}(z_k)``. This is the
  standard IWAE guide gradient with the score term rewritten by a second reparameterisation
  (unbiased, and its signal-to-noise ratio does not decay as ``K`` grows).

Which parameters: only the guide's. The model's parameters ``theta`` get the usual gradient
(``E[d/dtheta log p(x, z)]`` for the ELBO, ``E[sum_k wbar_k d/dtheta log p(x, z_k)]`` for
IWAE). A param site that the model and the guide share gets the sum of both.

What they need: every latent site of the guide reparameterised (gradient strategy
:class:`ppl.strategy.Reparam`, the default for Normal, flows, Gamma, ...), and a guide whose
density can be evaluated at its own draws (plain NumPyro programs; not ``ppl.marginal`` /
``ppl.normalize``). A site with another strategy is an :class:`LowVarianceError` naming it.

Cost: per particle, the guide's density once more (``log q_{phi'}(z)``, parameters held
fixed) and the model's twice (along the path, and at the draw held fixed for the model's
parameters). A site whose distribution pushes noise forward (``__ppl_reparam__``: the flows
of ``inference.guides.flow``) is scored at its own draw ``x = T(eps)`` by the forward pass at
``eps``, with the derivative of ``T^{-1}`` taken from the Jacobian ``dT/deps`` (``D``
forward-mode passes and a ``D x D`` solve per draw, in the backward pass only), so the flow is
never inverted numerically (a spline's inverse can be inaccurate in float32).

Example (at the exact posterior the STL gradient is zero for every draw):
    >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
    >>> def model(x):
    ...     z = numpyro.sample("z", dist.Normal(0.0, 1.0))
    ...     numpyro.sample("x", dist.Normal(z, 1.0), obs=x)
    >>> def guide(x):
    ...     numpyro.sample("z", dist.Normal(numpyro.param("m", 0.0),
    ...                                     jnp.exp(numpyro.param("log_s", 0.0))))
    >>> exact = {"m": jnp.array(0.5), "log_s": -0.5 * jnp.log(2.0)}
    >>> g = ppl.objectives.elbo(model, guide, gradient="stl").grad_estimate(
    ...     jax.random.key(3), exact, 1.0)[0]
    >>> [round(abs(float(g[k])), 5) for k in ("m", "log_s")]
    [0.0, 0.0]
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpyro
from numpyro.primitives import Messenger

from ppl.choice import bind_choice
from ppl.errors import ModelError
from ppl.expectation import density, density_trace, sim
from ppl.params import no_grad, with_params
from ppl.strategy import Reparam, resolve_strategy
from ppl.tracing import model_name

from ppl.objectives.particles import log_mean_exp, particles

__all__ = ["GRADIENTS", "LowVarianceError", "check_gradient", "dreg_iwae", "stl_elbo"]

#: The gradient estimators each bound offers (``gradient=`` of :func:`ppl.objectives.elbo`
#: and :func:`ppl.objectives.iwae`).
GRADIENTS = {"elbo": ("standard", "stl"), "iwae": ("standard", "dreg")}


class LowVarianceError(ModelError):
    """A guide that STL / DReG cannot apply to (the message names the site and what to do)."""


def check_gradient(gradient: Any, objective: str) -> str:
    """``gradient`` if it is one of ``GRADIENTS[objective]``, else a ``ValueError`` listing them.

    Example:
        >>> check_gradient("dreg", "iwae")
        'dreg'
    """
    allowed = GRADIENTS[objective]
    if not isinstance(gradient, str) or gradient not in allowed:
        hint = ""
        if objective == "iwae" and gradient == "stl":
            hint = (" (sticking the landing is biased for IWAE with K > 1; DReG is its unbiased "
                    "counterpart)")
        elif objective == "elbo" and gradient == "dreg":
            hint = " (DReG is for IWAE; for the ELBO, where it equals STL, use 'stl')"
        raise ValueError(
            f"{objective}: gradient={gradient!r} is not one of {list(allowed)}{hint}."
        )
    return gradient


def check_guide(guide: Callable, what: str) -> None:
    """Refuse approximate programs (``ppl.marginal``, ``ppl.normalize``) as guides of ``what``."""
    if getattr(guide, "__ppl_sim__", None) is not None:
        raise LowVarianceError(
            f"{what}: the guide {model_name(guide)} is an approximate program (ppl.marginal or "
            "ppl.normalize) whose density is only estimated, so its score term cannot be "
            "separated from the path term; use gradient='standard' (or the hierarchical "
            "objectives hvi / iwhvi / diwhvi)."
        )


class _ReparamDraws(Messenger):
    """Draws the guide's latent sites for :func:`ppl.sim`, refusing any that is not Reparam.

    Around the guide, inside ``sim``'s handlers: it sees the strategy set by
    ``infer={"grad": ...}`` or :func:`ppl.strategies` (inner handlers run first), and a site
    whose distribution pushes noise forward (``__ppl_reparam__``: a flow) is drawn here as
    ``sim`` would draw it (the noise ``eps`` is the random choice, the value and its log
    density come from the forward pass), keeping ``eps`` in ``self.noise`` so that the path
    term can score the value without inverting the flow (:func:`_log_q_at_draw`)."""

    def __init__(self, fn: Callable, what: str, program: Callable):
        self.what, self.program = what, program
        self.noise: dict[str, jax.Array] = {}
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] != "sample" or msg["is_observed"] or msg["value"] is not None:
            return
        name, fn = msg["name"], msg["fn"]
        strategy = resolve_strategy(name, fn, (msg.get("infer") or {}).get("grad"))
        if not isinstance(strategy, Reparam):
            raise LowVarianceError(
                f"{self.what}: guide site '{name}' of {model_name(self.program)} "
                f"({type(fn).__name__}) has gradient strategy {strategy!r}, not Reparam; "
                "this estimator differentiates through reparameterised draws only. Use "
                "gradient='standard' for this guide, or give the site a reparameterisable "
                "distribution (or infer={'grad': 'reparam'} where it has one)."
            )
        reparam = getattr(fn, "__ppl_reparam__", None)
        if reparam is None:
            return
        key = numpyro.prng_key()
        if key is None:  # not under an objective: leave the site to sim (which says why)
            return
        noise, push = reparam()
        sample_shape = tuple(msg["kwargs"].get("sample_shape", ()) or ())
        eps = bind_choice(key, noise, name=name, strategy=strategy, sample_shape=sample_shape)
        msg["value"], msg["intermediates"] = push(eps)
        self.noise[name] = eps


@jax.custom_jvp
def _implicit_inverse(fn: Any, eps: jax.Array, x: jax.Array) -> jax.Array:
    """``T^{-1}(x)`` for ``x = T(eps)`` of the pushed distribution ``fn``: ``eps`` itself,
    with the derivative of the inverse, ``d eps = (dT/deps)^{-1} dx``, from the forward pass
    (no numerical inversion). Derivatives w.r.t. ``fn`` and ``eps`` are not formed (both are
    held fixed where it is used)."""
    return eps


@_implicit_inverse.defjvp
def _implicit_inverse_jvp(primals, tangents):
    fn, eps, _ = primals
    dx = tangents[2]
    dim = eps.shape[-1]
    push = fn.__ppl_reparam__()[1]
    jac = jax.vmap(jax.jacfwd(lambda e: push(e)[0]))(eps.reshape(-1, dim))
    deps = _solve(jac, dx.reshape(-1, dim))
    return eps, deps.reshape(eps.shape).astype(eps.dtype)


def _solve(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a^{-1} b`` for ``a`` of shape ``(..., D, D)``, ``b`` of shape ``(..., D)``: Gauss-Jordan
    elimination with partial pivoting, unrolled over the static ``D``.

    Plain XLA operations, no LAPACK call: an executable calling LAPACK (``jnp.linalg.solve``
    on the CPU) crashes when it is serialized and loaded in another process, as
    ``inference``'s program store does with the training programs.

    Example:
        >>> import jax.numpy as jnp
        >>> _solve(jnp.array([[0.0, 2.0], [1.0, 1.0]]), jnp.array([2.0, 3.0])).tolist()
        [2.0, 1.0]
    """
    # The row operations are applied to ``a`` and, separately, to ``b``: the result stays
    # linear in ``b`` (a tangent inside a jvp rule), so JAX can transpose it.
    dim = a.shape[-1]
    rows = jnp.arange(dim)
    for k in range(dim):
        p = k + jnp.argmax(jnp.abs(a[..., k:, k]), axis=-1)  # the pivot's row
        swap = jnp.where(rows == k, p[..., None], jnp.where(rows == p[..., None], k, rows))
        a = jnp.take_along_axis(a, swap[..., None], axis=-2)
        b = jnp.take_along_axis(b, swap, axis=-1)
        pivot = a[..., k, k]
        a_row, b_k = a[..., k:k + 1, :] / pivot[..., None, None], b[..., k] / pivot
        column = jnp.where(rows == k, 0.0, a[..., :, k])  # what row k is subtracted with
        a = jnp.where((rows == k)[:, None], a_row, a - column[..., :, None] * a_row)
        b = jnp.where(rows == k, b_k[..., None], b - column * b_k[..., None])
    return b


def _log_q_at_draw(fn: Any, eps: jax.Array, x: jax.Array) -> jax.Array:
    """``log q(x)`` of a pushed distribution at its own draw ``x = T(eps)``: the forward
    pass's value at ``eps``, differentiable in ``x`` through the implicit inverse."""
    fn, eps = _sg(fn), _sg(eps)
    return fn.__ppl_reparam__()[1](_implicit_inverse(fn, eps, x))[1][0]


def _sg(tree):
    return jax.tree_util.tree_map(jax.lax.stop_gradient, tree)


def _guide_log_q_fixed(q_fixed: Callable, z: dict, noise: dict, args: tuple) -> jax.Array:
    """``log q_{phi'}(z)`` with the guide's parameters held fixed, summed over its latent
    sites as :func:`ppl.sim` sums them; sites drawn from pushed noise (flows) are scored by
    their forward pass (:func:`_log_q_at_draw`), the others by ``log_prob``."""
    trace = density_trace(q_fixed, z, *args)
    total = jnp.zeros(())
    for name, site in trace.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        if name in noise:
            term = jnp.sum(_log_q_at_draw(site["fn"], noise[name], site["value"]))
        else:
            term = jnp.sum(site["fn"].log_prob(site["value"]))
        total = total + (term if site.get("scale") is None else site["scale"] * term)
    return total


def _path_parts(model: Callable, guide: Callable, params: dict, args: tuple, what: str):
    """One particle: ``(log_w, path_log_w, model_log_p)``, each a scalar.

    * ``log_w = log p(x, z) - log q(z)``, ``z ~ q``: the log weight (only its value is used);
    * ``path_log_w``: the same with every parameter held fixed, so that the guide's
      parameters act only through the draw ``z = T_phi(eps)`` (the path term);
    * ``model_log_p = log p(x, z)`` at ``z`` held fixed: the model parameters' term.

    Costs one draw from the guide, one more guide density and two model densities."""
    p, q = with_params((model, guide), params)
    p_fixed, q_fixed = with_params((no_grad(model), no_grad(guide)), params)
    draws = _ReparamDraws(q, what, guide)
    z, log_q = sim(draws, *args)
    model_log_p = density(p, _sg(z), *args)
    path_log_w = density(p_fixed, z, *args) - _guide_log_q_fixed(q_fixed, z, draws.noise, args)
    return model_log_p - log_q, path_log_w, model_log_p


def _with_grad(value: jax.Array, *terms: tuple[jax.Array, jax.Array]) -> jax.Array:
    """``value`` (held fixed) plus ``sum weight * (t - stop_gradient(t))`` over ``(weight, t)``:
    the value of ``value``, the gradient of ``sum weight * t`` with the weights held fixed."""
    out = _sg(value)
    for weight, t in terms:
        out = out + jnp.sum(_sg(weight) * (t - _sg(t)))
    return out


def stl_elbo(model: Callable, guide: Callable, params: dict, *args: Any) -> jax.Array:
    """One ELBO estimate with sticking the landing's guide gradient, to call inside an
    ``@ppl.expectation`` (:func:`ppl.objectives.elbo` with ``gradient="stl"`` does).

    The value is ``log p(x, z) - log q(z)`` for one draw ``z ~ q``. Its gradient: w.r.t. the
    guide's parameters the path term only, ``d/dphi [log p(x, T_phi(eps)) -
    log q_{phi'}(T_phi(eps))]`` at ``phi' = phi`` held fixed; w.r.t. the model's the usual
    ``d/dtheta log p(x, z)``. Unbiased for the ELBO's gradient (the dropped score term has
    mean zero). Needs reparameterised guide sites (a :class:`LowVarianceError` names any
    other).

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
        >>> def model():
        ...     numpyro.sample("z", dist.Normal(0.0, 1.0))
        >>> def guide():
        ...     numpyro.sample("z", dist.Normal(numpyro.param("m", 0.0), 1.0))
        >>> obj = ppl.expectation(lambda prm: stl_elbo(model, guide, prm))
        >>> float(obj.grad_estimate(jax.random.key(0), {"m": jnp.array(0.0)})[0]["m"])
        0.0
    """
    what = "elbo(gradient='stl')"
    check_guide(guide, what)
    log_w, path_log_w, model_log_p = _path_parts(model, guide, params, args, what)
    return _with_grad(log_w, (1.0, path_log_w), (1.0, model_log_p))


def dreg_iwae(model: Callable, guide: Callable, K: int, params: dict, *args: Any) -> jax.Array:
    """One IWAE_K estimate with the doubly reparameterised guide gradient, to call inside an
    ``@ppl.expectation`` (:func:`ppl.objectives.iwae` with ``gradient="dreg"`` does).

    The value is ``log (1/K) sum_k w_k``, ``z_k ~ q`` independent. Its gradient, with
    ``wbar_k = w_k / sum_j w_j``: w.r.t. the guide's parameters
    ``sum_k wbar_k^2 d/dphi log w_k`` through the draws ``z_k = T_phi(eps_k)`` only (the
    guide's density held at ``phi' = phi``); w.r.t. the model's the usual
    ``sum_k wbar_k d/dtheta log p(x, z_k)``. Unbiased for IWAE_K's gradient (Tucker et al.
    2019, eq. 8). With ``K = 1`` it is :func:`stl_elbo`. Needs reparameterised guide sites.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, ppl
        >>> def model():
        ...     numpyro.sample("z", dist.Normal(0.0, 1.0))
        >>> def guide():
        ...     numpyro.sample("z", dist.Normal(numpyro.param("m", 0.0), 1.0))
        >>> obj = ppl.expectation(lambda prm: dreg_iwae(model, guide, 4, prm))
        >>> float(obj.grad_estimate(jax.random.key(0), {"m": jnp.array(0.0)})[0]["m"])
        0.0
    """
    what = "iwae(gradient='dreg')"
    check_guide(guide, what)
    log_w, path_log_w, model_log_p = particles(
        lambda: _path_parts(model, guide, params, args, what), K)
    wbar = jax.nn.softmax(_sg(log_w))
    return _with_grad(log_mean_exp(log_w), (wbar**2, path_log_w), (wbar, model_log_p))
