"""Gradient counts of inference.Learned: the source's gradients are part of its cost.

Learned runs its source (NUTS by default), fits a flow (no gradient of the model) and draws
with IRMH (no gradients). Its ``stats["n_grad"]`` used to be all zeros even after a NUTS
run; it now spreads the source's recorded count evenly over the draws (as SMC does), so
``stats["n_grad"].sum()`` is the whole cost.
"""

import jax
import pytest
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

import inference
from inference.flows import FlowSpec
from inference.learned import Flow, Learned

FLOW = {"flow": "affine_coupling", "steps": 20, "flow_options": {"layers": 1, "width": 4}}


def model(y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    numpyro.sample("y", dist.Normal(mu, 1.0).expand([3]).to_event(1), obs=y)


Y = jnp.array([1.0, 2.0, 3.0])


@pytest.mark.slow  # slow suite: a NUTS run plus a flow fit; tests/test_gradient_counts.py checks NUTS's counts by default (issue 12)
def test_learned_counts_the_gradients_of_the_nuts_source():
    method = Learned(source=inference.NUTS(), source_samples=50, source_warmup=50,
                     source_chains=2, **FLOW)
    r = inference.infer(model, y=Y, method=method, num_samples=40, num_warmup=10,
                        num_chains=2, key=0, progress=False)
    src = r.tuning["source"]
    kept = np.asarray(src.stats["n_grad"], np.float64).sum()
    warmup = np.asarray(src.tuning["warmup_n_grad"], np.float64).sum()
    assert kept >= 100 and warmup >= 100  # >= 1 leapfrog step per step: 2 chains x 50 each
    source = kept + warmup
    n_grad = np.asarray(r.stats["n_grad"], np.float64)
    assert n_grad.shape == (2, 40)
    # IRMH adds none: the draws carry the source's count, spread evenly (float32 sums: rtol)
    np.testing.assert_allclose(n_grad.sum(), source, rtol=1e-5)
    np.testing.assert_allclose(n_grad, source / n_grad.size, rtol=1e-5)
    assert r.tuning["n_grad"] == r.tuning["source_n_grad"] == source


def test_learned_with_a_given_flow_counts_no_gradients():
    """A fitted flow given as is: the source is not run, so nothing is counted."""
    spec = FlowSpec("affine_coupling", 1, layers=1, width=4)
    flow = Flow(spec, spec.init(jax.random.key(1)), loc=jnp.array([2.0]))
    r = inference.infer(model, y=Y, method=Learned(flow=flow, correct=None), num_samples=20,
                        num_chains=2, key=2, progress=False)
    assert "source" not in r.tuning
    assert float(np.sum(r.stats["n_grad"])) == 0.0
    assert r.tuning["n_grad"] == r.tuning["source_n_grad"] == 0.0
