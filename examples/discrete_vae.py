"""A discrete VAE (sigmoid belief network) on binarized 8x8 digits.

    python examples/discrete_vae.py                          # ~1-2 minutes on 2 CPU cores
    python examples/discrete_vae.py --strategy mvd --steps 1000
    python examples/discrete_vae.py --quick --out /tmp/sbn   # a few seconds of training

The model (``models/discrete_vi/sbn.py``): 32 Bernoulli latent units per image, a linear
Bernoulli decoder and a linear Bernoulli encoder, as NumPyro programs. The latent units are
discrete, so the ELBO's gradient needs a discrete estimator; ``--strategy`` picks it:

* ``vimco`` (default): ``ppl.objectives.vimco(model, guide, K=4, plate="batch")``, IWAE-4 per
  image with VIMCO's per-image leave-one-out baselines (lowest variance per cost here);
* ``reinforce+mean``: ``elbo`` with ``ppl.Reinforce(baseline="mean")`` (2 draws);
* ``mvd``: ``elbo`` with ``ppl.MVD()`` (one branch per image and unit: low variance, costly);
* ``reinforce``: ``elbo`` with plain ``ppl.Reinforce()`` (the default for Bernoulli sites;
  the minibatch's units form one joint choice, so it is very noisy).

Minibatches of 32 of the 1437 training images, ``optax.adam(3e-3)`` through
``inference.fit``. It prints the train and test ELBO per image (4 draws of ``q`` per image) as
training goes, and saves test images, their reconstructions (decoder probabilities at the
encoder's most probable code), samples from the prior and each unit's decoder weights as a
PNG in ``--out`` (a directory; default a temporary one).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import inference
import ppl
from models.digit_plots import plot_digit_rows
from models.discrete_vi import sbn

STRATEGIES = ("vimco", "reinforce+mean", "mvd", "reinforce")
BATCH = 32


def objective_for(name: str, params0: dict) -> ppl.Expectation:
    """The objective that trains with strategy ``name`` (one of :data:`STRATEGIES`)."""
    model, guide = sbn.make_sbn(params0)
    if name == "vimco":
        return ppl.objectives.vimco(model, guide, K=4, plate="batch")
    strategy = {"reinforce+mean": ppl.Reinforce(baseline="mean"), "mvd": ppl.MVD(),
                "reinforce": ppl.Reinforce()}.get(name)
    if strategy is None:
        raise ValueError(f"discrete_vae: unknown strategy {name!r}; choose from "
                         f"{list(STRATEGIES)}.")
    return ppl.objectives.elbo(model, ppl.strategies(guide, z=strategy))


def plot(path: str, params: dict, x_test: np.ndarray, key: jax.Array, n: int = 10) -> None:
    """Rows: test images, reconstructions, prior samples (decoder means), decoder weights."""
    x = jnp.asarray(x_test[:n])
    code = (x @ params["enc_w"] + params["enc_b"] > 0).astype(x.dtype)
    recon = jax.nn.sigmoid(code @ params["dec_w"] + params["dec_b"])
    z = jax.random.bernoulli(key, jax.nn.sigmoid(params["prior_logits"]),
                             (n, params["prior_logits"].shape[0])).astype(x.dtype)
    samples = jax.nn.sigmoid(z @ params["dec_w"] + params["dec_b"])
    weights = params["dec_w"][:n]
    top = float(jnp.max(jnp.abs(weights)))
    plot_digit_rows(path, [("test images", x), ("reconstructions", recon),
                           ("prior samples", samples),
                           ("decoder weights", weights, "RdBu", -top, top)], n=n)


def main(steps: int = 30000, strategy: str = "vimco", out: str | None = None,
         hidden: int = 32, rounds: int = 6, learning_rate: float = 3e-3, seed: int = 0,
         quick: bool = False) -> dict[str, float]:
    """Train, print progress, save the plot; returns ``{"train_elbo", "test_elbo", "seconds"}``
    (per image, nats).

    Example (a few seconds)::

        metrics = main(quick=True)
    """
    x_train, x_test = sbn.load_binary_digits(seed)
    if quick:
        steps, hidden, rounds = min(steps, 60), min(hidden, 8), 2
        x_train, x_test = x_train[:256], x_test[:64]
    out = out or tempfile.mkdtemp(prefix="discrete_vae_")
    os.makedirs(out, exist_ok=True)
    k_init, k_eval, k_plot = jax.random.split(jax.random.key(seed), 3)
    xtr, xte = jnp.asarray(x_train), jnp.asarray(x_test)
    params = sbn.init_params(k_init, xtr, hidden)
    objective = objective_for(strategy, params)
    evaluate = jax.jit(lambda p, x: jnp.mean(sbn.elbo_per_image(p, x, k_eval, samples=4)))
    print(f"{xtr.shape[0]} train / {xte.shape[0]} test images, {hidden} Bernoulli units, "
          f"strategy {strategy}; initial train ELBO {float(evaluate(params, xtr)):.2f}")
    result, seconds = params, 0.0
    per_round = max(1, steps // rounds)
    for r in range(rounds):
        t0 = time.perf_counter()
        result = inference.fit(objective, result, xtr, optimizer=optax.adam(learning_rate),
                               steps=per_round, key=seed, batch=(0, BATCH), progress=False)
        seconds += time.perf_counter() - t0
        print(f"  step {(r + 1) * per_round:>6}: ELBO per image train "
              f"{float(evaluate(result.params, xtr)):7.2f}  test "
              f"{float(evaluate(result.params, xte)):7.2f}  ({seconds:.1f}s)")
    trained = result.params
    metrics = {"train_elbo": float(evaluate(trained, xtr)),
               "test_elbo": float(evaluate(trained, xte)), "seconds": seconds}
    path = os.path.join(out, "discrete_vae.png")
    plot(path, trained, x_test, k_plot)
    print(f"reconstructions, samples and decoder weights written to {os.path.abspath(path)}")
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30000)
    parser.add_argument("--strategy", default="vimco", choices=STRATEGIES)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--out", default=None, help="output directory (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few steps on 256 images")
    args = parser.parse_args()
    main(args.steps, args.strategy, args.out, args.hidden, seed=args.seed, quick=args.quick)
