"""Saving a fitted VI guide and rebuilding it (issue 14): ``tuning["unconstrained_params"]``
and ``VI.fitted_guide``; ``ppl.with_params`` refuses constrained values it can recognise.

Model: a conjugate Normal mean (posterior Normal, known in closed form) and a positive site
``s`` with no data (posterior = prior LogNormal(0, 0.5)); a mean-field Normal guide on the
unconstrained space contains both exactly. Its scales are ``softplus_positive`` params, so
constrained and unconstrained values differ: reading the saved constrained scale 0.14 as
unconstrained would give sd softplus(0.14) = 0.77.
"""

import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest

import inference
import ppl

N_DATA = 50
PRIOR_SD = 10.0


def model(y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SD))
    numpyro.sample("s", dist.LogNormal(0.0, 0.5))
    with numpyro.plate("data", N_DATA):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def settings() -> inference.VI:
    steps = 1500
    opt = optax.adam(optax.exponential_decay(0.05, steps, 0.01))
    return inference.VI(steps=steps, optimizer=opt)


def rebuilt_draws(path: str, loader: str, y: jax.Array, n: int) -> dict:
    """A fresh start: only the file, the model and the VI settings are shared with the fit."""
    if loader == "npz":
        params = dict(np.load(path))
    else:
        with open(path, "rb") as f:
            params = pickle.load(f)
    guide = settings().fitted_guide(model, params)
    return numpyro.infer.Predictive(guide, num_samples=n)(jax.random.key(11), y=y)


@pytest.fixture(scope="module", params=[jnp.float32, jnp.float64], ids=["float32", "float64"])
def fit(request):
    """``(dtype, y, result)``: one VI fit per dtype, shared by the tests below."""
    dtype = request.param
    with jax.enable_x64(dtype == jnp.float64):
        y = (3.0 + jax.random.normal(jax.random.key(0), (N_DATA,))).astype(dtype)
        r = inference.infer(model, y=y, method=settings(), num_samples=2000, num_chains=2,
                            key=1, progress=False)
    return dtype, y, r


def test_saved_params_rebuild_the_fitted_guide(tmp_path, fit):
    dtype, y, r = fit
    with jax.enable_x64(dtype == jnp.float64):
        raw = r.tuning["unconstrained_params"]
        assert sorted(raw) == ["guide.mu.loc", "guide.mu.scale", "guide.s.loc", "guide.s.scale"]
        assert all(v.dtype == dtype for v in raw.values())
        # Save as numpy arrays: an .npz and a pickle.
        saved = {k: np.asarray(v) for k, v in raw.items()}
        np.savez(tmp_path / "guide.npz", **saved)
        with open(tmp_path / "guide.pkl", "wb") as f:
            pickle.dump(saved, f)
        rebuilt = {loader: rebuilt_draws(os.fspath(tmp_path / f"guide.{ext}"), loader, y, 4000)
                   for loader, ext in (("npz", "npz"), ("pickle", "pkl"))}

    fitted = {"mu": np.asarray(r.samples["mu"]).ravel(),
              "log_s": np.log(np.asarray(r.samples["s"])).ravel()}
    n = fitted["mu"].size  # 4000 draws on each side
    # Sanity: the fit found the known posterior (mean-field fit error ~0.02 posterior sd
    # measured in tests/test_fit.py; the Monte Carlo error of 4000 draws is 0.016 sd).
    post_sd = (1 / PRIOR_SD**2 + N_DATA) ** -0.5
    post_mean = float(np.sum(np.asarray(y))) * post_sd**2
    assert abs(fitted["mu"].mean() - post_mean) < 0.15 * post_sd
    assert abs(fitted["mu"].std() / post_sd - 1) < 0.15
    assert abs(fitted["log_s"].std() / 0.5 - 1) < 0.15
    for loader, draws in rebuilt.items():
        assert draws["mu"].dtype == dtype
        got = {"mu": np.asarray(draws["mu"]), "log_s": np.log(np.asarray(draws["s"]))}
        for name in ("mu", "log_s"):
            sd = fitted[name].std()
            # Both sides are n independent Normal draws from the same guide: the difference
            # of means has sd sd*sqrt(2/n), of sds sd/sqrt(n) (each sample sd ~ sd/sqrt(2n)).
            # 5 of those: a false alarm ~1e-6. The old bug (constrained scale read as
            # unconstrained) changes mu's sd 5-fold.
            assert abs(got[name].mean() - fitted[name].mean()) < 5 * sd * np.sqrt(2 / n), \
                (loader, name)
            assert abs(got[name].std() - sd) < 5 * sd / np.sqrt(n), (loader, name)


def test_constrained_params_are_refused_with_the_way_out(fit):
    dtype, y, r = fit
    constrained = r.tuning["params"]
    assert isinstance(constrained, ppl.params.ConstrainedParams)
    # Read-only use keeps working: values, and pytree maps that keep the mark.
    assert float(constrained["guide.mu.scale"]) > 0
    mapped = jax.tree.map(np.asarray, constrained)
    assert isinstance(mapped, ppl.params.ConstrainedParams) and sorted(mapped) == sorted(constrained)
    guide = settings().make_guide(model)
    with pytest.raises(ppl.ParamError, match=r"constrained values.*unconstrained_params"):
        ppl.with_params(guide, constrained)
    with pytest.raises(ppl.ParamError, match=r"unconstrained_params"):
        settings().fitted_guide(model, mapped)
    with pytest.raises(TypeError, match=r"expected a dict"):
        settings().fitted_guide(model, [1.0, 2.0])
    # The unconstrained dict maps to the constrained one exactly.
    with jax.enable_x64(dtype == jnp.float64):
        again = ppl.constrain_params(guide, r.tuning["unconstrained_params"], y=y)
    for name in constrained:
        np.testing.assert_array_equal(again[name], constrained[name])


def test_fitted_guide_missing_a_param_names_it():
    guide = settings().fitted_guide(model, {"guide.mu.loc": jnp.zeros(())})
    with pytest.raises(ppl.ParamError, match=r"'guide.mu.scale'.*init"):
        numpyro.infer.Predictive(guide, num_samples=2)(jax.random.key(0), y=jnp.zeros(N_DATA))
