"""NeuTra (inference.neutra): flow-preconditioned MCMC through inference.infer."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest

import inference
import ppl
from inference.flows import FlowSpec
from inference.guides import latent_site_info
from inference.neutra import NeuTra, transported_model


def _model(y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    numpyro.deterministic("sigma2", sigma**2)
    numpyro.sample("y", dist.Normal(mu, sigma).expand([4]).to_event(1), obs=y)


Y = jnp.array([0.3, 1.1, 2.0, 1.4])


def test_transported_density_is_change_of_variables():
    """Transported log density at z = log p(x(z)) + log|det dx/dz| (with the base prior's
    term cancelled), against a brute-force Jacobian."""
    sites = latent_site_info(_model, Y)
    spec = FlowSpec("affine_coupling", dim=2, layers=2, width=8)
    theta = spec.init(jax.random.key(0))
    theta = theta + 0.2 * jax.random.normal(jax.random.key(1), theta.shape)
    m = transported_model(_model, spec, theta, sites)
    z = jnp.array([0.4, -0.7])

    def x_of_z(z):
        u = spec.forward(theta, z)[0]
        return jnp.array([u[0], jnp.exp(u[1])])

    x = x_of_z(z)
    brute = jnp.linalg.slogdet(jax.jacfwd(x_of_z)(z))[1]
    expected = ppl.log_density(_model, {"mu": x[0], "sigma": x[1]}, Y) + brute
    got = ppl.log_density(m, {"_neutra.z": z}, Y)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


# ~10-15 s each on 2 cores (a VI fit and a sampler, compiled): the slow suite. The module's
# doctest runs NeuTra (VI fit, then NUTS on the transported model) in the default suite.
@pytest.mark.slow
@pytest.mark.parametrize("kernel", [inference.NUTS(), inference.MALA(find_mode=0)])
def test_neutra_runs_kernels_and_maps_back(kernel):
    method = NeuTra(flow="iaf", kernel=kernel, vi_steps=500, optimizer=optax.adam(5e-3),
                    flow_options={"layers": 2, "width": 8})
    r = inference.infer(_model, y=Y, method=method, num_samples=300, num_warmup=300,
                        num_chains=2, key=0, progress=False)
    assert set(r.samples) == {"mu", "sigma", "sigma2"}
    assert r.samples["mu"].shape == (2, 300)
    assert bool(jnp.all(r.samples["sigma"] > 0))
    np.testing.assert_allclose(r.samples["sigma2"], r.samples["sigma"] ** 2, rtol=1e-5)
    assert r.tuning["vi_objective"].shape == (500,)
    # posterior mean of mu, against a long NUTS run's value (~1.2; sd ~0.6): MC error of
    # 600 correlated draws is < 0.1
    assert abs(float(r.samples["mu"].mean()) - 1.2) < 0.35


def test_neutra_bad_input():
    with pytest.raises(ValueError, match="unknown flow kind"):
        NeuTra(flow="glow")
    with pytest.raises(TypeError, match="MCMC method"):
        NeuTra(kernel=inference.VI())
    with pytest.raises(ValueError, match="vi_steps"):
        NeuTra(vi_steps=0)
    with pytest.raises(ValueError, match="unknown option"):
        NeuTra(flow_options={"widht": 3})
    with pytest.raises(ValueError, match="unknown objective"):
        NeuTra(objective="nope")
