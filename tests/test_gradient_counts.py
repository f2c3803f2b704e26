"""Every gradient a method takes is counted (issue 14): checked against a run-time count.

The model multiplies a zero-weight factor by ``counted(...)``, an identity whose backward
pass calls back to the host: each gradient of the log density runs it once. With one chain
nothing is masked by ``vmap`` (batched while loops evaluate finished chains too), so the
host count is exactly the number of gradients a sequential run takes.
"""

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

import inference


def _counting_model():
    calls = []

    @jax.custom_vjp
    def counted(x):
        return x

    def backward(_, g):
        jax.debug.callback(lambda: calls.append(1))
        return (g,)

    counted.defvjp(lambda x: (x, None), backward)

    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        numpyro.factor("count", counted(jnp.sum(x)) * 0.0)

    return model, calls


def test_nuts_reports_its_warmup_and_sampling_gradients():
    model, calls = _counting_model()
    r = inference.infer(model, method=inference.NUTS(), num_chains=1, num_warmup=50,
                        num_samples=30, progress=False, key=3, diagnostics=False)
    jax.effects_barrier()
    warmup = int(r.tuning["warmup_n_grad"].sum())
    kept = int(r.stats["n_grad"].sum())
    assert warmup >= 50 and kept >= 30  # at least one leapfrog step per iteration
    # Exactly: warmup_n_grad includes the initial point's check (one valid candidate),
    # whose value and gradient start the kernel (no second evaluation).
    assert len(calls) == warmup + kept, (len(calls), warmup, kept)
