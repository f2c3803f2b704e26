"""The AIR-like model (models/discrete_vi/air.py), its estimators and its benchmark problem.

* the model and guide trace with the documented shapes, in float32 and float64;
* the ELBO with the count enumerated (``ppl.Enum``) equals, value and gradient, the
  brute-force sum over the four counts at fixed parameters and fixed continuous noise;
* the REINFORCE (with and without baseline) and MVD gradient estimates of the count are
  unbiased: paired with the enumerated gradient at the same key (so the same where/what
  noise), the difference has mean zero;
* the hand-written log weight agrees with ``ppl.density - log q`` of the NumPyro programs;
* ``bench.discrete_vi_air.problem(quick=True)`` builds, and every contestant's step and
  gradient run and stay finite.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.primitives import Messenger

import ppl
from models.discrete_vi import air

DTYPES = ["float32", "float64"]
# float64 variants of the cheap checks run in the slow suite (the float32 one stays)
DTYPES_SLOW64 = ["float32", pytest.param("float64", marks=pytest.mark.slow)]


@functools.cache
def _setup(dtype: str, n: int = 4, hidden: int = air.HIDDEN, decoder_hidden: int = 64):
    enc, dec = air.make_networks(jax.random.key(0), hidden, decoder_hidden)
    x = jnp.asarray(air.make_data(n, seed=3).canvases, dtype)
    return enc, dec, air.init_params(enc, dec), x


@pytest.mark.parametrize("dtype", DTYPES_SLOW64)
def test_model_and_guide_trace_with_the_right_shapes(dtype):
    with jax.enable_x64(dtype == "float64"):
        enc, dec, params, x = _setup(dtype)
        model, guide = air.make_air(enc, dec)

        @jax.jit  # one compiled program instead of hundreds of eager operations
        def traced(params, x):
            p, q = ppl.with_params((model, guide), params)
            guide_tr = handlers.trace(handlers.seed(q, 0)).get_trace(x)
            values = {k: s["value"] for k, s in guide_tr.items() if s["type"] == "sample"}
            model_tr = handlers.trace(handlers.substitute(handlers.seed(p, 1), values)).get_trace(x)
            obs = model_tr["x"]
            return values, obs["fn"].mean, obs["fn"].log_prob(obs["value"]), ppl.log_density(
                p, values, x)

        values, mean, log_lik, lp = traced(params, x)
        assert sorted(values) == ["count", "what_0", "what_1", "what_2", "where_0", "where_1",
                                  "where_2"]
        assert values["count"].shape == (4,)
        for i in range(air.SLOTS):
            assert values[f"where_{i}"].shape == (4, 3)
            assert values[f"what_{i}"].shape == (4, 4)
            assert values[f"where_{i}"].dtype == jnp.dtype(dtype)
        assert mean.shape == (4, 400) and mean.dtype == jnp.dtype(dtype)
        assert log_lik.shape == (4,)  # one likelihood term per canvas (event: the 400 pixels)
        assert jnp.isfinite(lp) and lp.dtype == jnp.dtype(dtype)
        init = jax.jit(lambda x: ppl.init_params((model, guide), jax.random.key(0), x))(x)
        assert sorted(init) == sorted(params)


@pytest.mark.parametrize("dtype", DTYPES_SLOW64)
def test_data_renders_the_true_number_of_digits(dtype):
    d = air.make_data(64, seed=0)
    ink = d.canvases.reshape(64, -1).sum(-1)
    # an empty canvas is blank; each digit adds ink (sklearn digits carry ~29 grey units).
    assert np.all(ink[d.counts == 0] == 0.0)
    for k in (1, 2, 3):
        assert np.all(ink[d.counts == k] > 10.0 * k)
    # a sprite of ones renders to ones in its interior (the windows sum to ~1)
    with jax.enable_x64(dtype == "float64"):
        img = air.render(jnp.ones((8, 8), dtype), jnp.zeros(3, dtype))
        assert img.dtype == jnp.dtype(dtype)
        assert abs(float(img[9, 9]) - 1.0) < 0.05  # ripple of the Gaussian windows: ~1.5% per axis


def test_hand_written_log_weight_is_log_p_minus_log_q_of_the_programs():
    with jax.enable_x64(True):
        enc, dec, params, x = _setup("float64")
        model, guide = air.make_air(enc, dec)
        count = jnp.array([0, 1, 2, 3])
        k_w, k_h = jax.random.split(jax.random.key(5))
        eps_w = jax.random.normal(k_w, (4, air.SLOTS, 3), jnp.float64)
        eps_h = jax.random.normal(k_h, (4, air.SLOTS, 4), jnp.float64)

        @jax.jit
        def both(params, x, eps_w, eps_h):
            net_enc, net_dec = air.networks(params, enc, dec)
            _, h0 = air.count_logits(net_enc, x)

            def draw(kind, i, used_i, loc, scale):
                eps = (eps_w if kind == "where" else eps_h)[:, i]
                return jnp.where(used_i[:, None], loc + scale * eps, eps)

            where, what = air.attend(net_enc, net_dec, x, h0, jnp.arange(3) < count[:, None],
                                     draw)
            values = {"count": count}
            for i in range(air.SLOTS):
                values[f"where_{i}"], values[f"what_{i}"] = where[:, i], what[:, i]
            p, q = ppl.with_params((model, guide), params)
            # per canvas: the model's sites' log densities minus the guide's, from NumPyro
            expected = (sum(_per_element(p, values, x).values())
                        - sum(_per_element(q, values, x).values()))
            return air.log_weight(params, x, count, eps_w, eps_h, enc, dec), expected

        got, expected = both(params, x, eps_w, eps_h)
        assert expected.shape == (4,)
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-8)


def _per_element(program, values, x) -> dict:
    tr = handlers.trace(handlers.substitute(program, values)).get_trace(x)
    return {k: s["fn"].log_prob(s["value"]) for k, s in tr.items() if s["type"] == "sample"}


class _PointMassCount(Messenger):
    """The guide with the count site's distribution replaced by a point mass ``onehot``: it is
    still drawn (so the later sites get the same keys), its value is the one-hot's index and
    its log q is 0."""

    def __init__(self, fn, onehot):
        self.onehot = onehot
        super().__init__(fn)

    def process_message(self, msg):
        if msg["type"] == "sample" and msg["name"] == "count":
            fn = msg["fn"]
            msg["fn"] = dist.Categorical(probs=jnp.broadcast_to(self.onehot, fn.batch_shape + (4,)))


@pytest.mark.slow  # ~10 s (compiles the enumerated ELBO and the four fixed-count ones)
@pytest.mark.parametrize("dtype", DTYPES)
def test_enumerated_elbo_equals_the_brute_force_sum_over_counts(dtype):
    """Value and gradient of ``elbo`` with ``count=ppl.Enum()`` against
    ``sum_n q(n) [g_n - log q(n)]``, ``g_n`` the ELBO estimate with the count fixed at ``n``
    and the same key (the same where/what noise): exact up to rounding."""
    with jax.enable_x64(dtype == "float64"):
        enc, dec, params, x = _setup(dtype, n=1)
        model, guide = air.make_air(enc, dec)
        enum = ppl.objectives.elbo(model, ppl.strategies(guide, count=ppl.Enum()))

        def model_n(x, onehot):
            model(x)

        def guide_n(x, onehot):
            _PointMassCount(guide, onehot)(x)

        fixed = ppl.objectives.elbo(model_n, guide_n)

        @ppl.expectation
        def fixed_count(params, x, onehot):
            return fixed(params, x, onehot)

        @jax.jit  # everything in one compiled program
        def compute(params, x, key):
            value, (grads, _) = enum.value_and_grad_estimate(key, params, x)
            onehots = jnp.eye(4, dtype=x.dtype)
            g, (g_grads, _, _) = jax.vmap(
                lambda oh: fixed_count.value_and_grad_estimate(key, params, x, oh))(onehots)
            q = air.count_probs(params, x, enc)[0]
            brute_value = jnp.sum(q * (g - jnp.log(q)))

            def h(prm):  # d/dθ sum_n q_n (g_n - log q_n), g_n held fixed; the d g_n part below
                qq = air.count_probs(prm, x, enc)[0]
                return jnp.sum(qq * (jax.lax.stop_gradient(g) - jnp.log(qq)))

            brute_grads = jax.tree.map(lambda a, b: a + jnp.tensordot(q, b, 1),
                                       jax.grad(h)(params), g_grads)
            # the hand-written enumeration with the same noise: the noise of the where/what
            # sites is read from the count-0 draw (all slots unused: their values are the
            # standard-normal noise itself)
            values0 = _draws(fixed_count, key, params, x, onehots[0])
            eps_w = jnp.stack([values0[f"where_{i}"] for i in range(air.SLOTS)], -2)
            eps_h = jnp.stack([values0[f"what_{i}"] for i in range(air.SLOTS)], -2)
            hand = air.exact_count_elbo(params, x, eps_w, eps_h, enc, dec)[0]
            return value, grads, brute_value, brute_grads, hand

        value, grads, brute_value, brute_grads, hand = compute(params, x, jax.random.key(11))
        tol = {"float64": 1e-9, "float32": 2e-4}[dtype]
        assert value.dtype == jnp.dtype(dtype)
        np.testing.assert_allclose(value, brute_value, rtol=tol)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(brute_grads)):
            scale = float(jnp.max(jnp.abs(b))) + 1e-12
            np.testing.assert_allclose(a / scale, b / scale, atol=10 * tol)
        np.testing.assert_allclose(hand, value, rtol=tol)


def _draws(objective, key, params, x, onehot) -> dict:
    """The guide's draws inside ``objective`` at ``key`` (read from the traced program; call
    it inside ``jax.jit``)."""

    class Grab(Messenger):
        def __init__(self, out):
            self.out = out
            super().__init__()

        def postprocess_message(self, msg):
            if msg["type"] == "sample" and not msg["is_observed"]:
                self.out[msg["name"]] = msg["value"]

    out = {}
    with Grab(out):
        objective.estimate(key, params, x, onehot)
    return out


# The difference D_k = g_strategy(k) - g_enum(k) of two gradient estimates with the same key k
# has, conditionally on the where/what noise (the same for both, being drawn from the same
# keys), mean zero if and only if the strategy is unbiased for the count's part. Over
# N = 4000 keys the mean of D has standard error sd(D)/sqrt(N); by the CLT, |mean| > 4 SE has
# probability 6e-5 per coordinate, so ~1e-3 for the 18 coordinates checked (and the seeds are
# fixed: the test is deterministic). The coordinates: the biases of the encoder's last layer
# (4 count logits; where/what locations and log-scales), which a wrong count moves most.
@pytest.mark.slow
@pytest.mark.parametrize("strategy", [ppl.Reinforce(), ppl.Reinforce(baseline="mean"), ppl.MVD()],
                         ids=["reinforce", "reinforce_loo", "mvd"])
def test_count_gradient_estimates_are_unbiased(strategy):
    enc, dec, params, x = _setup("float32", n=1, hidden=8, decoder_hidden=8)
    model, guide = air.make_air(enc, dec)
    n = 4000

    def grads_of(count_strategy):
        obj = ppl.objectives.elbo(model, ppl.strategies(guide, count=count_strategy))
        return jax.jit(jax.vmap(lambda k: obj.value_and_grad_estimate(k, params, x)[1][0]))

    keys = jax.random.split(jax.random.key(2024), n)
    diff = jax.tree.map(jnp.subtract, grads_of(strategy)(keys), grads_of(ppl.Enum())(keys))
    bias = diff["encoder$params"].layers[-1].bias  # (n, 18)
    coords = np.arange(bias.shape[1])
    d = np.asarray(bias[:, coords], np.float64)
    mean, se = d.mean(0), d.std(0, ddof=1) / math.sqrt(n)
    assert np.all(se > 0)  # the count's randomness does move these coordinates
    assert np.all(np.abs(mean) < 4 * se), (mean, se)


@pytest.mark.slow
def test_the_paired_check_detects_a_biased_estimator():
    """Power of the check above: REINFORCE with its score term dropped (the pathwise part
    alone, hand-written) against the enumerated gradient with the same noise is off by many
    standard errors on the count logits, with 10x fewer draws."""
    enc, dec, params, x = _setup("float32", n=1, hidden=8, decoder_hidden=8)
    n = 400

    def diff(key):
        k_n, k_w, k_h = jax.random.split(key, 3)
        eps_w = jax.random.normal(k_w, (1, air.SLOTS, 3))
        eps_h = jax.random.normal(k_h, (1, air.SLOTS, 4))

        def pathwise_only(prm):
            logits = air.count_logits(air.networks(prm, enc, dec)[0], x)[0]
            count = jax.random.categorical(k_n, jax.lax.stop_gradient(logits))
            return jnp.sum(air.log_weight(prm, x, count, eps_w, eps_h, enc, dec))

        def enumerated(prm):
            return jnp.sum(air.exact_count_elbo(prm, x, eps_w, eps_h, enc, dec))

        return jax.tree.map(jnp.subtract, jax.grad(pathwise_only)(params),
                            jax.grad(enumerated)(params))

    d = jax.jit(jax.vmap(diff))(jax.random.split(jax.random.key(7), n))
    logits = np.asarray(d["encoder$params"].layers[-1].bias[:, :4], np.float64)
    mean, se = logits.mean(0), logits.std(0, ddof=1) / math.sqrt(n)
    assert np.max(np.abs(mean) / se) > 8


@pytest.mark.slow  # ~5 s: data, networks and the evaluator's compile
def test_problem_builds_and_evaluates():
    p = _quick_problem()
    names = [c.name for c in p.contestants]
    assert names == AIR_CONTESTANTS  # the slow test below runs each of them
    assert {c.library for c in p.contestants} == {"ours", "numpyro", "hand"}
    ours = {c.strategy for c in p.contestants if c.library == "ours"}
    hand = {c.strategy for c in p.contestants if c.library == "hand"}
    assert hand <= ours  # each hand-written estimator has a peer among ours
    params0 = p.contestants[0].params(p.contestants[0].init())
    e0 = p.evaluate(params0, jax.random.key(0))
    assert math.isfinite(e0) and e0 < p.target_elbo < 200  # the target is above the start
    assert p.budget_s > 0


AIR_CONTESTANTS = [
    "ours/reinforce", "ours/reinforce+mean", "ours/enum", "ours/mvd", "ours/vimco",
    "ours/plate", "ours/plate+loo",
    "hand/reinforce", "hand/reinforce+mean", "hand/enum", "hand/plate", "hand/plate+loo",
    "numpyro/TraceGraph_ELBO", "numpyro/TraceEnum_ELBO",
]


@functools.cache
def _quick_problem():
    from bench.discrete_vi_air import problem

    return problem(quick=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", AIR_CONTESTANTS)
def test_every_contestant_steps_once_and_stays_finite(name):
    p = _quick_problem()
    (c,) = [c for c in p.contestants if c.name == name]
    ref = p.contestants[0].params(p.contestants[0].init())
    state = c.init()
    params0 = c.params(state)
    # same initial parameters, same layout
    assert jax.tree.structure(params0) == jax.tree.structure(ref)
    for a, b in zip(jax.tree.leaves(params0), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(a, b)
    state = jax.jit(c.step)(state, jax.random.key(1))
    params1 = c.params(state)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(params1))
    assert any(bool(jnp.any(a != b)) for a, b in
               zip(jax.tree.leaves(params1), jax.tree.leaves(ref)))
    g = jax.jit(c.grad)(params0, jax.random.key(2))
    assert jax.tree.structure(g) == jax.tree.structure(ref)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(g))
    assert math.isfinite(p.evaluate(params1, jax.random.key(0)))


@pytest.mark.slow
def test_example_runs_quick_and_saves_the_plot(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "air.py"
    spec = importlib.util.spec_from_file_location("air_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    png = module.main("enum", quick=True, out=str(tmp_path))
    assert Path(png).stat().st_size > 10_000
