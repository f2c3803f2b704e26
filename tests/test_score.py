"""Score samplers against the exact score of a Gaussian mixture.

The sample-size bound. Every sampler run gives ``n`` draws; we compare them with one fixed
set of ``n`` exact mixture draws by the energy distance (V-statistic). Even a perfect
sampler gives a positive distance, whose law is that of the distance between two
independent exact sets of size ``n``: we estimate that null law from ``R = 24`` replicate
pairs (mean ``m``, sd ``sd``) and require ``ED <= m + 4 sd``. The null law is right-skewed
(a weighted sum of chi-squares), so 4 sd puts the false-alarm rate well under 1e-3 per test
with fixed seeds, while a sampler that is off by a visible amount (a blurred or collapsed
mode at n = 1500 moves ED by >= 0.01, i.e. 6+ sd) fails. The samplers run at fine step
counts where their discretisation error is below that noise.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import ppl
from inference import score as S
from inference.metrics import energy_distance
from models.score_gmm import GaussianMixture, ring_mixture, two_moons_mixture

N = 1500
GMM = two_moons_mixture()


def _null(g: GaussianMixture, n: int = N, reps: int = 24):
    eds = jnp.stack([energy_distance(g.sample(jax.random.key(1000 + i), n),
                                     g.sample(jax.random.key(2000 + i), n)) for i in range(reps)])
    return float(eds.mean()), float(eds.std(ddof=1))


@pytest.fixture(scope="module")
def null():
    return _null(GMM)


@pytest.fixture(scope="module")
def exact_draws():
    return GMM.sample(jax.random.key(7), N)


# --------------------------------------------------------------------------------------
# processes and parameterisations
# --------------------------------------------------------------------------------------

PROCS = {"vp": S.VP(), "ve": S.VE(sigma_max=5.0), "linear": S.Linear()}


@pytest.mark.parametrize("name", PROCS)
def test_sde_coefficients_match_the_marginal(name):
    """The forward SDE's variance ODE ``dV/dt = 2 f V + g^2`` holds for ``V = a^2 v + s^2``."""
    p, v = PROCS[name], 0.7
    V = lambda t: p.marginal(t)[0] ** 2 * v + p.marginal(t)[1] ** 2  # noqa: E731
    for t in [0.05, 0.3, 0.6, 0.9]:
        dV = jax.grad(V)(jnp.float32(t))
        f = p.drift(jnp.ones(()), t)
        assert np.isclose(dV, 2 * f * V(t) + p.diffusion(t) ** 2, rtol=1e-3, atol=1e-4)
        # the log-SNR is inverted exactly
        assert np.isclose(p.t_from_log_snr(p.log_snr(t)), t, atol=1e-4)


def test_process_by_name_and_errors():
    assert isinstance(S.process("VP"), S.VP)
    with pytest.raises(ValueError, match="unknown process 'cosine'"):
        S.process("cosine")
    with pytest.raises(TypeError, match="process must be a Process"):
        S.pf_ode(lambda x, t: x, "vp", jax.random.key(0), (4, 2), 3)


@pytest.mark.parametrize("name", PROCS)
def test_conversions_round_trip(name):
    p = PROCS[name]
    k = jax.random.split(jax.random.key(0), 2)
    x0, eps, t = jax.random.normal(k[0], (5, 3)), jax.random.normal(k[1], (5, 3)), 0.4
    a, s = p.marginal(t)
    (_, _), (da, ds) = p.marginal_and_derivative(t)
    x = a * x0 + s * eps
    truth = {"noise": eps, "data": x0, "score": -eps / s, "velocity": da * x0 + ds * eps}
    for src in S.PREDICTIONS:
        for dst in S.PREDICTIONS:
            got = S.convert(truth[src], x, t, p, src, dst)
            assert np.allclose(got, truth[dst], rtol=1e-3, atol=1e-3), (src, dst)
    with pytest.raises(ValueError, match="unknown prediction 'eps'"):
        S.convert(eps, x, t, p, "eps", "score")


# --------------------------------------------------------------------------------------
# samplers reproduce the mixture with its exact score
# --------------------------------------------------------------------------------------

P = S.VP()
FN = GMM.score_fn(P)
SAMPLERS = {
    "euler_maruyama": (lambda k: S.euler_maruyama(FN, P, k, (N, 2), 500), 500),
    "pf_ode_euler": (lambda k: S.pf_ode(FN, P, k, (N, 2), 200, method="euler"), 200),
    "pf_ode_heun": (lambda k: S.pf_ode(FN, P, k, (N, 2), 50), 100),
    "dpm_solver_1": (lambda k: S.dpm_solver(FN, P, k, (N, 2), 200, order=1), 200),
    "dpm_solver_2": (lambda k: S.dpm_solver(FN, P, k, (N, 2), 30, order=2), 30),
    "dpm_solver_3": (lambda k: S.dpm_solver(FN, P, k, (N, 2), 30, order=3), 30),
    "predictor_corrector": (lambda k: S.predictor_corrector(FN, P, k, (N, 2), 250), 500),
    "annealed_langevin_ve": (lambda k: S.annealed_langevin(
        GMM.score_fn(S.VE(sigma_max=5.0)), S.VE(sigma_max=5.0), k, (N, 2), 100,
        steps_per_level=10), 1000),
    "dpm_solver_2_ve": (lambda k: S.dpm_solver(
        GMM.score_fn(S.VE(sigma_max=5.0)), S.VE(sigma_max=5.0), k, (N, 2), 30), 30),
    "dpm_solver_2_linear": (lambda k: S.dpm_solver(
        GMM.score_fn(S.Linear()), S.Linear(), k, (N, 2), 30), 30),
    "euler_maruyama_linear": (lambda k: S.euler_maruyama(
        GMM.score_fn(S.Linear()), S.Linear(), k, (N, 2), 500), 500),
}


@pytest.mark.parametrize("name", SAMPLERS)
def test_sampler_reproduces_the_mixture(name, null, exact_draws):
    run, nfe = SAMPLERS[name]
    out = run(jax.random.key(11))
    assert out.nfe == nfe and out.x.shape == (N, 2)
    ed = float(energy_distance(out.x, exact_draws))
    m, sd = null
    z = (ed - m) / sd
    print(f"{name}: ED {ed:.5f}, null {m:.5f} +- {sd:.5f}, z = {z:.2f}")
    assert ed <= m + 4 * sd, f"{name}: energy distance {ed:.5f} > {m:.5f} + 4 * {sd:.5f}"


def test_coarse_sampler_is_detected(null, exact_draws):
    """The bound has power: 3 Euler steps of the PF-ODE blur the modes far beyond it."""
    out = S.pf_ode(FN, P, jax.random.key(11), (N, 2), 3, method="euler")
    m, sd = null
    assert float(energy_distance(out.x, exact_draws)) > m + 10 * sd


@pytest.mark.parametrize("which", ["euler", "heun", "dpm"])
def test_probability_flow_is_deterministic_given_x_T(which):
    x_T = P.prior_sample(jax.random.key(0), (64, 2))
    run = {"euler": lambda k: S.pf_ode(FN, P, k, x_T, 8, method="euler", return_path=True),
           "heun": lambda k: S.pf_ode(FN, P, k, x_T, 8, return_path=True),
           "dpm": lambda k: S.dpm_solver(FN, P, k, x_T, 8, return_path=True)}[which]
    a, b = run(jax.random.key(1)), run(jax.random.key(2))
    assert np.array_equal(a.x, b.x) and np.array_equal(a.path, b.path)
    assert a.path.shape == (9, 64, 2) and np.array_equal(a.path[0], x_T)
    assert np.array_equal(a.path[-1], a.x)


def test_stochastic_samplers_depend_on_the_key_only():
    x_T = P.prior_sample(jax.random.key(0), (16, 2))
    a = S.euler_maruyama(FN, P, jax.random.key(1), x_T, 10).x
    b = S.euler_maruyama(FN, P, jax.random.key(1), x_T, 10).x
    c = S.euler_maruyama(FN, P, jax.random.key(2), x_T, 10).x
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_prediction_types_give_the_same_sampler():
    """A data-predicting denoiser gives the same DPM-Solver trajectory as the score."""
    den = lambda x, t: GMM.denoiser(x, t, P)  # noqa: E731
    x_T = P.prior_sample(jax.random.key(0), (32, 2))
    a = S.dpm_solver(FN, P, None, x_T, 10).x
    b = S.dpm_solver(den, P, None, x_T, 10, prediction="data").x
    assert np.allclose(a, b, atol=1e-3)


def test_sampler_input_errors():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        S.euler_maruyama(FN, P, jax.random.key(0), (4, 2), 0)
    with pytest.raises(TypeError, match="steps must be a Python int"):
        S.dpm_solver(FN, P, jax.random.key(0), (4, 2), 2.5)
    with pytest.raises(ValueError, match="returned shape"):
        S.pf_ode(lambda x, t: x[:, :1], P, jax.random.key(0), (4, 2), 3)
    with pytest.raises(ValueError, match="unknown schedule 'cosine'"):
        S.dpm_solver(FN, P, jax.random.key(0), (4, 2), 3, schedule="cosine")
    with pytest.raises(ValueError, match="order must be 1, 2 or 3"):
        S.dpm_solver(FN, P, jax.random.key(0), (4, 2), 3, order=4)
    with pytest.raises(ValueError, match="unknown method"):
        S.pf_ode(FN, P, jax.random.key(0), (4, 2), 3, method="rk4")
    with pytest.raises(ValueError, match="GaussianStart.t"):
        S.pf_ode(FN, P, jax.random.key(0), (4, 2), 3,
                 start=S.GaussianStart(GMM.mean(), GMM.covariance(), 2.0))


# --------------------------------------------------------------------------------------
# the analytical (Gaussian) start
# --------------------------------------------------------------------------------------


def test_gaussian_flow_is_the_exact_flow_of_a_gaussian():
    g = GaussianMixture(jnp.ones(1), jnp.array([[1.0, -0.5]]),
                        jnp.array([[[0.6, 0.3], [0.3, 0.4]]]))
    x_T = P.prior_sample(jax.random.key(0), (50, 2))
    ode = S.dpm_solver(g.score_fn(P), P, None, x_T, 200, order=2).x
    closed = S.gaussian_flow(P, g.mean(), g.covariance(), x_T, P.t_max, P.t_min)
    assert np.allclose(ode, closed, atol=2e-3)
    # teleporting to t and solving from there lands at the same place
    start = S.GaussianStart(g.mean(), g.covariance(), 0.5)
    part = S.dpm_solver(g.score_fn(P), P, None, x_T, 100, start=start).x
    assert np.allclose(part, closed, atol=2e-3)


def test_gaussian_start_saves_evaluations(null, exact_draws):
    """At 6 NFE the multistep solver is off without the analytical start and within the
    sample-size bound with it (the switch at t = 0.4, where the mixture's noised law is
    nearly Gaussian)."""
    start = S.GaussianStart.fit(GMM.sample(jax.random.key(3), 5000), 0.4)
    m, sd = null
    plain = S.dpm_solver(FN, P, jax.random.key(11), (N, 2), 6)
    fast = S.dpm_solver(FN, P, jax.random.key(11), (N, 2), 6, start=start)
    ed_plain = float(energy_distance(plain.x, exact_draws))
    ed_fast = float(energy_distance(fast.x, exact_draws))
    assert ed_plain > m + 4 * sd and ed_fast <= m + 4 * sd, (ed_plain, ed_fast)


# --------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------


class Perturbed(eqx.Module):
    """The exact score plus ``theta * h(x, t)``, expressed as a ``prediction`` network."""

    theta: jax.Array
    prediction: str = eqx.field(static=True)

    def __call__(self, x, t):
        h = jnp.sin(x[::-1] * 1.7 + t)  # an arbitrary smooth direction
        sc = GMM.score(x, t, P) + self.theta * h
        return S.convert(sc, x, t, P, "score", self.prediction)


@pytest.mark.slow  # ~10-15 s each on 2 cores; smoke: test_losses_of_a_network_are_finite
@pytest.mark.parametrize("prediction", ["noise", "data", "velocity"])
def test_dsm_is_minimised_by_the_exact_score(prediction):
    """``L(theta)`` is quadratic in theta with its minimum at 0: its gradient at 0 is zero in
    expectation (|mean| < 4 se over 64 independent batches), and with common random numbers
    ``L(+-delta) - L(0) > 0`` (the ``delta^2 E lam |h|^2`` term dominates its own noise)."""
    x0 = GMM.sample(jax.random.key(0), 64 * 256).reshape(64, 256, 2)
    keys = jax.random.split(jax.random.key(1), 64)

    def loss(theta, xb, k):
        return S.dsm_loss(Perturbed(theta, prediction), P, xb, k, prediction=prediction,
                          weighting="native" if prediction == "data" else "standard")

    grads = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(jnp.float32(0.0), x0, keys)
    z = float(grads.mean() / (grads.std(ddof=1) / math.sqrt(64)))
    assert abs(z) < 4, f"gradient at the exact score: z = {z:.2f}"
    for delta in (0.3, -0.3):
        diff = jax.vmap(lambda xb, k: loss(delta, xb, k) - loss(0.0, xb, k))(x0, keys)
        assert float(diff.mean()) > 4 * float(diff.std(ddof=1)) / math.sqrt(64)


@pytest.mark.slow  # ~30 s on 2 cores; smoke: test_losses_of_a_network_are_finite
def test_ssm_is_minimised_by_the_exact_score():
    x0 = GMM.sample(jax.random.key(0), 32 * 256).reshape(32, 256, 2)
    keys = jax.random.split(jax.random.key(1), 32)

    def loss(theta, xb, k):
        return S.ssm_loss(Perturbed(theta, "score"), P, xb, k, num_projections=2)

    for delta in (0.3, -0.3):
        diff = jax.vmap(lambda xb, k: loss(delta, xb, k) - loss(0.0, xb, k))(x0, keys)
        assert float(diff.mean()) > 4 * float(diff.std(ddof=1)) / math.sqrt(32)


def test_losses_of_a_network_are_finite():
    """Smoke version of the two slow checks above (same losses and network, tiny batch): the
    DSM value and its gradient in theta, and the SSM value, are finite scalars. (The other
    parameterisations differ only by ``convert``, checked by test_conversions_round_trip.)"""
    x0 = GMM.sample(jax.random.key(0), 16)
    key = jax.random.key(1)
    dsm = lambda theta: S.dsm_loss(Perturbed(theta, "noise"), P, x0, key)  # noqa: E731
    value, grad = jax.jit(jax.value_and_grad(dsm))(jnp.float32(0.3))
    assert value.shape == () and np.isfinite(value) and np.isfinite(grad)
    ssm = jax.jit(lambda theta: S.ssm_loss(Perturbed(theta, "score"), P, x0, key,
                                           num_projections=2))
    value = ssm(jnp.float32(0.3))
    assert value.shape == () and np.isfinite(value)


def test_loss_errors():
    with pytest.raises(ValueError, match="batch"):
        S.dsm_loss(lambda x, t: x, P, jnp.ones(3), jax.random.key(0))
    with pytest.raises(ValueError, match="returned shape"):
        S.dsm_loss(lambda x, t: x[:1], P, jnp.ones((4, 3)), jax.random.key(0))
    with pytest.raises(ValueError, match="unknown weighting"):
        S.dsm_loss(lambda x, t: x, P, jnp.ones((4, 3)), jax.random.key(0), weighting="snr")
    with pytest.raises(ValueError, match="unknown loss"):
        S.fit_score(lambda x, t: x, P, jnp.ones((4, 3)), jax.random.key(0), loss="ism")


@pytest.mark.slow  # ~10 s, compiling; fit_score and relative_score_error run in their doctests
def test_fit_score_reduces_the_loss_tiny_budget():
    from models.score_net import ScoreMLP

    net = ScoreMLP(2, hidden=32, depth=1, key=jax.random.key(0))
    data = GMM.sample(jax.random.key(1), 2000)
    err0 = S.relative_score_error(net, FN, P, data, jax.random.key(3))
    net, losses = S.fit_score(net, P, data, jax.random.key(2), steps=300, chunk=150)
    err1 = S.relative_score_error(net, FN, P, data, jax.random.key(3))
    assert float(losses[-50:].mean()) < float(losses[:50].mean())
    assert float(err1) < 0.5 * float(err0)


@pytest.mark.slow
def test_trained_network_approaches_the_exact_score(null, exact_draws):
    """DSM-trained mlp_2d (3000 Adam steps, batch 512, 20k draws): its DPM-Solver samples
    must be within the sample-size bound of exact ones (the correctness check, derived from
    the null law of the energy distance; see the module docstring). The relative error
    ``E s^2 |score_net - score|^2 / E s^2 |score|^2`` < 0.01 is a regression guard."""
    from models.score_net import mlp_2d

    data = GMM.sample(jax.random.key(0), 20_000)
    net, _ = S.fit_score(mlp_2d(jax.random.key(1)), P, data, jax.random.key(2), steps=3000,
                         batch_size=512)
    err = float(S.relative_score_error(net, FN, P, GMM.sample(jax.random.key(5), 20_000),
                                       jax.random.key(6)))
    print(f"relative score error {err:.4f}")
    # Regression guard (from our measured output, not derived: 0.0018 (noise units, t ~ U)
    # when first written; no first-principles bound exists for a trained network's error).
    assert err < 0.01
    out = S.dpm_solver(S.batched(net), P, jax.random.key(11), (N, 2), 20, prediction="noise")
    m, sd = null
    # Derived: mean + 4 sd of the null law of ED between two exact sets of N (module docstring).
    ed = float(energy_distance(out.x, exact_draws))
    print(f"energy distance {ed:.5f}, bound {m + 4 * sd:.5f}")
    assert ed <= m + 4 * sd


# --------------------------------------------------------------------------------------
# unnormalised targets and score priors
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [
    "tempered",
    # ~14 s on 2 cores; smoke: test_sample_target_smoothed_path_smoke
    pytest.param("smoothed", marks=pytest.mark.slow)])
def test_sample_target_reproduces_a_mixture(path):
    g = ring_mixture(4, radius=2.0, std=0.3)
    n = 1000
    m, sd = _null(g, n, 16)
    x0 = 3.0 * jax.random.normal(jax.random.key(3), (n, 2))
    out = S.sample_target(g.log_prob, jax.random.key(1), n, path=path, x0=x0, step_size=0.01,
                          levels=20, steps_per_level=50, particles=16, reference_scale=3.0)
    ed = float(energy_distance(out.x, g.sample(jax.random.key(7), n)))
    # ULA's step-size bias (step 0.01 against component variance 0.09) is below the bound
    assert ed <= m + 4 * sd, (ed, m, sd)


def test_sample_target_smoothed_path_smoke():
    """The smoothed path at a tiny size: shape, NFE and finiteness (the law is checked by the
    slow case of test_sample_target_reproduces_a_mixture)."""
    g = ring_mixture(4, radius=2.0, std=0.3)
    x0 = 3.0 * jax.random.normal(jax.random.key(3), (16, 2))
    out = S.sample_target(g.log_prob, jax.random.key(1), 16, path="smoothed", x0=x0,
                          step_size=0.01, levels=2, steps_per_level=3, particles=4,
                          reference_scale=3.0)
    assert out.x.shape == (16, 2) and bool(jnp.all(jnp.isfinite(out.x)))


def test_sample_target_on_a_potential():
    def model():
        s = ppl.sample("s", dist.LogNormal(0.0, 0.3))
        ppl.sample("m", dist.Normal(1.0, s))

    pot = ppl.potential(model)
    out = S.sample_target(pot, jax.random.key(0), 2000, levels=10, steps_per_level=100,
                          step_size=0.02)
    draws = jax.vmap(lambda v: pot.to_constrained(pot.unravel(v)))(out.x)
    assert abs(float(jnp.log(draws["s"]).mean())) < 0.05  # E log s = 0, se 0.3/sqrt(2000)
    assert abs(float(draws["m"].mean()) - 1.0) < 0.1
    with pytest.raises(ValueError, match="give x0"):
        S.sample_target(lambda x: -jnp.sum(x**2), jax.random.key(0), 10)
    with pytest.raises(ValueError, match="unknown path"):
        S.sample_target(pot, jax.random.key(0), 10, path="bridged")


def test_posterior_score_smoke():
    """The guided score through euler_maruyama at a tiny size (the slow test below checks
    the law of the draws)."""
    y = jnp.array([0.5])

    def observe(x, y=None):
        numpyro.sample("y", dist.Normal(x[:1], 0.2).to_event(1), obs=y)

    fn = S.posterior_score(FN, P, S.observation_loglik(observe, y=y))
    out = S.euler_maruyama(fn, P, jax.random.key(1), (16, 2), 5)
    assert out.nfe == 5 and out.x.shape == (16, 2) and bool(jnp.all(jnp.isfinite(out.x)))


@pytest.mark.slow  # ~15 s on 2 cores; smoke: test_posterior_score_smoke
def test_posterior_sampling_with_a_score_prior():
    """Prior: the mixture's exact score. Likelihood: a NumPyro model observing x[0] with
    noise 0.2. The exact posterior is again a mixture. DPS is an approximation (it replaces
    p(y | x_t) by p(y | E[x0 | x_t])) with no closed-form error, so its draws are not held to
    the exact sampler's null bound (measured ED 0.044 against a null mean + 4 sd of 0.004);
    the law checks are a derived one on the observed coordinate and a regression guard.
    test_posterior_score_tends_to_the_exact_posterior_score checks the guided score itself
    against the exact posterior score."""
    y = jnp.array([0.5])

    def observe(x, y=None):
        numpyro.sample("y", dist.Normal(x[:1], 0.2).to_event(1), obs=y)

    post = GMM.posterior(jnp.array([[1.0, 0.0]]), y, jnp.array([[0.04]]))
    fn = S.posterior_score(FN, P, S.observation_loglik(observe, y=y))
    out = S.euler_maruyama(fn, P, jax.random.key(1), (1000, 2), 500)
    xp = post.sample(jax.random.key(7), 1000)
    ed = float(energy_distance(out.x, xp))
    ed_prior = float(energy_distance(GMM.sample(jax.random.key(8), 1000), xp))
    # Regression guard (from our measured output, 0.044 vs 0.81; not derived): the draws an
    # order of magnitude closer to the posterior than prior draws are.
    assert ed < 0.1 * ed_prior, (ed, ed_prior)
    # Derived (Monte Carlo): the observed coordinate x[0] is pinned by the likelihood and
    # DPS's mean there must agree with the exact posterior's within 4 standard errors of the
    # difference of two independent means of 1000 draws, sqrt(var_a / n + var_b / n)
    # (measured: -0.012 against se 0.0087, z = -1.3; the old hand-set bound was 0.05). (The
    # unobserved x[1], whose law depends on DPS's mode weights, is off by 0.20, z = 7.7: the
    # approximation's known error, not asserted.)
    diff = float(out.x[:, 0].mean()) - float(xp[:, 0].mean())
    se = math.sqrt((float(out.x[:, 0].var()) + float(xp[:, 0].var())) / 1000)
    assert abs(diff) < 4 * se, (diff, se)


def test_posterior_score_tends_to_the_exact_posterior_score():
    """Independent reference: the exact posterior score of the mixture (again a mixture,
    GaussianMixture.posterior). DPS's only approximation is x0_hat = E[x0 | x_t] in place of
    x_t, and by Tweedie x0_hat = (x + s^2 score) / a with 1 - a ~ s^2 / 2 (VP), so the
    guided score minus the exact posterior score is C s(t)^2 + O(s^4) as t -> 0 (measured
    C = 1680 at t = 1e-4, 1641 at 1e-3). Known rate: the two estimates of C agree to the
    relative O(s^2 / sigma_min^2) remainder, sigma_min = 0.1 the narrowest component sd,
    i.e. ~1% at t = 1e-3 (s = 0.0105); we allow 10%. A guided score with a wrong
    likelihood gradient (e.g. ``scale=2``) leaves an O(1) difference, so its "constants"
    scale as 1 / s^2 (ratio ~0.09) and fail; float32 round-off (|score| ~ 80, eps 1.2e-7:
    ~1e-5) is far below the smallest difference, 0.017."""
    y = jnp.array([0.5])

    def observe(x, y=None):
        numpyro.sample("y", dist.Normal(x[:1], 0.2).to_event(1), obs=y)

    guided = S.posterior_score(FN, P, S.observation_loglik(observe, y=y))

    @jax.jit  # one compilation (eager mixture algebra costs seconds)
    def gap(t):
        x = GMM.sample(jax.random.key(3), 64)  # typical points, where the expansion holds
        exact = GMM.posterior(jnp.array([[1.0, 0.0]]), y, jnp.array([[0.04]])).score_fn(P)
        return jnp.max(jnp.abs(guided(x, t) - exact(x, t)))

    constants = []
    for t in (1e-4, 1e-3):
        s = float(P.marginal(t)[1])
        constants.append(float(gap(jnp.float32(t))) / s**2)
    assert abs(constants[1] / constants[0] - 1) < 0.1, constants


@pytest.mark.parametrize("proc", [S.VP(), S.Linear()], ids=["vp", "linear"])
def test_posterior_score_at_t0_is_the_exact_posterior_score(proc):
    """At t = 0, s(t) = 0 for VP and Linear: x0_hat = x, so the guided score is exactly
    grad log p0(x) + grad log p(y | x), here the prior's score plus -(x[0] - y) / 0.2^2 on
    the observed coordinate (it used to be NaN: the score went through eps = -s * score and
    back, 0 / 0). Bound: float32 round-off on scores of size ~100 (eps 1.2e-7, a few
    operations: ~1e-4); 1e-3 relative to the largest |score| allows that and nothing else
    (at t = 1e-3 the DPS gap is ~C s^2 ~ 0.2, see the test above)."""
    y = jnp.array([0.5])

    def observe(x, y=None):
        numpyro.sample("y", dist.Normal(x[:1], 0.2).to_event(1), obs=y)

    prior = GMM.score_fn(proc)
    guided = S.posterior_score(prior, proc, S.observation_loglik(observe, y=y))
    x = GMM.sample(jax.random.key(3), 64)
    t0 = jnp.float32(0.0)
    got = eqx.filter_jit(guided)(x, t0)
    want = eqx.filter_jit(prior)(x, t0).at[:, 0].add(-(x[:, 0] - y[0]) / 0.2**2)
    assert bool(jnp.all(jnp.isfinite(got)))
    scale = float(jnp.max(jnp.abs(want)))
    assert float(jnp.max(jnp.abs(got - want))) < 1e-3 * scale, (got - want, scale)


def test_observation_model_must_observe_everything():
    def bad(x, y=None):
        s = numpyro.sample("s", dist.HalfNormal(1.0))
        numpyro.sample("y", dist.Normal(x, s), obs=y)

    ll = S.observation_loglik(bad, y=jnp.zeros(2))
    with pytest.raises(ValueError, match=r"unobserved sample sites \['s'\]"):
        ll(jnp.zeros(2))
