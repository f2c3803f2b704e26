"""Draws of enumerated sites are computed in equal batches: the model's enumeration is traced
(and compiled) once however the number of draws divides into batches (issue 15)."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from inference.discrete_draws import draw_discrete
from inference.programs.cache import PROGRAMS
from ppl.enumeration import enumeration_of
from ppl.tracing import trace_model


def _model_and_counter():
    calls = []

    def model(y):
        calls.append(1)  # once per trace of the model
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", y.shape[0]):
            z = numpyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
            numpyro.sample("y", dist.Normal(mu + 3.0 * z, 1.0), obs=y)

    return model, calls


def _draws(model, y, num_draws, batch_size):
    e = enumeration_of(model, (y,), {}, trace_model(model, y))
    mu = jnp.linspace(-1.0, 1.0, 2 * num_draws).reshape(2, num_draws)
    out, _ = draw_discrete(model, (y,), {}, {"mu": mu}, e, ["mu"], jax.random.key(0),
                           batch_size=batch_size)
    return np.asarray(out["z"])


@pytest.mark.slow  # two enumerated programs compiled (~5 s)
def test_a_remainder_batch_does_not_trace_the_model_again():
    y = jnp.array([0.0, 3.0, 1.5])
    model, calls = _model_and_counter()
    PROGRAMS.clear()
    _draws(model, y, 4, batch_size=4)  # 8 draws: 2 batches of 4
    even = len(calls)
    calls.clear()
    PROGRAMS.clear()
    _draws(model, y, 5, batch_size=4)  # 10 draws: with lax.map's remainder, 2 x 4 + 2
    assert len(calls) == even


@pytest.mark.slow  # two enumerated programs compiled (~5 s)
def test_padded_batches_give_the_draws_of_one_batch():
    # Each draw has its own key, so the batching must not change any draw.
    y = jnp.array([0.0, 3.0, 1.5, -0.5])
    model, _ = _model_and_counter()
    one = _draws(model, y, 5, batch_size=10)
    padded = _draws(model, y, 5, batch_size=4)  # 3 batches of 4, two padding draws
    assert one.shape == (2, 5, 4)
    np.testing.assert_array_equal(padded, one)
