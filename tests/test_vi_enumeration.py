"""VI and NeuTra on models with enumerated discrete sites (issue 15).

The guide (VI) or flow (NeuTra) covers the continuous sites only and is fitted to the
model's density with the discrete sites summed out; NeuTra's kernel runs on that marginal
density; ``infer`` draws the discrete sites afterwards from their exact conditionals. The
density is checked against ``ppl.potential``'s enumerated one (itself checked against
NumPyro's in tests/test_enumeration.py); the posteriors against NUTS on the same model
(slow).
"""

from __future__ import annotations

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
from inference.vi.enumerated import marginal_program
from ppl.errors import ModelError
from ppl.tracing import trace_model
from test_enumeration import CASES, _data, _sorted_by, mixture


def mix2(y):
    mixture(y, K=2)


# Well separated: 12 points around -3 and 12 around +3, sd 0.5 (posterior sd of each
# location about 0.14, of the scale about 0.08: the assignments are nearly certain).
Y_SEP = jnp.concatenate([-3.0 + 0.5 * jax.random.normal(jax.random.key(1), (12,)),
                         3.0 + 0.5 * jax.random.normal(jax.random.key(2), (12,))])


# Two cases in the default suite (plates, and the forward algorithm through scan); the
# others, as costly to trace, in the slow one.
@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow)
                                  if c in ("dawid_skene", "nested") else c for c in CASES])
def test_the_density_vi_fits_equals_the_enumerated_potential(case):
    """ppl.density of the marginal program (what the objectives evaluate) plus the
    log-Jacobians equals ppl.potential's enumerated log density at a random point, in
    float64 to 1e-6: mixture, Dawid-Skene, the HMM through scan, nested plates."""
    with jax.enable_x64(True):
        model, args = _data()[case]
        pot = ppl.potential(model, *args)
        marginal = marginal_program(model, args, {}, trace_model(model, *args),
                                    pot.enumeration)
        keys = jax.random.split(jax.random.key(7), len(pot.sites))
        u = {n: jax.random.normal(k, s) for k, (n, s) in zip(keys, pot.sites.items())}

        @jax.jit  # one program rather than many small eager ones
        def both(u):
            values = pot.to_constrained(u)
            values = {n: values[n] for n in pot.sites}
            log_jac = sum(jnp.sum(pot.transforms[n].log_abs_det_jacobian(u[n], values[n]))
                          for n in pot.sites)
            return ppl.density(marginal, values, *args) + log_jac, pot.logdensity_fn(u)

        ours, reference = both(u)
        assert ours.dtype == jnp.float64
        np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-6)


def test_guides_cover_the_continuous_sites_only():
    """The enumerated assignments are not guide sites; an unmarked discrete site still is
    an error that names the annotation."""
    sites = guides.latent_site_info(mix2, Y_SEP)
    assert list(sites) == ["w", "mu", "s"]

    def unmarked(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        z = numpyro.sample("z", dist.Bernoulli(0.5))
        numpyro.sample("y", dist.Normal(mu + z, 1.0), obs=y)

    with pytest.raises(ModelError, match=r"'z' is discrete.*enumerate"):
        guides.latent_site_info(unmarked, 0.5)


def test_a_guide_that_samples_an_enumerated_site_is_refused():
    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
        z = numpyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        numpyro.sample("y", dist.Normal(mu + 4.0 * z, 1.0), obs=y)

    def guide(y):
        numpyro.sample("mu", dist.Normal(numpyro.param("m", 0.0), 1.0))
        numpyro.sample("z", dist.Bernoulli(0.5))

    with pytest.raises(ModelError, match=r"samples site\(s\) \['z'\], which model .* marks "
                                         r"for enumeration"):
        inference.infer(model, 1.0, method=inference.VI(guide=guide, steps=10),
                        progress=False)


@pytest.mark.slow  # compiling the enumerated fit, draws and discrete draws: ~15 s
@pytest.mark.parametrize("x64", [False, True])
def test_vi_runs_on_an_enumerated_model_and_the_assignments_come_back(x64):
    """infer(method=VI) accepts the enumerated mixture: the continuous draws, and the
    assignments drawn from their exact conditionals, with the usual shapes; lp is the
    marginal log density at each draw (finite), in the run's float width."""
    with jax.enable_x64(x64):
        r = inference.infer(mix2, Y_SEP, method=inference.VI(steps=50), num_samples=20,
                            num_chains=2, key=0, progress=False, diagnostics=False)
        assert r.samples["z"].shape == (2, 20, 24) and r.samples["mu"].shape == (2, 20, 2)
        assert np.all(np.isfinite(np.asarray(r.stats["lp"])))
        assert r.samples["mu"].dtype == (jnp.float64 if x64 else jnp.float32)
        assert sorted(r.tuning["params"]) == ["guide.mu.loc", "guide.mu.scale", "guide.s.loc",
                                              "guide.s.scale", "guide.w.loc", "guide.w.scale"]


# -- agreement with NUTS (slow) ------------------------------------------------------------
@pytest.fixture(scope="module")
def nuts_reference():
    """Enumerated NUTS on the well-separated mixture: 2 chains x 1000 draws; the summaries
    are label-switching invariant (locations sorted, weights in their order)."""
    r = inference.infer(mix2, Y_SEP, num_samples=1000, num_warmup=500, num_chains=2, key=0,
                        progress=False, diagnostics=False)
    mu, w = _sorted_by(r.samples["mu"], r.samples["w"])
    return {"mu": mu, "w": w, "s": np.asarray(r.samples["s"])}


def _mcse(draws: np.ndarray) -> np.ndarray:
    import arviz

    return arviz.mcse(arviz.from_dict(posterior={"v": draws}), method="mean")["v"].values


@pytest.mark.slow
def test_vi_guide_means_agree_with_enumerated_nuts(nuts_reference):
    """Mean-field VI on the enumerated mixture: the guide's means of the sorted locations,
    the weights and the scale agree with NUTS' within 4 combined standard errors plus 0.3
    posterior sd.

    The bound: a mean-field Gaussian on the unconstrained space has exactly the posterior
    means when the posterior there is Gaussian (its correlations, which the guide drops,
    do not move the optimum's means). Here it is near-Gaussian: given the data, each
    component's parameters rest on about n = 12 points, and Bernstein-von Mises puts the
    posterior within O(n^-1/2) of a Gaussian, which moves the KL(q||p) optimum's mean (and
    the mean of its image on the constrained space) by a fraction of the posterior sd of
    that order, 1 / sqrt(12) = 0.29: hence 0.3 sd. The standard errors: NUTS' MCSE from its
    ESS (ArviZ) and the VI draws' sd / sqrt(n) (independent draws).

    The ELBO of a mixture also has a worse stationary point (one wide component covering
    both clusters); as practitioners do, the fit is restarted from 3 random initial points
    (keys) and the one with the highest final ELBO (mean of its last 300 estimates) is kept.
    """
    steps = 3000
    method = inference.VI(steps=steps, optimizer=optax.adam(
        optax.exponential_decay(0.05, steps, 0.05)))
    fits = [inference.infer(mix2, Y_SEP, method=method, num_samples=2000, num_chains=1,
                            key=k, progress=False, diagnostics=False) for k in range(3)]
    best = max(fits, key=lambda r: float(jnp.mean(r.tuning["objective"][-300:])))
    mu, w = _sorted_by(best.samples["mu"], best.samples["w"])
    ours = {"mu": mu, "w": w, "s": np.asarray(best.samples["s"])}
    for name, ref in nuts_reference.items():
        a = ours[name].reshape((-1,) + ours[name].shape[2:])
        se_vi = a.std(0) / np.sqrt(a.shape[0])
        bound = 4 * np.sqrt(_mcse(ref) ** 2 + se_vi ** 2) + 0.3 * ref.std((0, 1))
        diff = np.abs(a.mean(0) - ref.mean((0, 1)))
        assert np.all(diff <= bound), (name, diff, bound)


@pytest.mark.slow
def test_neutra_posterior_means_agree_with_enumerated_nuts(nuts_reference):
    """NeuTra on the enumerated mixture (its flow fitted to the marginal density, its NUTS
    run on it): the sorted locations, the weights and the scale agree with NUTS' within 4
    combined MCSE (both from ArviZ); the assignments come back."""
    method = inference.NeuTra(flow="affine_coupling", vi_steps=500,
                              flow_options={"layers": 1, "width": 8},
                              optimizer=optax.adam(1e-2))
    r = inference.infer(mix2, Y_SEP, method=method, num_samples=1000, num_warmup=500,
                        num_chains=2, key=1, progress=False, diagnostics=False)
    assert r.samples["z"].shape == (2, 1000, 24)
    mu, w = _sorted_by(r.samples["mu"], r.samples["w"])
    ours = {"mu": mu, "w": w, "s": np.asarray(r.samples["s"])}
    for name, ref in nuts_reference.items():
        diff = np.abs(ours[name].mean((0, 1)) - ref.mean((0, 1)))
        bound = 4 * np.sqrt(_mcse(ours[name]) ** 2 + _mcse(ref) ** 2)
        assert np.all(diff <= bound), (name, diff, bound)
