"""``inference.infer`` with NUTS: shapes, statistics, determinism, and errors on bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import inference
import ppl

Y = jnp.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = jnp.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def schools(J, sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("J", J):
        z = numpyro.sample("theta_trans", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * z)
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def run(key=0, **kw):
    opts = dict(num_samples=300, num_warmup=300, num_chains=3, progress=False)
    opts.update(kw)
    return inference.infer(schools, 8, SIGMA, y=Y, key=jax.random.key(key), **opts)


@pytest.fixture(scope="module")
def result():
    return run()


def test_shapes_and_sites(result):
    assert set(result.samples) == {"mu", "tau", "theta_trans", "theta"}
    assert result.samples["mu"].shape == (3, 300)
    assert result.samples["theta"].shape == (3, 300, 8)
    assert bool(jnp.all(result.samples["tau"] > 0))
    np.testing.assert_allclose(
        result.samples["theta"],
        result.samples["mu"][..., None] + result.samples["tau"][..., None] * result.samples["theta_trans"],
        rtol=1e-5, atol=1e-5,
    )


def test_sample_stats_use_arviz_names(result):
    expected = {"lp", "energy", "diverging", "acceptance_rate", "step_size", "n_steps",
                "tree_depth", "reached_max_treedepth", "n_grad"}
    assert set(result.stats) == expected
    for name, value in result.stats.items():
        assert value.shape == (3, 300), name
    assert result.stats["diverging"].dtype == jnp.bool_
    # One gradient per leapfrog step; a tree of depth d has at most 2^d - 1 steps.
    np.testing.assert_array_equal(result.stats["n_grad"], result.stats["n_steps"])
    assert bool(jnp.all(result.stats["n_steps"] >= 1))
    assert bool(jnp.all(result.stats["n_steps"] <= 2 ** result.stats["tree_depth"] - 1))
    assert bool(jnp.all(jnp.isfinite(result.stats["lp"])))
    # The step size is fixed after warmup: constant along each chain.
    s = result.stats["step_size"]
    np.testing.assert_array_equal(s, jnp.broadcast_to(s[:, :1], s.shape))
    # Tuning sanity, not a statistical bound: dual averaging aims at 0.8 and sampling uses
    # its averaged iterate, which is known to land at or above the target (Stan shows the
    # same); a collapsed step size would give ~1.0, a failed adaptation far below 0.8.
    mean_accept = float(jnp.mean(result.stats["acceptance_rate"]))
    assert 0.75 < mean_accept < 0.98


def test_observed_data_and_timing(result):
    np.testing.assert_array_equal(result.observed["y"], Y)
    assert result.timing["run"] > 0 and result.timing["compile"] > 0


def test_same_key_same_draws_bitwise(result):
    again = run()
    for name in result.samples:
        np.testing.assert_array_equal(np.asarray(result.samples[name]), np.asarray(again.samples[name]))
    np.testing.assert_array_equal(np.asarray(result.stats["lp"]), np.asarray(again.stats["lp"]))


def test_int_seed_equals_key():
    def tiny():
        numpyro.sample("x", dist.Normal(0.0, 1.0))

    a = inference.infer(tiny, key=3, num_samples=50, num_warmup=50, num_chains=1, progress=False)
    b = inference.infer(tiny, key=jax.random.key(3), num_samples=50, num_warmup=50, num_chains=1,
                        progress=False)
    np.testing.assert_array_equal(np.asarray(a.samples["x"]), np.asarray(b.samples["x"]))


def test_discrete_latent_site_under_nuts_names_it():
    def mixture(y=None):
        z = numpyro.sample("z", dist.Bernoulli(0.3))
        numpyro.sample("y", dist.Normal(3.0 * z, 1.0), obs=y)

    with pytest.raises(ppl.ModelError, match=r"'z' \(Bernoulli\w*\).*NUTS.*Marginalise.*discrete sites"):
        inference.infer(mixture, y=1.0, progress=False)


def test_missing_data_argument_names_site_and_shape():
    with pytest.raises(ppl.ModelError, match=r"\['y'\].*'y' \(8,\)"):
        inference.infer(schools, 8, SIGMA, progress=False)


def test_wrong_data_shape_names_site_and_shapes():
    with pytest.raises(ppl.ModelError, match=r"observed site 'y'.*\(7,\).*\(8,\)"):
        inference.infer(schools, 8, SIGMA, y=Y[:7], progress=False)


def test_missing_positional_argument():
    with pytest.raises(TypeError, match="missing a required argument: 'sigma'"):
        inference.infer(schools, 8, y=Y, progress=False)


@pytest.mark.parametrize("name", ["num_chains", "num_samples"])
@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "4"])
def test_counts_must_be_positive_ints(name, bad):
    with pytest.raises(ValueError, match=f"{name} must be a positive int"):
        inference.infer(schools, 8, SIGMA, y=Y, progress=False, **{name: bad})


def test_unknown_method_says_what_fits():
    with pytest.raises(TypeError, match=r"inference\.NUTS\(\)"):
        inference.infer(schools, 8, SIGMA, y=Y, method="nuts", progress=False)


def test_nonfinite_initial_density_names_sites():
    def bad(y=None):
        rate = numpyro.sample("rate", dist.Gamma(2.0, 2.0))
        numpyro.sample("y", dist.Exponential(rate), obs=y)  # negative data: log density -inf

    with pytest.raises(ppl.ModelError, match=r"not finite: \['y'\]"):
        inference.infer(bad, y=-1.0, progress=False)


def test_progress_bar_runs_and_leaves_draws_unchanged(capsys):
    quiet = run(key=5, num_samples=60, num_warmup=60, num_chains=2)
    shown = run(key=5, num_samples=60, num_warmup=60, num_chains=2, progress=True)
    np.testing.assert_array_equal(np.asarray(quiet.samples["mu"]), np.asarray(shown.samples["mu"]))
    err = capsys.readouterr().err
    assert "NUTS sample" in err and "120/120" in err


def test_plain_python_and_method_mistakes_get_clear_answers():
    import jax.numpy as jnp

    def model(y=None):
        mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
        with numpyro.plate("d", len(y)):
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    kw = dict(num_warmup=50, num_samples=50, num_chains=2, progress=False)
    with pytest.raises(TypeError, match=r"pass an instance, e\.g\. method=inference\.NUTS\(\)"):
        inference.infer(model, y=jnp.ones(3), method=inference.NUTS, **kw)
    with pytest.raises(TypeError, match="a batch of keys"):
        inference.infer(model, y=jnp.ones(3), key=jax.random.split(jax.random.key(0), 2), **kw)
    with pytest.raises(ppl.ModelError, match="no latent sites"):
        inference.infer(lambda y=None: numpyro.sample("y", dist.Normal(0, 1), obs=y), y=1.0, **kw)
    # A list of numbers is data, as an array would be.
    r = inference.infer(model, y=[1.0, 2.0, 3.0], **kw)
    assert r.samples["mu"].shape == (2, 50)
    # A step size given as a JAX scalar is a step size.
    assert inference.MALA(step_size=jnp.asarray(0.1)).step_size is not None
