"""Tempered SMC: log evidence and posterior moments against closed forms, both modes of a
bimodal target, the ``SMC`` method through ``inference.infer``, BlackJAX kernels as moves,
resampling, and errors on bad input.

Statistical checks use fixed seeds and bounds of Z = 4 standard errors, where every SE is
computed over *independent* SMC runs (vmapped with different keys): the particles of one
run are correlated through resampling, so one run's average is one number. A |z| > 4 has
probability 6e-5 per normal statistic; with ~25 such checks here a correct implementation
fails some check for an unlucky seed with probability below 0.2%, while the bugs we guard
against (a wrong incremental weight, a Jacobian on the wrong side of the prior/likelihood
split, a biased resampler) move the statistics by many SEs.

On log Z: ``exp(log Z-hat)`` is unbiased, so ``log Z-hat`` is biased low by Jensen's
inequality; by the delta method ``E[log Z-hat] = log Z - Var(log Z-hat) / 2 + o(1/N)``. The
checks add back half the sample variance over runs before comparing (the correction is
small: Var is ~0.005-0.05 here).
"""

import functools
import math

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy.integrate import quad
from scipy.stats import halfnorm, multivariate_normal, norm

import inference
import ppl
from inference import smc
from inference.mcmc import langevin
from inference.smc import SMC, tempered_smc
from ppl.errors import ModelError

Z = 4.0  # standard errors allowed (see the module docstring)


def runs(logprior, loglik, kernel, draw_prior, num_runs, num_particles, seed=0, **kw):
    """``num_runs`` independent SMC runs, vmapped, in one compiled program."""

    def one(key):
        k0, k1 = jax.random.split(key)
        return tempered_smc(logprior, loglik, kernel, draw_prior(k0, num_particles), k1, **kw)

    return jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(seed), num_runs))


def check_log_evidence(log_z, exact):
    """Jensen-corrected mean of log Z-hat over runs within Z SEs of the exact value."""
    log_z = np.asarray(log_z, dtype=np.float64)
    se = log_z.std(ddof=1) / math.sqrt(log_z.size)
    corrected = log_z.mean() + 0.5 * log_z.var(ddof=1)
    assert abs(corrected - exact) < Z * se, (corrected, exact, se)


# ---------------------------------------------------------------------------------------
# Conjugate Gaussian in 5-D: mu ~ N(0, 3^2 I), y_i ~ N(mu, I), i = 1..4
# ---------------------------------------------------------------------------------------
D, NOBS, S0 = 5, 4, 3.0
Y = np.asarray(jax.random.normal(jax.random.key(42), (NOBS, D))) + 1.5


def gauss_logprior(x):
    return jnp.sum(-0.5 * (x / S0) ** 2 - math.log(S0) - 0.5 * math.log(2 * math.pi))


def gauss_loglik(x):
    return jnp.sum(-0.5 * (jnp.asarray(Y) - x) ** 2 - 0.5 * math.log(2 * math.pi))


def gauss_prior_draws(key, n):
    return S0 * jax.random.normal(key, (n, D))


# Each coordinate's data vector is N(0, S0^2 11^T + I); the posterior is N(pm, pv I).
GAUSS_LOG_Z = sum(
    multivariate_normal(np.zeros(NOBS), S0**2 * np.ones((NOBS, NOBS)) + np.eye(NOBS)).logpdf(Y[:, j])
    for j in range(D)
)
POST_VAR = 1.0 / (1.0 / S0**2 + NOBS)
POST_MEAN = POST_VAR * Y.sum(0)
RUNS, PARTICLES, STEPS = 16, 500, 5


@pytest.fixture(scope="module")
def gauss_runs():
    return runs(gauss_logprior, gauss_loglik, "mala", gauss_prior_draws, RUNS, PARTICLES,
                num_mcmc_steps=STEPS)


def test_log_evidence_conjugate_gaussian(gauss_runs):
    check_log_evidence(gauss_runs.log_evidence, GAUSS_LOG_Z)


def test_posterior_moments_conjugate_gaussian(gauss_runs):
    # Per run: the particle mean and variance per coordinate; SE over the 16 runs. The
    # variance of N equally weighted (but correlated) particles is biased low by O(1/N_eff)
    # relative, about 1% here (measured over 64 runs), well below its SE over 16 runs (~2%).
    x = np.asarray(gauss_runs.particles, dtype=np.float64)
    means, variances = x.mean(1), x.var(1)
    se_m = means.std(0, ddof=1) / math.sqrt(RUNS)
    se_v = variances.std(0, ddof=1) / math.sqrt(RUNS)
    np.testing.assert_array_less(np.abs(means.mean(0) - POST_MEAN), Z * se_m)
    np.testing.assert_array_less(np.abs(variances.mean(0) - POST_VAR), Z * se_v)


@pytest.mark.slow  # 16 runs of a second compiled SMC program
def test_random_walk_move_evidence_and_moments():
    # kernel="rwm" is BlackJAX's normal_random_walk with the scale the SMC sets per stage:
    # the same checks as MALA's above (Jensen-corrected log Z within Z SEs of the exact
    # value, posterior means within Z SEs over the runs), with more steps per stage since a
    # random walk decorrelates ~d times slower than MALA.
    out = runs(gauss_logprior, gauss_loglik, "rwm", gauss_prior_draws, RUNS, PARTICLES,
               num_mcmc_steps=4 * STEPS)
    check_log_evidence(out.log_evidence, GAUSS_LOG_Z)
    means = np.asarray(out.particles, dtype=np.float64).mean(1)
    se_m = means.std(0, ddof=1) / math.sqrt(RUNS)
    np.testing.assert_array_less(np.abs(means.mean(0) - POST_MEAN), Z * se_m)
    assert np.all(np.asarray(out.n_grad) == 0)  # gradient-free


def test_adaptive_schedule_and_controller(gauss_runs):
    # Every stage but the last has ESS fraction target_ess = 0.5 (bisection, 60 halvings);
    # the last one jumps to beta = 1 with ESS >= 0.5. The temperatures increase to exactly 1.
    k = np.asarray(gauss_runs.num_stages)
    ess = np.asarray(gauss_runs.ess)
    temps = np.asarray(gauss_runs.temperatures)
    for r in range(RUNS):
        assert temps[r, 0] == 0.0 and temps[r, k[r]] == 1.0
        assert np.all(np.diff(temps[r, : k[r] + 1]) > 0)
        np.testing.assert_allclose(ess[r, : k[r] - 1], 0.5, atol=1e-3)
        assert ess[r, k[r] - 1] >= 0.5 - 1e-3
        assert np.all(np.isnan(temps[r, k[r] + 1:]))
    # The controller steers MALA's acceptance toward 0.574: after the first stage (whose
    # step size is a guess) every stage's mean acceptance is within 0.15 of it.
    acc = np.asarray(gauss_runs.acceptance_rate)
    for r in range(RUNS):
        assert np.all(np.abs(acc[r, 1: k[r]] - 0.574) < 0.15), acc[r, : k[r]]
    # n_grad: per stage and particle, one gradient per MALA step plus one to re-initialise.
    np.testing.assert_array_equal(np.asarray(gauss_runs.n_grad), k * PARTICLES * (STEPS + 1))


# multinomial runs in the slow suite (issue 12); the adaptive runs above resample it by default.
@pytest.mark.parametrize("resampling", [pytest.param("multinomial", marks=pytest.mark.slow), "stratified"])
def test_fixed_schedule_log_evidence(resampling):
    # 1-D conjugate case (mu ~ N(0, 9), one y = 2 ~ N(mu, 1): y ~ N(0, 10)) with a fixed
    # geometric-ish schedule through lax.scan and the other resampling schemes.
    logprior = lambda x: -0.5 * (x / 3.0) ** 2 - math.log(3.0) - 0.5 * math.log(2 * math.pi)  # noqa: E731
    loglik = lambda x: -0.5 * (2.0 - x) ** 2 - 0.5 * math.log(2 * math.pi)  # noqa: E731
    schedule = np.array([0.01, 0.03, 0.1, 0.3, 1.0])
    out = runs(logprior, loglik, functools.partial(langevin.mala, step_size=0.5),
               lambda k, n: 3.0 * jax.random.normal(k, (n,)), 16, 300, seed=1,
               num_mcmc_steps=3, schedule=schedule, resampling=resampling)
    check_log_evidence(out.log_evidence, norm(0.0, math.sqrt(10.0)).logpdf(2.0))
    np.testing.assert_allclose(np.asarray(out.temperatures[0]), np.r_[0.0, schedule], rtol=1e-6)
    assert np.all(np.asarray(out.num_stages) == 5)


# ---------------------------------------------------------------------------------------
# Bimodal: mu ~ N(0, 3^2), likelihood 0.3 N(mu; -4, 0.5^2) + 0.7 N(mu; 4, 0.5^2)
# ---------------------------------------------------------------------------------------
def bimodal_loglik(x):
    a = math.log(0.3) + norm_logpdf(x, -4.0, 0.5)
    b = math.log(0.7) + norm_logpdf(x, 4.0, 0.5)
    return jnp.logaddexp(a, b)


def norm_logpdf(x, m, s):
    return -0.5 * ((x - m) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)


@pytest.mark.slow  # the adaptive MALA-moved SMC runs by default through gauss_runs above
def test_bimodal_mode_weights():
    # The modes are symmetric about the prior mean, so their posterior weights are the
    # mixture weights 0.3 / 0.7 exactly (each weighted by N(+-4; 0, 9 + 0.25), equal), and
    # Z = sum_k w_k N(m_k; 0, 9.25) = N(4; 0, 9.25).
    logprior = lambda x: norm_logpdf(x, 0.0, 3.0)  # noqa: E731
    out = runs(logprior, bimodal_loglik, "mala", lambda k, n: 3.0 * jax.random.normal(k, (n,)),
               16, 500, seed=2, num_mcmc_steps=5)
    frac = np.asarray(out.particles > 0.0, dtype=np.float64).mean(1)  # per run
    se = frac.std(ddof=1) / math.sqrt(frac.size)
    assert abs(frac.mean() - 0.7) < Z * se, (frac.mean(), se)
    check_log_evidence(out.log_evidence, norm(0.0, math.sqrt(9.25)).logpdf(4.0))

    # A single MALA chain on the posterior stays in the mode it falls into: 16 chains from
    # prior draws, 2000 steps each, never cross (the modes are 16 sds apart), so each
    # chain's own estimate of the weight is 0 or 1, off by at least 0.3.
    post = lambda x: logprior(x) + bimodal_loglik(x)  # noqa: E731
    alg = langevin.mala(post, step_size=0.1)

    def chain(key):
        k0, k1 = jax.random.split(key)
        state = alg.init(3.0 * jax.random.normal(k0))

        def body(state, k):
            state, _ = alg.step(k, state)
            return state, state.position > 0

        return jnp.mean(jax.lax.scan(body, state, jax.random.split(k1, 2000))[1])

    chain_frac = np.asarray(jax.jit(jax.vmap(chain))(jax.random.split(jax.random.key(3), 16)))
    assert np.all((chain_frac == 0.0) | (chain_frac == 1.0)), chain_frac


# ---------------------------------------------------------------------------------------
# BlackJAX kernels as the move
# ---------------------------------------------------------------------------------------
# the plain callable runs in the slow suite (issue 12); the factory covers the same path plus tuning.
@pytest.mark.parametrize("kernel", [
    pytest.param(lambda f: blackjax.mala(f, 0.1), marks=pytest.mark.slow), blackjax.mala],
    ids=["callable", "factory"])
def test_blackjax_kernels(kernel):
    # BlackJAX's MALA info has no n_grad: the SMC counts the gradients a traced step takes (one),
    # plus one per particle and stage for the state re-initialisation. The plain callable keeps h = 0.1;
    # the factory gets its step size set by the controller (no preconditioner: blackjax.mala
    # takes none).
    logprior = lambda x: -0.5 * (x / 3.0) ** 2 - math.log(3.0) - 0.5 * math.log(2 * math.pi)  # noqa: E731
    loglik = lambda x: -0.5 * (2.0 - x) ** 2 - 0.5 * math.log(2 * math.pi)  # noqa: E731
    out = runs(logprior, loglik, kernel, lambda k, n: 3.0 * jax.random.normal(k, (n,)), 16, 300,
               seed=4, num_mcmc_steps=4)
    check_log_evidence(out.log_evidence, norm(0.0, math.sqrt(10.0)).logpdf(2.0))
    np.testing.assert_array_equal(np.asarray(out.n_grad), np.asarray(out.num_stages) * 300 * 5)
    h = np.asarray(out.step_size[0, : int(out.num_stages[0])])
    if kernel is blackjax.mala:
        assert np.unique(h).size > 1  # adapted
    else:
        assert np.all(np.isnan(h))  # used as is: its step size is unknown to the SMC


# ---------------------------------------------------------------------------------------
# Resampling
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", sorted(smc.RESAMPLING))
def test_resampling_unbiased(method):
    # Each scheme draws ancestor i n w_i times in expectation. Over 4000 independent draws
    # the mean count's SE is the counts' sd / sqrt(4000); systematic and stratified counts
    # have sd < 1, so a floor of 1e-3 on the SE only matters for exact counts.
    w = np.array([0.05, 0.0, 0.4, 0.15, 0.3, 0.1])
    n = 7
    counts = jax.jit(jax.vmap(lambda k: jnp.bincount(
        smc.resample(k, jnp.log(jnp.asarray(w)), method, num=n), length=w.size)))(
        jax.random.split(jax.random.key(5), 4000))
    counts = np.asarray(counts, dtype=np.float64)
    se = np.maximum(counts.std(0, ddof=1) / math.sqrt(counts.shape[0]), 1e-3)
    np.testing.assert_array_less(np.abs(counts.mean(0) - n * w), Z * se)
    assert np.all(counts[:, 1] == 0)


# ---------------------------------------------------------------------------------------
# The SMC method through inference.infer
# ---------------------------------------------------------------------------------------
YS = np.array([0.5, -1.2, 2.0])


def scale_model(y=None):
    s = numpyro.sample("s", dist.HalfNormal(2.0))
    numpyro.deterministic("s2", s**2)
    with numpyro.plate("n", 3):
        numpyro.sample("y", dist.Normal(0.0, s), obs=y)


def _scale_density(s):
    return halfnorm(scale=2.0).pdf(s) * np.prod(norm(0.0, s).pdf(YS))


SCALE_Z = quad(_scale_density, 0.0, np.inf)[0]
SCALE_MEAN = quad(lambda s: s * _scale_density(s), 0.0, np.inf)[0] / SCALE_Z
CHAINS, DRAWS = 8, 200


@pytest.fixture(scope="module")
def scale_result():
    return inference.infer(scale_model, y=jnp.asarray(YS), method=SMC(num_particles=500, num_mcmc_steps=5),
                           num_samples=DRAWS, num_chains=CHAINS, key=7, progress=False)


def test_infer_shapes_and_stats(scale_result):
    r = scale_result
    assert set(r.samples) == {"s", "s2"}
    assert r.samples["s"].shape == (CHAINS, DRAWS) and r.samples["s2"].shape == (CHAINS, DRAWS)
    np.testing.assert_allclose(np.asarray(r.samples["s2"]), np.asarray(r.samples["s"]) ** 2, rtol=1e-5)
    assert np.all(np.asarray(r.samples["s"]) > 0)
    assert set(r.stats) == {"lp", "n_grad"}
    assert all(v.shape == (CHAINS, DRAWS) for v in r.stats.values())
    np.testing.assert_allclose(np.asarray(r.stats["n_grad"]).sum(1), np.asarray(r.tuning["n_grad"]))
    assert r.tuning["log_evidence"].shape == (CHAINS,)
    assert set(r.timing) == {"compile", "run", "devices", "cache"}
    # lp is the log joint in unconstrained space, as NUTS's lp: check one draw.
    pot = ppl.potential(scale_model, y=jnp.asarray(YS))
    u = pot.to_unconstrained({"s": r.samples["s"][0, 0]})
    np.testing.assert_allclose(float(r.stats["lp"][0, 0]), float(pot.logdensity_fn(u)), rtol=1e-4)


def test_infer_log_evidence_and_mean(scale_result):
    # The evidence and posterior mean of s by quadrature; each chain is an independent SMC
    # run, so the SEs are over the 8 chains. A Jacobian put with the likelihood (tempered)
    # instead of the prior would shift log Z by tens of SEs.
    check_log_evidence(scale_result.tuning["log_evidence"], math.log(SCALE_Z))
    chain_means = np.asarray(scale_result.samples["s"], dtype=np.float64).mean(1)
    se = chain_means.std(ddof=1) / math.sqrt(CHAINS)
    assert abs(chain_means.mean() - SCALE_MEAN) < Z * se


@pytest.mark.arviz
def test_infer_to_arviz(scale_result):
    data = scale_result.to_arviz()
    assert "posterior" in data and "sample_stats" in data
    assert "n_grad" in data["sample_stats"] and "lp" in data["sample_stats"]
    assert "s" in scale_result.summary().index


def test_split_potential_sums_to_potential():
    # prior (with log-Jacobian) + likelihood == the model's unconstrained log density.
    pot = ppl.potential(scale_model, y=jnp.asarray(YS))
    logprior, loglik = smc._split_potential(scale_model, (), {"y": jnp.asarray(YS)}, ["s"])
    for v in (-1.0, 0.3, 2.0):
        u = {"s": jnp.asarray(v)}
        np.testing.assert_allclose(float(logprior(u) + loglik(u)), float(pot.logdensity_fn(u)), rtol=1e-5)
        # the prior part alone: HalfNormal(2) log density at exp(v) plus the Jacobian v
        np.testing.assert_allclose(float(logprior(u)), halfnorm(scale=2.0).logpdf(math.exp(v)) + v,
                                   rtol=1e-5)


def test_no_observed_sites_gives_zero_log_evidence():
    def prior_only():
        numpyro.sample("x", dist.Normal(1.0, 2.0))

    with pytest.warns(UserWarning, match="no observed sites"):
        r = inference.infer(prior_only, method=SMC(num_particles=50, num_mcmc_steps=1),
                            num_samples=10, num_chains=1, progress=False)
    assert abs(float(r.tuning["log_evidence"][0])) < 1e-5
    assert int(r.tuning["num_stages"][0]) == 1


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------
def test_bad_method_arguments():
    with pytest.raises(ValueError, match="num_particles"):
        SMC(num_particles=1)
    with pytest.raises(ValueError, match="num_particles"):
        SMC(num_particles=10.5)
    with pytest.raises(ValueError, match="unknown kernel name.*mala"):
        SMC(kernel="hmcc")
    with pytest.raises(TypeError, match="kernel"):
        SMC(kernel=3)
    with pytest.raises(ValueError, match="target_ess"):
        SMC(target_ess=1.0)
    with pytest.raises(ValueError, match="resampling"):
        SMC(resampling="residual")
    with pytest.raises(ValueError, match="num_mcmc_steps"):
        SMC(num_mcmc_steps=0)
    with pytest.raises(ValueError, match="increase strictly"):
        SMC(schedule=[0.5, 0.2, 1.0])
    with pytest.raises(ValueError, match="exactly 1"):
        SMC(schedule=[0.2, 0.5])
    with pytest.raises(ValueError, match="needs a step_size"):
        SMC(kernel=langevin.mala, adapt_step_size=False)


def test_bad_tempered_smc_inputs():
    lp = lambda x: -0.5 * jnp.sum(x["a"] ** 2)  # noqa: E731
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="same leading"):
        tempered_smc(lp, lp, "mala", {"a": jnp.zeros((5, 2)), "b": jnp.zeros((4,))}, key)
    with pytest.raises(ValueError, match="at least 2 particles"):
        tempered_smc(lp, lp, "mala", {"a": jnp.zeros((1, 2))}, key)
    with pytest.raises(ValueError, match="empty"):
        tempered_smc(lp, lp, "mala", {}, key)


def test_bad_infer_inputs():
    def improper(y=None):
        x = numpyro.sample("x", dist.ImproperUniform(dist.constraints.real, (), ()))
        numpyro.sample("y", dist.Normal(x, 1.0), obs=y)

    with pytest.raises(ModelError, match=r"cannot be sampled here \('x': ImproperUniform: an "
                                         r"improper prior, with no sampler\).*proper prior"):
        inference.infer(improper, y=1.0, method=SMC(num_particles=20), num_samples=10,
                        num_chains=1, progress=False)

    def truncated_t(y=None):
        # posteriordb's diamonds: NumPyro samples a truncated StudentT by its icdf, which
        # needs tensorflow_probability; without it, NumPyro's bare ImportError named no site.
        s = numpyro.sample("s", dist.TruncatedDistribution(dist.StudentT(3.0, 0.0, 1.0), low=0.0))
        numpyro.sample("y", dist.Normal(0.0, s), obs=y)

    try:
        import tensorflow_probability  # noqa: F401
    except ImportError:
        with pytest.raises(ModelError, match=r"cannot be sampled here \('s': "
                                             r"\w*TruncatedDistribution.*tensorflow_probability"):
            inference.infer(truncated_t, y=1.0, method=SMC(num_particles=20), num_samples=10,
                            num_chains=1, progress=False)
    with pytest.raises(ValueError, match="raise num_particles"):
        inference.infer(scale_model, y=jnp.asarray(YS), method=SMC(num_particles=100),
                        num_samples=200, num_chains=1, progress=False)

    def discrete(y=None):
        k = numpyro.sample("k", dist.Bernoulli(0.5))
        numpyro.sample("y", dist.Normal(k, 1.0), obs=y)

    with pytest.raises(ModelError, match="discrete"):
        inference.infer(discrete, y=1.0, method=SMC(num_particles=20), num_samples=10,
                        num_chains=1, progress=False)
