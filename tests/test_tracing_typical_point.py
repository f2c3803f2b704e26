"""``trace_model`` runs a model at the unconstrained zero point, not at a random draw, so
what it finds about a model (shapes, supports, a finite density) never depends on luck."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

import ppl
from models import posteriordb
from ppl.tracing import trace_model


def test_arma_traces_and_has_a_finite_density_at_the_typical_point():
    # Before: the trace drew theta uniformly from the initial box, the MA recursion over
    # 200 steps overflowed, and NumPyro's argument validation raised before sampling.
    model, data = posteriordb.load("arma-arma11")
    trace = trace_model(model, **data)
    assert {"mu", "phi", "theta", "sigma"} <= set(trace)
    pot = ppl.potential(model, **data)
    zero = {name: jnp.zeros(shape) for name, shape in pot.sites.items()}
    assert np.isfinite(float(pot.logdensity_fn(zero)))


def test_the_trace_is_the_same_on_every_call():
    def model():
        numpyro.sample("s", dist.HalfNormal(1.0))
        numpyro.sample("u", dist.Uniform(-1.0, 3.0).expand([2]))

    a, b = trace_model(model), trace_model(model)
    # The zero point: exp(0) = 1 for a positive site, the midpoint for an interval.
    assert float(a["s"]["value"]) == float(b["s"]["value"]) == 1.0
    np.testing.assert_allclose(np.asarray(a["u"]["value"]), [1.0, 1.0])
