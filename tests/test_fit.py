"""``inference.fit``: optimum recovery, minibatches, non-finite detection, progress, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest

import inference
import ppl
from inference.vi import guides
from inference.progress import ProgressBar

# Conjugate model: mu ~ N(M0, S0), y_i ~ N(mu, SIG). Posterior N(POST_MEAN, POST_SD) exactly,
# and a mean-field Normal guide contains it, so the ELBO optimum is the exact posterior.
M0, S0, SIG = 1.0, 3.0, 2.0
Y = 3.0 + 2.0 * jax.random.normal(jax.random.key(42), (10,))
POST_PREC = 1 / S0**2 + Y.size / SIG**2
POST_MEAN = float((M0 / S0**2 + Y.sum() / SIG**2) / POST_PREC)
POST_SD = float(POST_PREC**-0.5)


def conjugate(y):
    mu = numpyro.sample("mu", dist.Normal(M0, S0))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, SIG), obs=y)


class RecordingBar(ProgressBar):
    def __init__(self, total):
        super().__init__(total, enabled=True)
        self.calls = []

    def update(self, done, postfix):
        self.calls.append((int(done), dict(postfix)))


FIT_STEPS = 1500
NUM_SEEDS = 32


def _elbo_fits(num_seeds: int = NUM_SEEDS):
    """Mean-field ELBO fits of ``conjugate``, one per seed ``k`` (init key ``k``, fit key
    ``k + 1``; seed 0 is the historical single run). Decaying Adam step size, so the final
    iterate's jitter shrinks with it. Returns the fit results and their final errors, an
    array ``(num_seeds, 2)``: (loc - POST_MEAN) / POST_SD and scale / POST_SD - 1."""
    guide = guides.normal(conjugate)
    results, errors = [], []
    for k in range(num_seeds):
        params = ppl.init_params(guide, jax.random.key(k), Y)
        opt = optax.adam(optax.exponential_decay(0.05, FIT_STEPS, 0.01))
        result = inference.fit(ppl.objectives.elbo(conjugate, guide), params, Y,
                               optimizer=opt, steps=FIT_STEPS, key=k + 1, progress=False)
        fitted = ppl.constrain_params(guide, result.params, Y)
        results.append(result)
        errors.append(((float(fitted["guide.mu.loc"]) - POST_MEAN) / POST_SD,
                       float(fitted["guide.mu.scale"]) / POST_SD - 1.0))
    return results, np.array(errors)


def test_elbo_fit_recovers_exact_posterior():
    # 32 fits cost ~0.3 s after the one compilation (same shapes, the key is an argument).
    results, errors = _elbo_fits()
    result = results[0]
    assert result.values.shape == (FIT_STEPS,)
    # Derived bound (Monte Carlo over seeds): the guide family contains the posterior, so a
    # correct fit ends at the exact posterior up to zero-mean optimizer jitter. The mean final
    # error over 32 independent seeds is then within 4 standard errors sd / sqrt(32) of zero
    # (t with 31 df: P(|t| > 4) < 5e-4). Measured: means 0.006 (loc) and -0.002 (scale)
    # posterior sds, sds 0.035 and 0.024, bounds 0.025 and 0.017. A fit that settles off
    # the optimum (a wrong entropy term or gradient scale) fails it.
    mean, se = errors.mean(0), errors.std(0, ddof=1) / np.sqrt(len(errors))
    assert np.all(np.abs(mean) < 4 * se), (mean, se)
    # Regression guard (from our measured output, not derived): the historical single run
    # (seed 0) within 0.1 posterior sd (measured -0.007 loc, 0.002 scale; over 64 seeds the
    # final errors have sd 0.033 and 0.024, matching NumPyro's SVI, see the slow test below),
    # while the initial guide (scale 0.1, loc in [-2, 2]) is off by > 0.8 posterior sd.
    assert np.all(np.abs(errors[0]) < 0.1), errors[0]
    # The ELBO rises towards log p(y) (its maximum, reached here since q can be exact).
    # Derived bound: each value is a one-draw estimate of ELBO(q_t) <= log p(y), with fresh
    # draws every step, so the tail mean exceeds log p(y) by at most 4 standard errors
    # sd(tail) / sqrt(300) (measured: tail mean - log p(y) = -0.0009, slack 0.0027; the
    # old hand-set slack was 0.05).
    log_evidence = dist.MultivariateNormal(
        jnp.full(Y.size, M0), SIG**2 * jnp.eye(Y.size) + S0**2
    ).log_prob(Y)
    tail = np.asarray(result.values[-300:], dtype=np.float64)
    slack = 4 * tail.std(ddof=1) / np.sqrt(tail.size)
    assert float(jnp.mean(result.values[:50])) < tail.mean() <= float(log_evidence) + slack


@pytest.mark.slow  # 32 NumPyro SVI runs (vmapped, ~6 s with compilation) beside ours
def test_elbo_fit_jitter_matches_numpyro_svi():
    """Independent reference for the fit's precision: NumPyro's SVI with the same guide
    (Normal(loc, softplus-positive scale), same initialisation), one-draw Trace_ELBO, the
    same optax Adam schedule and step count. Both are the same algorithm, so their final
    errors over 32 seeds each must have the same law: the variance ratio within the two-sided
    0.001 quantiles of F(31, 31) (~[0.32, 3.1]) and the means within 4 Welch standard
    errors. Measured (64 seeds each): sds 0.033 / 0.035 (loc), 0.024 / 0.022 (scale)."""
    from numpyro.distributions import constraints
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.optim import optax_to_numpyro
    from scipy import stats

    _, ours = _elbo_fits()

    def guide(y):
        loc = numpyro.param("loc", lambda k: jax.random.uniform(k, (), minval=-2.0, maxval=2.0))
        scale = numpyro.param("scale", 0.1, constraint=constraints.softplus_positive)
        numpyro.sample("mu", dist.Normal(loc, scale))

    opt = optax_to_numpyro(optax.adam(optax.exponential_decay(0.05, FIT_STEPS, 0.01)))
    svi = SVI(conjugate, guide, opt, Trace_ELBO())

    def run(key):
        state = svi.init(key, Y)
        state, _ = jax.lax.scan(lambda s, _: svi.update(s, Y), state, None, length=FIT_STEPS)
        p = svi.get_params(state)
        return jnp.stack([(p["loc"] - POST_MEAN) / POST_SD, p["scale"] / POST_SD - 1.0])

    keys = jax.random.split(jax.random.key(2024), NUM_SEEDS)
    ref = np.asarray(jax.jit(jax.vmap(run))(keys), dtype=np.float64)
    k = NUM_SEEDS - 1
    lo, hi = stats.f.ppf(0.0005, k, k), stats.f.ppf(0.9995, k, k)
    ratio = ours.var(0, ddof=1) / ref.var(0, ddof=1)
    assert np.all((lo < ratio) & (ratio < hi)), (ratio, lo, hi)
    welch = np.sqrt(ours.var(0, ddof=1) / len(ours) + ref.var(0, ddof=1) / len(ref))
    assert np.all(np.abs(ours.mean(0) - ref.mean(0)) < 4 * welch), (ours.mean(0), ref.mean(0))


def test_same_key_same_result_whatever_the_chunking():
    @ppl.expectation
    def objective(params, target):
        values, _ = ppl.sim(lambda: numpyro.sample("z", dist.Normal(params["loc"], 1.0)))
        return -((values["z"] - target) ** 2)

    runs = [inference.fit(objective, {"loc": jnp.zeros(())}, 2.0, optimizer=optax.adam(0.05),
                          steps=60, key=jax.random.key(3), progress=False, updates=u)
            for u in (1, 7)]
    np.testing.assert_array_equal(np.asarray(runs[0].values), np.asarray(runs[1].values))
    np.testing.assert_array_equal(np.asarray(runs[0].params["loc"]), np.asarray(runs[1].params["loc"]))


@ppl.expectation
def ramp(params):
    """Value t (so SGD with rate 1 moves t by exactly 1 per step) until t reaches 37, where
    the value and the gradient of ``w`` (not of ``t``) become NaN."""
    bad = params["t"] > 36.5
    root = jnp.sqrt(jnp.where(bad, -jnp.abs(params["w"]), 1.0))  # NaN (and NaN slope) when bad
    return params["t"] + jnp.where(bad, jnp.sum(root), 0.0)


def test_nonfinite_step_raises_naming_leaf_and_step_and_keeps_last_finite_params():
    params = {"t": jnp.zeros(()), "w": jnp.ones(3)}
    with pytest.raises(FloatingPointError, match=r"step 37 .*params\['w'\]") as info:
        inference.fit(ramp, params, optimizer=optax.sgd(1.0), steps=100, progress=False, updates=5)
    err = info.value
    assert isinstance(err, inference.NonFiniteError)
    assert err.step == 37 and err.leaf == "params['w']"
    # err.result.params: the last good params (issue 14), those of step 36 (t = 36), where the
    # objective was last finite; w untouched (its gradient was 0). Step 37 ran at t = 37.
    assert float(err.result.params["t"]) == 36.0 and float(err.bad_params["t"]) == 37.0
    np.testing.assert_array_equal(err.result.params["w"], jnp.ones(3))
    np.testing.assert_array_equal(err.result.values, jnp.arange(37.0))


def test_nonfinite_value_with_finite_gradients_names_no_leaf():
    @ppl.expectation
    def cliff(params):
        return jnp.where(params > 2.5, jnp.nan, params)  # slope 1 or 0: always finite

    with pytest.raises(inference.NonFiniteError, match="step 3 .*gradients were finite") as info:
        inference.fit(cliff, jnp.zeros(()), optimizer=optax.sgd(1.0), steps=10, progress=False)
    # Only the estimate was non-finite: said explicitly (issue 14); last good params: step 2's.
    assert info.value.leaf == "objective" and float(info.value.result.params) == 2.0


def test_minibatch_gradient_is_unbiased():
    """With ``batch=(0, B)``, each step sees B distinct points of N drawn with the step's key.

    The objective is linear in the parameter and scales the batch by N/B itself, so the SGD
    update (rate 1) is exactly the step's gradient ``(N/B) sum(x_batch)``, whose mean over
    steps must be ``sum(x)``; its exact variance without replacement gives the standard error.
    """
    N, B, steps = 40, 8, 2000
    x = jnp.linspace(-1.0, 3.0, N) ** 2

    @ppl.expectation
    def linear(params, xb):
        return params * (N / B) * jnp.sum(xb)

    result = inference.fit(linear, jnp.zeros(()), x, optimizer=optax.sgd(1.0), steps=steps,
                           batch=(0, B), progress=False)
    mean_grad = float(result.params) / steps
    var = (N / B) ** 2 * B * float(jnp.var(x)) * (N - B) / (N - 1)  # finite-population variance
    assert abs(mean_grad - float(jnp.sum(x))) < 4 * np.sqrt(var / steps)

    @ppl.expectation
    def most_repeats(params, xb):
        return params + jnp.max(jnp.sum(xb[:, None] == xb[None, :], axis=1)).astype(float)

    repeats = inference.fit(most_repeats, jnp.zeros(()), x, optimizer=optax.sgd(0.0), steps=200,
                            batch=(0, B), progress=False).values
    np.testing.assert_array_equal(repeats, 1.0)  # no point twice within a step


def test_minibatch_elbo_scaled_by_subsampled_plate_is_unbiased():
    """A model that scales its likelihood with ``plate(N, subsample_size=B)``: at fixed params
    (learning rate 0) the minibatch ELBO estimates average to the full-data ELBO."""
    N, B, steps = 10, 4, 3000

    def model(n, y):
        mu = numpyro.sample("mu", dist.Normal(M0, S0))
        with numpyro.plate("data", n, subsample_size=y.shape[0]):
            numpyro.sample("y", dist.Normal(mu, SIG), obs=y)

    guide = guides.normal(model, init_loc="zeros")
    params = ppl.init_params(guide, jax.random.key(0), N, Y)
    objective = ppl.objectives.elbo(model, guide)
    mini = inference.fit(objective, params, N, Y, optimizer=optax.sgd(0.0), steps=steps,
                         batch=(1, B), progress=False).values
    full = inference.fit(objective, params, N, Y, optimizer=optax.sgd(0.0), steps=steps,
                         progress=False).values
    se = np.sqrt(np.var(mini) / steps + np.var(full) / steps)
    assert abs(float(np.mean(mini) - np.mean(full))) < 4 * se
    assert float(np.var(mini)) > float(np.var(full))  # the minibatch adds noise


def test_progress_bar_reports_a_few_times_not_every_step():
    @ppl.expectation
    def objective(params):
        values, _ = ppl.sim(lambda: numpyro.sample("z", dist.Normal(params, 1.0)))
        return -(values["z"] ** 2)

    bar = RecordingBar(500)
    inference.fit(objective, jnp.ones(()), optimizer=optax.adam(0.01), steps=500, progress=bar,
                  updates=10)
    done = [d for d, _ in bar.calls]
    assert done[0] == 0 and done[-1] == 500 and done == sorted(done)
    assert len(bar.calls) <= 11  # one opening call + one per chunk
    assert all("objective" in p for _, p in bar.calls[1:])


def test_progress_bar_prints(capsys):
    @ppl.expectation
    def objective(params):
        return -(params**2)

    inference.fit(objective, jnp.ones(()), steps=50)
    err = capsys.readouterr().err
    assert "fit" in err and "50/50" in err and "objective=" in err


@ppl.expectation
def quadratic(params, x):
    return -jnp.sum((params - x) ** 2)


@pytest.mark.parametrize("steps", [0, -1, 2.5, True, "10"])
def test_steps_must_be_a_positive_int(steps):
    with pytest.raises(ValueError, match="steps must be a positive int"):
        inference.fit(quadratic, jnp.zeros(2), jnp.ones(2), steps=steps, progress=False)


@pytest.mark.parametrize("batch, message", [
    (3, r"batch must be None or \(argnum, batch_size\)"),
    ((1, 2), "argnum 1 is not the index of a data argument"),
    ((0, 5), "batch_size 5 must be between 1 and the data size 2"),
    ((0, 0), "batch_size 0 must be between 1"),
])
def test_bad_batch(batch, message):
    with pytest.raises(ValueError, match=message):
        inference.fit(quadratic, jnp.zeros(2), jnp.ones(2), batch=batch, progress=False)


def test_bad_objective_optimizer_and_params():
    with pytest.raises(TypeError, match="@ppl.expectation"):
        inference.fit(lambda p: -p**2, jnp.zeros(()), progress=False)
    with pytest.raises(TypeError, match="optax GradientTransformation"):
        inference.fit(quadratic, jnp.zeros(2), jnp.ones(2), optimizer="adam", progress=False)
    with pytest.raises(TypeError, match=r"params\['n'\] has dtype int32"):
        inference.fit(quadratic, {"n": jnp.zeros(2, jnp.int32)}, jnp.ones(2), progress=False)
    with pytest.raises(TypeError, match="key must be"):
        inference.fit(quadratic, jnp.zeros(2), jnp.ones(2), key="seed", progress=False)
