"""The initial-point search's gradients are counted (issue 14), and chains are started and
stepped by one compiled program (issue 15).

The model puts a wall in the log density: ``x >= -1`` has log density ``-inf``, so a
uniform candidate in ``[-2, 2]`` is valid with probability 1/4 and the search usually
rejects a few candidates per chain before it finds one.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import inference
from inference.chains import run_chains
from inference.initialization import uniform_candidates
from inference.programs.cache import PROGRAMS


def _walled(calls=None):
    @jax.custom_vjp
    def counted(x):
        return x

    def backward(_, g):
        if calls is not None:
            jax.debug.callback(lambda: calls.append(1))
        return (g,)

    counted.defvjp(lambda x: (x, None), backward)

    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0))
        numpyro.factor("wall", jnp.where(x < -1.0, 0.0, -jnp.inf) + counted(x) * 0.0)

    return model


def _expected_search(key, num_chains, tries=100, radius=2.0):
    """Candidates tried per chain: the run's own draw of them (chains.run_chains splits
    its key into the initial points' key and the steps' key), up to the first valid one."""
    init_key = jax.random.split(key)[0]
    x = np.asarray(uniform_candidates(init_key, {"x": ()}, num_chains, tries, radius)["x"])
    return np.argmax(x < -1.0, axis=1) + 1


@pytest.mark.parametrize("x64", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["float32", "float64"])
@pytest.mark.parametrize("method, init_grads", [
    (inference.NUTS(), 0),  # starts from the search's value and gradient
    (inference.MALA(step_size=0.1), 1),  # evaluates its initial state once more
], ids=["NUTS", "MALA"])
def test_search_gradients_are_in_warmup_n_grad_exactly(method, init_grads, x64):
    # No warmup: warmup_n_grad is the search's count plus the sampler's initial state.
    key = jax.random.key(3)
    with jax.enable_x64(x64):
        out = run_chains(method, _walled(), (), {}, key=key, num_warmup=0, num_samples=5,
                         num_chains=4, progress=False)
        expected = _expected_search(key, 4)
    assert expected.max() > 1  # some chain rejected candidates (else the test is vacuous)
    assert np.asarray(out[2]["warmup_n_grad"]).tolist() == (expected + init_grads).tolist()
    assert out[0]["x"].dtype == (jnp.float64 if x64 else jnp.float32)
    assert bool(np.all(np.asarray(out[0]["x"]) < -1.0))


@pytest.mark.slow  # a host callback keeps the program out of the caches: compiled each time
@pytest.mark.parametrize("method", [inference.NUTS(), inference.MALA(step_size=0.1)],
                         ids=["NUTS", "MALA"])
def test_every_gradient_of_a_run_is_reported(method):
    # One chain (nothing masked by vmap): the host callback in the backward pass counts
    # every gradient evaluated; the report must match it exactly.
    calls = []
    r = inference.infer(_walled(calls), method=method, num_chains=1, num_warmup=20,
                        num_samples=10, key=5, progress=False, diagnostics=False)
    jax.effects_barrier()
    reported = int(np.sum(r.tuning["warmup_n_grad"])) + int(np.sum(r.stats["n_grad"]))
    assert len(calls) == reported


def test_init_params_count_one_gradient():
    # The given point's check, then MALA's initial state (no warmup steps).
    r = run_chains(inference.MALA(step_size=0.1), _walled(), (), {}, key=jax.random.key(0),
                   num_warmup=0, num_samples=3, num_chains=2, progress=False,
                   init_params={"x": -1.5})
    assert np.asarray(r[2]["warmup_n_grad"]).tolist() == [1 + 1, 1 + 1]


def test_a_run_compiles_one_program_and_extend_reuses_nothing_else():
    def model():
        numpyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))

    method = inference.MALA(step_size=0.5)  # any ChainMethod (this one compiles quickly)
    PROGRAMS.clear()
    r = inference.infer(model, method=method, num_chains=2, num_warmup=30,
                        num_samples=20, key=1, progress=False, diagnostics=False)
    assert len(PROGRAMS) == 1  # starting the chains and stepping them: one program
    again = inference.infer(model, method=method, num_chains=2, num_warmup=30,
                            num_samples=20, key=2, progress=False, diagnostics=False)
    assert again.timing["cache"] == "memory" and len(PROGRAMS) == 1
    longer = r.extend(20, progress=False, diagnostics=False)
    assert longer.samples["z"].shape == (2, 40, 2)
    assert len(PROGRAMS) == 2  # extend: the stepping part alone
