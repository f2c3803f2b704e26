"""Learned samplers (inference.learned): IRMH exactness, ML flow fits, the Learned method.

Statistical checks use fixed seeds and bounds of Z = 4 Monte Carlo standard errors (MCSE):
|z| > 4 has probability 6e-5 for one normal statistic, so a correct sampler fails one of
this file's ~40 checks for an unlucky seed with probability below 0.3%, while the errors
guarded against (a missing q-ratio in the acceptance, the wrong Jacobian between the
constrained and unconstrained spaces, no correction at all) move the statistics by tens of
MCSE. Where the draws are independent (many chains, one final state each; i.i.d. flow
draws) the SE is sd / sqrt(n); for draws of correlated chains the MCSE is ArviZ's, from
the effective sample size.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import inference
import ppl
from inference.flows import FlowSpec
from inference.vi.guides import latent_site_info
from inference.learned import (
    Flow,
    FlowMatchingSampler,
    Learned,
    fit_flow_to_draws,
    flow_from_vi,
    importance_diagnostics,
    irmh,
    pareto_khat,
    unconstrained_draws,
)
from inference import flow_matching as fm

Z = 4.0  # standard errors allowed in a statistical comparison (see module docstring)

# ---------------------------------------------------------------------------------------
# A 2-D correlated Gaussian target and a deliberately mismatched Gaussian proposal
# ---------------------------------------------------------------------------------------
MEAN = np.array([1.0, -1.0])
SIGMA = np.array([[1.0, 1.2], [1.2, 4.0]])  # sds 1 and 2, correlation 0.6
PREC = np.linalg.inv(SIGMA)
# proposal N(Q_MEAN, diag(Q_SD^2)): shifted, no correlation, wider (bounded weights)
Q_MEAN = np.array([0.0, 0.0])
Q_SD = np.array([2.0, 3.5])


def target_logp(x):
    d = x - jnp.asarray(MEAN, x.dtype)
    return -0.5 * d @ jnp.asarray(PREC, x.dtype) @ d


def target_draws(key, n):
    return jnp.asarray(MEAN) + jax.random.normal(key, (n, 2)) @ jnp.asarray(
        np.linalg.cholesky(SIGMA)).T


def q_sample(key):
    return jnp.asarray(Q_MEAN) + jnp.asarray(Q_SD) * jax.random.normal(key, (2,))


def q_logp(x):  # normalised (the kernel does not need it; the diagnostics' log_z does)
    z = (x - jnp.asarray(Q_MEAN)) / jnp.asarray(Q_SD)
    return -0.5 * jnp.sum(z**2) - jnp.sum(jnp.log(jnp.asarray(Q_SD))) - math.log(2 * math.pi)


def chains(alg, positions, key, num_steps):
    """Vmapped chains from ``positions``; (final states, stacked infos (steps, chains))."""
    n = jax.tree.leaves(positions)[0].shape[0]
    state = jax.vmap(alg.init)(positions)

    def body(state, k):
        return jax.vmap(alg.step)(jax.random.split(k, n), state)

    return jax.lax.scan(body, state, jax.random.split(key, num_steps))


def run_chains(alg, positions, key, num_steps):
    """:func:`chains`, compiled."""
    return jax.jit(lambda p, k: chains(alg, p, k, num_steps))(positions, key)


def assert_moments(x, mean, cov, z=Z):
    """Mean and covariance of independent draws x (n, d) against the truth, within z SE.

    Mean SE: sd / sqrt(n). Covariance entry (i, j): the mean of (x_i - mu_i)(x_j - mu_j)
    with the true means is unbiased for cov_ij, its SE that product's sd / sqrt(n).
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    se_mean = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(x.mean(0) - mean) < z * se_mean), (x.mean(0), mean, se_mean)
    c = x - mean
    prods = c[:, :, None] * c[:, None, :]
    est, se = prods.mean(0), prods.std(0) / np.sqrt(n)
    assert np.all(np.abs(est - cov) < z * se), (est, cov, se)


# ---------------------------------------------------------------------------------------
# IRMH
# ---------------------------------------------------------------------------------------
def test_irmh_leaves_correlated_gaussian_invariant():
    """10,000 chains started at exact draws of p: after 30 IRMH steps the final states are
    still exact (independent) draws of p, and the mean acceptance matches its stationary
    value E_{x~p, x'~q} min(1, w(x') / w(x))."""
    n = 10_000  # SE of a variance: ~ sd^2 sqrt(2 / n) = 1.4%
    k_draw, k_run, k_ref = jax.random.split(jax.random.key(0), 3)
    alg = irmh(target_logp, q_sample, q_logp)
    state, info = run_chains(alg, target_draws(k_draw, n), k_run, 30)
    assert np.all(np.asarray(info.n_grad) == 0)
    assert_moments(state.position, MEAN, SIGMA)

    # Stationary acceptance by Monte Carlo over independent pairs (x ~ p, x' ~ q). The chains'
    # acceptance probabilities (30 x 10,000, correlated within a chain) are averaged per chain
    # first: 10,000 independent chain means, SE their sd / sqrt(n) (~0.002). The wrong ratio
    # p(x')/p(x) (the random-walk formula, no q terms) would average 0.279 here, vs 0.298.
    m = 200_000

    @jax.jit
    def reference(key):
        kx, kq = jax.random.split(key)
        x = target_draws(kx, m)
        xq = jax.vmap(q_sample)(jax.random.split(kq, m))
        lw = lambda v: jax.vmap(target_logp)(v) - jax.vmap(q_logp)(v)  # noqa: E731
        return jnp.minimum(1.0, jnp.exp(lw(xq) - lw(x)))

    ref = np.asarray(reference(k_ref), np.float64)
    per_chain = np.asarray(info.acceptance_rate, np.float64).mean(0)
    se = math.hypot(per_chain.std() / math.sqrt(n), ref.std() / math.sqrt(m))
    assert abs(per_chain.mean() - ref.mean()) < Z * se, (per_chain.mean(), ref.mean(), se)
    assert 0.2 < ref.mean() < 0.8  # the correction is doing work


@pytest.mark.arviz
def test_irmh_from_a_bad_start_converges():
    """Chains started far away (at x = (8, 8), where q is tiny) reach p: the time averages
    over the second half of 4 chains x 4000 steps agree with the exact mean within 4 MCSE
    (MCSE from ArviZ's ESS of the draws)."""
    alg = irmh(target_logp, q_sample, q_logp)
    x0 = jnp.full((4, 2), 8.0)

    @jax.jit
    def go(key):
        state = jax.vmap(alg.init)(x0)

        def body(state, k):
            state, info = jax.vmap(alg.step)(jax.random.split(k, 4), state)
            return state, state.position

        return jax.lax.scan(body, state, jax.random.split(key, 4000))[1]

    xs = np.swapaxes(np.asarray(go(jax.random.key(2)), np.float64)[2000:], 0, 1)  # (4, 2000, 2)
    az = pytest.importorskip("arviz")
    for i in range(2):
        ess = float(az.ess(xs[..., i], method="mean"))
        mcse = xs[..., i].std() / math.sqrt(ess)
        assert abs(xs[..., i].mean() - MEAN[i]) < Z * mcse, (i, xs[..., i].mean(), mcse)


def test_irmh_joint_sampler_pytree_and_edge_cases():
    """A sampler that returns (x, log q) gives the same chain as separate density calls;
    pytree positions; NaN / +inf proposal weights are rejected; from p(x) = 0 any proposal
    of finite weight is taken."""
    alg = irmh(target_logp, q_sample, q_logp)
    joint = irmh(target_logp, lambda k: (q_sample(k), q_logp(q_sample(k))), q_logp,
                 sample_returns_logdensity=True)
    tree = irmh(lambda p: target_logp(jnp.stack([p["a"], p["b"]])),
                lambda k: dict(zip("ab", q_sample(k))),
                lambda p: q_logp(jnp.stack([p["a"], p["b"]])))
    nan_alg = irmh(lambda x: jnp.nan * jnp.sum(x), q_sample, q_logp)
    half = irmh(lambda x: jnp.where(x[0] > 0, target_logp(x), -jnp.inf), q_sample, q_logp)

    @jax.jit
    def run(key):
        k = jax.random.split(key, 5)
        x0 = target_draws(k[0], 16)
        out = {"separate": chains(alg, x0, k[1], 20), "joint": chains(joint, x0, k[1], 20),
               "tree": chains(tree, {"a": x0[:, 0], "b": x0[:, 1]}, k[2], 3)}
        st = nan_alg.init(jnp.zeros(2))._replace(logdensity=jnp.array(0.0))
        out["nan"] = nan_alg.step(k[3], st)
        out["half_init"] = half.init(jnp.array([-1.0, 0.0]))
        out["half"] = chains(half, jnp.tile(jnp.array([[-1.0, 0.0]]), (64, 1)), k[4], 1)
        return out

    out = run(jax.random.key(3))
    (s1, i1), (s2, i2) = out["separate"], out["joint"]
    np.testing.assert_allclose(s1.position, s2.position, rtol=1e-6)
    np.testing.assert_array_equal(i1.is_accepted, i2.is_accepted)
    state, info = out["tree"]
    assert set(state.position) == {"a", "b"} and info.log_weight.shape == (3, 16)
    # NaN target density at the proposal: rejected, the state kept
    st2, info = out["nan"]
    assert not bool(info.is_accepted) and float(info.acceptance_rate) == 0.0
    np.testing.assert_array_equal(st2.position, jnp.zeros(2))
    # a state where p = 0 (log p = -inf): every proposal of finite weight is accepted
    assert float(out["half_init"].logdensity) == -np.inf
    _, infos = out["half"]
    acc = np.asarray(infos.is_accepted[0])
    w_finite = np.isfinite(np.asarray(infos.log_weight[0]))
    assert 0 < acc.sum() < acc.size
    np.testing.assert_array_equal(acc, w_finite)


def test_flow_matching_proposal_jacobian_density_makes_irmh_exact():
    """A 2-step Euler sampler of a Gaussian flow-matching field is far from its ODE's law,
    but with density='jacobian' (log |det| of the integrator's own map) IRMH is exact:
    4,000 chains from exact draws stay exact after 20 steps. (The initial states' log q comes
    from log_prob, which must then be exact too: a chain that has not moved yet decides
    with it.)"""
    v = fm.gaussian_velocity(jnp.array([0.5, -0.5]), jnp.array([1.5, 2.5]))
    q = FlowMatchingSampler(v, dim=2, steps=2, method="euler", density="jacobian")
    # the field is linear in x per coordinate, so the Euler map is affine, Phi(z) = a + b z,
    # and the law of its draws is exactly N(a, b^2): the Jacobian density must be that one
    x, lq = q.sample_and_log_prob(jax.random.key(8), 5)
    phi = lambda z: fm.sample(v, z, 2, "euler")[0]  # noqa: E731
    a, b = phi(jnp.zeros(2)), phi(jnp.ones(2)) - phi(jnp.zeros(2))
    exact = dist.Normal(a, jnp.abs(b)).log_prob(x).sum(-1)
    np.testing.assert_allclose(lq, exact, rtol=1e-5, atol=1e-5)
    # log_prob at a given point inverts the map (backward Euler, then Newton): exact too
    np.testing.assert_allclose(q.log_prob(x), exact, rtol=1e-4, atol=1e-4)
    alg = irmh(target_logp, lambda k: q.sample_and_log_prob(k, None), q.log_prob,
               sample_returns_logdensity=True)
    n = 4_000  # SE of a variance ~ 2.2%
    state, info = run_chains(alg, target_draws(jax.random.key(9), n), jax.random.key(10), 20)
    assert 0.2 < float(jnp.mean(info.acceptance_rate)) < 0.95
    assert_moments(state.position, MEAN, SIGMA)


# ---------------------------------------------------------------------------------------
# Flow fits
# ---------------------------------------------------------------------------------------
@pytest.mark.slow  # fit_flow_to_draws also runs by default inside the Learned tests below
def test_ml_flow_fit_recovers_gaussian():
    """An affine-coupling flow fitted by maximum likelihood to 4,000 draws of a correlated
    3-D Gaussian, with only a diagonal whitening (the flow must learn the correlations):
    20,000 flow draws match the true mean and covariance within Z SE of the combined
    sampling error of training and flow draws, and KL(p || q) is small."""
    mean = np.array([2.0, -1.0, 0.5])
    sd = np.array([1.0, 2.0, 0.5])
    corr = np.array([[1.0, 0.7, -0.4], [0.7, 1.0, -0.2], [-0.4, -0.2, 1.0]])
    cov = corr * np.outer(sd, sd)
    chol = np.linalg.cholesky(cov)
    n_train, n_flow = 4_000, 20_000
    x = mean + jax.random.normal(jax.random.key(11), (n_train, 3)) @ jnp.asarray(chol).T
    r = fit_flow_to_draws(x, "affine_coupling", key=12, steps=500, standardize="diag",
                          flow_options={"layers": 2, "width": 16})
    # the diagonal whitening alone (step 0) misses the correlations: the fit improves on it
    assert r.losses.shape == (500,) and r.val_losses.shape == (50,) and r.best_step > 0
    assert bool(r.losses[-100:].mean() < r.losses[:100].mean())
    y = np.asarray(r.flow.sample(jax.random.key(13), n_flow), np.float64)
    # the flow reproduces the training sample's law, which is off the truth by its own
    # sampling error: SE^2 = var / n_train + var / n_flow (per statistic)
    inflate = math.sqrt(1 + n_flow / n_train)
    assert_moments(y, mean, cov, z=Z * inflate)
    # KL(p || q) = E_p[log p - log q] on fresh draws of p (SE from its sd): a Gaussian flow
    # with the training sample's moments is ~ d(d+3)/4 / n_train = 0.002 nats away
    xt = mean + jax.random.normal(jax.random.key(14), (5_000, 3)) @ jnp.asarray(chol).T
    log_p = np.asarray(dist.MultivariateNormal(jnp.asarray(mean), jnp.asarray(cov)).log_prob(xt))
    gap = log_p - np.asarray(r.flow.log_prob(xt), np.float64)
    assert gap.mean() < 0.03 + Z * gap.std() / math.sqrt(gap.size), gap.mean()


def test_flow_forward_density_matches_inverse_density():
    """sample_and_log_prob's density (forward pass only) equals log_prob (inverse pass) at
    the draws, through the whitening map x = loc + L y (log |det L| counted once)."""
    spec = FlowSpec("iaf", dim=3, layers=1, width=8)
    theta = spec.init(jax.random.key(0))
    theta = theta + 0.2 * jax.random.normal(jax.random.key(1), theta.shape)
    tril = jnp.array([[2.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.1, -0.3, 0.7]])

    @jax.jit
    def check(theta, key):
        q = Flow(spec, theta, loc=jnp.array([1.0, 2.0, 3.0]), scale_tril=tril)
        x, lq = q.sample_and_log_prob(key, 16)
        # the flow without the map: log q(x) = log q_T(L^{-1}(x - loc)) - log |det L|
        y = jnp.linalg.solve(tril, (x - q.loc).T).T
        ref = jax.vmap(lambda v: spec.log_prob(theta, v))(y) - jnp.log(2.0 * 1.0 * 0.7)
        return lq, q.log_prob(x), ref

    lq, lq_inverse, ref = check(theta, jax.random.key(2))
    np.testing.assert_allclose(lq_inverse, lq, atol=1e-4)
    np.testing.assert_allclose(lq, ref, atol=1e-4)


def test_vi_flow_reads_back_as_the_guides_density():
    """A VI flow guide's weights read back as a Flow whose density is the guide's own, over
    the unconstrained sites in model order."""

    def model(y=None):
        s = numpyro.sample("s", dist.HalfNormal(1.0))
        m = numpyro.sample("m", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(m, s), obs=y)

    vi = inference.VI(guide="flow", steps=20, guide_options={"kind": "affine_coupling",
                                                             "layers": 1, "width": 4})
    r = inference.infer(model, y=0.5, method=vi, num_samples=4, num_chains=1, progress=False)
    q = flow_from_vi(r)
    assert q.spec.kind == "affine_coupling" and q.dim == 2
    guide = inference.guides.flow(model, kind="affine_coupling", layers=1, width=4)

    @jax.jit
    def draw(params):
        tr = numpyro.handlers.trace(numpyro.handlers.seed(
            numpyro.handlers.substitute(guide, data=params), 3)).get_trace(y=0.5)
        u = tr["guide.u"]["value"]
        return u, tr["guide.u"]["fn"].log_prob(u), tr["s"]["value"], q.log_prob(u)

    u, log_q_guide, s, log_q = draw(r.tuning["params"])
    np.testing.assert_allclose(log_q, log_q_guide, atol=1e-5)
    # the guide's u is in model order: s (unconstrained: log s), then m
    np.testing.assert_allclose(jnp.exp(u[0]), s, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# Unconstrained draws
# ---------------------------------------------------------------------------------------
def _ordered_model():
    # site order deliberately not alphabetical, with constrained sites
    numpyro.sample("z_scale", dist.HalfNormal(1.0))
    numpyro.sample("a_simplex", dist.Dirichlet(jnp.ones(3)))
    numpyro.sample("m_loc", dist.Normal(0.0, 1.0).expand([2]).to_event(1))


def test_unconstrained_draws_round_trip_in_model_order():
    samples = {"z_scale": jnp.array([[0.5, 2.0]]),
               "a_simplex": jnp.array([[[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]]]),
               "m_loc": jnp.array([[[1.0, -1.0], [0.0, 3.0]]])}
    x = unconstrained_draws(_ordered_model, samples)
    assert x.shape == (2, 1 + 2 + 2)
    np.testing.assert_allclose(x[:, 0], jnp.log(samples["z_scale"][0]), rtol=1e-6)
    np.testing.assert_allclose(x[:, 3:], samples["m_loc"][0], rtol=1e-6)
    # the order is the flow guide's (latent_site_info)
    assert list(latent_site_info(_ordered_model)) == ["z_scale", "a_simplex", "m_loc"]
    pot = ppl.potential(_ordered_model)
    back = jax.jit(jax.vmap(lambda v: pot.to_constrained(pot.unravel(v))))(x)
    for name, value in samples.items():
        np.testing.assert_allclose(back[name], value[0], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------
# The Learned method
# ---------------------------------------------------------------------------------------
Y = jnp.array([1.0, 2.5, 0.5, 2.0])
PRIOR_SD = 10.0


def conjugate_model(y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SD))
    numpyro.deterministic("mu2", 2.0 * mu)
    numpyro.sample("y", dist.Normal(mu, 1.0).expand([4]).to_event(1), obs=y)


POST_VAR = 1.0 / (1.0 / PRIOR_SD**2 + len(Y))
POST_MEAN = POST_VAR * float(Y.sum())


def _mcse_of_mean(draws):
    """MCSE of the mean of correlated draws (chains, draws): sd / sqrt(ESS), ArviZ's ESS for
    the mean (rank-normalised split-chain estimates are for quantiles; the mean's is this)."""
    az = pytest.importorskip("arviz")
    draws = np.asarray(draws, np.float64)
    return draws.std() / math.sqrt(float(az.ess(draws, method="mean")))


def _assert_mean_within_mcse(r, name, truth, z=Z):
    """``r``: a Result or a dict of draws (chains, draws)."""
    draws = np.asarray((r if isinstance(r, dict) else r.samples)[name], np.float64)
    mean, mcse = draws.mean(), _mcse_of_mean(draws)
    assert abs(mean - truth) < z * mcse, (name, mean, truth, mcse)


# ~6 s; the Learned doctest runs Learned(correct="irmh") by default (array source, shapes)
@pytest.mark.slow
@pytest.mark.arviz
def test_learned_irmh_corrects_a_wrong_flow_on_conjugate_normal():
    """Draws from a deliberately wrong law (posterior shifted by 0.5 sd, 1.4x too wide) train
    the flow, so its own draws are biased; IRMH chains on it give the exact posterior mean
    and variance within 4 MCSE (ArviZ's, from the ESS)."""
    sd = math.sqrt(POST_VAR)
    wrong = POST_MEAN + 0.5 * sd + 1.4 * sd * jax.random.normal(jax.random.key(20), (2000, 1))
    method = Learned(source=wrong, flow="affine_coupling", steps=200,
                     flow_options={"layers": 1, "width": 8})
    r = inference.infer(conjugate_model, y=Y, method=method, num_samples=2000, num_warmup=100,
                        num_chains=4, key=21, progress=False)
    assert r.samples["mu"].shape == (4, 2000)
    np.testing.assert_allclose(r.samples["mu2"], 2 * r.samples["mu"], rtol=1e-6)
    assert {"lp", "log_q", "acceptance_rate", "is_accepted", "proposal_log_weight",
            "n_grad"} <= set(r.stats)
    assert all(v.shape == (4, 2000) for v in r.stats.values())
    assert 0.4 < float(r.stats["acceptance_rate"].mean()) < 0.95
    _assert_mean_within_mcse(r, "mu", POST_MEAN)
    # the variance: the mean of (mu - m)^2 over the draws, MCSE from its own ESS
    sq = (np.asarray(r.samples["mu"], np.float64) - POST_MEAN) ** 2
    mcse = _mcse_of_mean(sq)
    assert abs(sq.mean() - POST_VAR) < Z * mcse, (sq.mean(), POST_VAR, mcse)
    # the diagnostics: weights of a wider-than-target proposal are bounded (k well below 0.5),
    # and log_z is the log marginal likelihood (normal-normal: y ~ N(0, I + s0^2 11^T)):
    # the importance estimate from the n = 8,000 i.i.d. proposals has relative SE
    # sqrt((1 / ess_fraction - 1) / n) (~0.006 here), which is that of log_z to first order
    assert r.tuning["pareto_k"] < 0.5
    cov = np.eye(4) + PRIOR_SD**2 * np.ones((4, 4))
    log_ml = float(dist.MultivariateNormal(jnp.zeros(4), jnp.asarray(cov)).log_prob(Y))
    imp = r.tuning["importance"]
    se = math.sqrt((1 / imp["ess_fraction"] - 1) / 8000)
    assert abs(r.tuning["log_z"] - log_ml) < Z * se + 1e-4, (r.tuning["log_z"], log_ml, se)
    assert isinstance(r.tuning["flow"], Flow)
    assert r.to_arviz() is not None


@pytest.mark.slow  # slow suite (issue 12: a 5-minute default suite); siblings in this file cover the same code by default
def test_learned_iid_draws_layout_and_weights():
    """correct=None: i.i.d. flow draws laid out (chains, draws), with log weights; a flow
    trained on the wrong law is visibly off in the weights' diagnostics."""
    sd = math.sqrt(POST_VAR)
    wrong = POST_MEAN + 0.5 * sd + 1.4 * sd * jax.random.normal(jax.random.key(20), (2000, 1))
    method = Learned(source=wrong, flow="affine_coupling", correct=None, steps=200,
                     flow_options={"layers": 1, "width": 8})
    r = inference.infer(conjugate_model, y=Y, method=method, num_samples=3000, num_chains=2,
                        key=22, progress=False)
    assert r.samples["mu"].shape == (2, 3000) and "acceptance_rate" not in r.stats
    np.testing.assert_allclose(r.stats["log_weight"], r.stats["lp"] - r.stats["log_q"],
                               rtol=1e-5, atol=1e-5)
    mu = np.asarray(r.samples["mu"], np.float64).ravel()
    # i.i.d. draws of the wrong law: the mean is off by ~0.5 sd = 0.25 >> SE = 0.006
    assert abs(mu.mean() - POST_MEAN) > 20 * mu.std() / math.sqrt(mu.size)
    # self-normalised importance weighting recovers the posterior mean (SE via Kish's ESS)
    w = np.exp(np.asarray(r.stats["log_weight"], np.float64).ravel())
    w /= w.sum()
    ess = importance_diagnostics(np.log(w))["ess"]
    assert abs(np.sum(w * mu) - POST_MEAN) < Z * math.sqrt(POST_VAR / ess)
    # reuse the fitted flow as is (no source run)
    again = inference.infer(conjugate_model, y=Y, method=Learned(flow=r.tuning["flow"]),
                            num_samples=50, num_warmup=10, num_chains=2, key=23, progress=False)
    assert again.samples["mu"].shape == (2, 50) and "source" not in again.timing


def constrained_model(y=None):
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    numpyro.sample("y", dist.Normal(0.0, sigma).expand([5]).to_event(1), obs=y)


Y_SCALE = jnp.array([0.8, -1.5, 0.3, 1.9, -0.6])


def _sigma_posterior_moments():
    """E[sigma] and E[sigma^2] by quadrature on a fine grid (exact to ~1e-8)."""
    s = np.linspace(1e-4, 8.0, 200_001)
    logp = -0.5 * s**2 - 5 * np.log(s) - 0.5 * float(jnp.sum(Y_SCALE**2)) / s**2
    p = np.exp(logp - logp.max())
    p /= np.trapezoid(p, s)
    return np.trapezoid(s * p, s), np.trapezoid(s**2 * p, s)


@pytest.mark.slow  # slow suite: a full Learned run with a flow fit (issue 12: a 5-minute default suite)
@pytest.mark.arviz
def test_learned_on_constrained_site_from_constrained_draws():
    """A HalfNormal scale: the source is a dict of constrained draws (a lognormal rough fit,
    not the posterior), mapped to log sigma by unconstrained_draws; IRMH's posterior means of
    sigma and sigma^2 match quadrature within 4 MCSE. A Jacobian mistake between the spaces
    would target p(sigma) sigma^{+-1}, moving the mean by ~0.09, ~20 MCSE."""
    m1, m2 = _sigma_posterior_moments()
    rough = {"sigma": jnp.exp(0.1 + 0.5 * jax.random.normal(jax.random.key(30), (1, 3000)))}
    method = Learned(source=rough, flow="spline_coupling", steps=200,
                     flow_options={"layers": 1, "width": 8, "knots": 4})
    r = inference.infer(constrained_model, y=Y_SCALE, method=method, num_samples=2500,
                        num_warmup=100, num_chains=4, key=31, progress=False)
    assert bool(jnp.all(r.samples["sigma"] > 0))
    _assert_mean_within_mcse(r, "sigma", m1)
    # E[sigma^2] likewise (MCSE from the ESS of sigma^2 itself)
    _assert_mean_within_mcse({"sigma2": r.samples["sigma"] ** 2}, "sigma2", m2)


@pytest.mark.slow
@pytest.mark.arviz
def test_learned_from_nuts_and_from_vi_flow():
    """The full pipelines: NUTS draws -> spline flow -> IRMH, and VI(guide='flow') -> IRMH,
    on the constrained model: posterior means within 4 MCSE of quadrature."""
    m1, _ = _sigma_posterior_moments()
    for source in (inference.NUTS(),
                   inference.VI(guide="flow", steps=1500,
                                guide_options={"kind": "iaf", "layers": 2, "width": 16})):
        method = Learned(source=source, steps=500, source_samples=500, source_warmup=300)
        r = inference.infer(constrained_model, y=Y_SCALE, method=method, num_samples=2000,
                            num_warmup=200, num_chains=4, key=32, progress=False)
        assert "source" in r.tuning and r.tuning["pareto_k"] < 0.7
        _assert_mean_within_mcse(r, "sigma", m1)


@pytest.mark.slow  # slow suite: a flow-matching fit plus IRMH (issue 12: a 5-minute default suite)
@pytest.mark.arviz
def test_learned_flow_matching_irmh():
    """A flow-matching field trained on rough draws, as an IRMH proposal through its
    integrator's Jacobian density: exact posterior mean within 4 MCSE."""
    sd = math.sqrt(POST_VAR)
    wrong = POST_MEAN + 0.5 * sd + 1.4 * sd * jax.random.normal(jax.random.key(40), (2000, 1))
    method = Learned(source=wrong, flow="flow_matching", steps=300,
                     flow_options={"width": 16, "depth": 2, "ode_steps": 4})
    r = inference.infer(conjugate_model, y=Y, method=method, num_samples=1500, num_warmup=100,
                        num_chains=4, key=41, progress=False)
    assert isinstance(r.tuning["flow"], FlowMatchingSampler)
    _assert_mean_within_mcse(r, "mu", POST_MEAN)


# ---------------------------------------------------------------------------------------
# Pareto k
# ---------------------------------------------------------------------------------------
def test_pareto_khat_known_tails_and_arviz():
    """Pareto(alpha) weights have tail shape k = 1 / alpha; the estimate's SE is about
    (1 + k) / sqrt(M) with M = 3 sqrt(n) tail draws (0.07 at n = 20,000); bounded weights
    give k < 0; and the value agrees with ArviZ's psislw where that is installed (0.x)."""
    rng = np.random.default_rng(0)
    n = 20_000
    se = lambda k: (1 + k) / math.sqrt(3 * math.sqrt(n))  # noqa: E731
    for alpha in (1.0, 2.0, 4.0):
        k = pareto_khat(np.log(rng.pareto(alpha, n) + 1.0))
        assert abs(k - 1 / alpha) < Z * se(1 / alpha), (alpha, k)
    assert pareto_khat(np.log(rng.uniform(0.5, 1.0, n))) < 0.0
    lw = rng.normal(0.0, 1.5, 5000)
    az = pytest.importorskip("arviz")
    if hasattr(az, "psislw"):
        _, k_az = az.psislw(lw.copy())
        assert abs(pareto_khat(lw) - float(k_az)) < 1e-6
    assert pareto_khat(np.r_[lw, -np.inf]) == pytest.approx(pareto_khat(np.r_[lw]), abs=0.05)
    assert pareto_khat(np.r_[lw, np.inf]) == math.inf
    assert pareto_khat(lw[:10]) == math.inf  # too few tail draws to fit


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------
def test_clear_errors():
    with pytest.raises(ValueError, match="no density"):
        irmh(target_logp, q_sample, None)
    with pytest.raises(TypeError, match="proposal_sample"):
        irmh(target_logp, None, q_logp)
    no_density = FlowMatchingSampler(lambda x, t: -x, dim=1, steps=2, density=None)
    with pytest.raises(ValueError, match="no density"):
        Learned(flow=no_density, correct="irmh")
    with pytest.raises(ValueError, match="no density"):
        no_density.log_prob(jnp.zeros(1))
    with pytest.raises(ValueError, match="no density"):
        Learned(flow="flow_matching", flow_options={"density": None})
    Learned(flow=no_density, correct=None)  # fine: uncorrected draws
    with pytest.raises(ValueError, match="correct"):
        Learned(correct="mh")
    with pytest.raises(ValueError, match="unknown flow kind"):
        Learned(flow="glow")
    with pytest.raises(ValueError, match="flow_options"):
        Learned(flow="affine_coupling", flow_options={"widht": 3})
    with pytest.raises(ValueError, match="unknown option"):
        Learned(flow="flow_matching", flow_options={"layers": 3})
    with pytest.raises(TypeError, match="source"):
        Learned(source="nuts")
    with pytest.raises(ValueError, match="VI fit's flow"):
        Learned(source=inference.VI(guide="flow"), flow="maf")
    with pytest.raises(ValueError, match="needs source=VI"):
        Learned(flow="vi")
    with pytest.raises(ValueError, match="base_scale"):
        Learned(flow="flow_matching", base_scale=1.2)
    with pytest.raises(TypeError, match="fitted proposal"):
        Learned(flow=object())
    with pytest.raises(ValueError, match="method"):
        FlowMatchingSampler(lambda x, t: -x, dim=1, method="adaptive")
    with pytest.raises(ValueError, match="must return"):
        FlowMatchingSampler(lambda x, t: jnp.zeros(3), dim=2)
    # shapes
    with pytest.raises(ValueError, match=r"shape \(n, D\)"):
        fit_flow_to_draws(jnp.zeros(10))
    with pytest.raises(ValueError, match="dim=2"):
        fit_flow_to_draws(jnp.zeros((10, 3)), FlowSpec("iaf", 2))
    with pytest.raises(ValueError, match="not finite"):
        fit_flow_to_draws(jnp.array([[0.0, 1.0], [jnp.nan, 0.0], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="standardize"):
        fit_flow_to_draws(jnp.zeros((10, 2)), standardize="pca")
    with pytest.raises(ValueError, match="theta"):
        Flow(FlowSpec("iaf", 2), jnp.zeros(3))
    with pytest.raises(ValueError, match="draw axis"):
        unconstrained_draws(constrained_model, {"sigma": jnp.array(1.0)}, Y_SCALE)
    with pytest.raises(ppl.ModelError, match="lack"):
        unconstrained_draws(constrained_model, {"tau": jnp.ones(3)}, Y_SCALE)
    with pytest.raises(ValueError, match="dimension 2"):
        inference.infer(constrained_model, y=Y_SCALE, method=Learned(source=jnp.zeros((10, 2))),
                        num_samples=5, progress=False)
    nuts_result = inference.Result(samples={"sigma": jnp.ones((1, 3))}, stats={},
                                   method=inference.NUTS())
    with pytest.raises(TypeError, match="VI"):
        flow_from_vi(nuts_result)
