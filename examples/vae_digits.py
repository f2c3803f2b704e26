"""A variational autoencoder on scikit-learn's digits, trained with the ELBO and with IWAE-8.

    python examples/vae_digits.py                  # ~3-4 minutes on 2 CPU cores
    python examples/vae_digits.py --steps 500      # a quick look

The data are the 1797 bundled 8x8 digits (``sklearn.datasets.load_digits``), binarized at 8
of 16, split 80/20 into train/test with a fixed seed. The model and the guide are plain
NumPyro programs; the encoder and decoder are Equinox MLPs (64 -> 256 -> 256 -> 2x8 and
8 -> 256 -> 256 -> 64 Bernoulli logits) whose arrays enter the programs as NumPyro params
through NumPyro's own ``numpyro.contrib.module.eqx_module``, so ``ppl.init_params`` finds
them and ``ppl.with_params`` substitutes them, as for any ``numpyro.param`` site.

Two runs from the same initial networks, minibatches of 128 (``inference.fit(...,
batch=(0, 128))``):

* ``ppl.objectives.elbo(model, guide)``, the ELBO of a minibatch (a sum over its images);
* ``ppl.objectives.iwae(model, guide, K=8, plate="batch")``: the importance-weighted bound of
  each image with its own 8 particles, summed over the minibatch (the bound of Burda et al.
  and of NumPyro's ``RenyiELBO(alpha=0)``). Without ``plate=``, ``iwae`` would draw ``K``
  joint particles of the whole program and weight whole minibatches, a much looser bound;
  ``plate="batch"`` weights and averages the particles of each element of the plate
  separately (every latent site of this model is local to its image).

It prints, per image in nats, the train and test ELBO and an IWAE-5000 estimate of the test
``log p(x)`` for both runs, and saves test images, their reconstructions and samples from
the prior as a PNG.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.contrib.module import eqx_module

import inference
import ppl
from models.digit_plots import plot_digit_rows

LATENT = 8
HIDDEN = 256
PIXELS = 64
BATCH = 128


# ---------------------------------------------------------------------------------------
# data and networks
# ---------------------------------------------------------------------------------------


def load_data(seed: int = 0, test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """``(x_train, x_test)``: binarized digits (pixel >= 8 of 16), float32, shape ``(n, 64)``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x = (load_digits().data >= 8).astype(np.float32)
    x_train, x_test = train_test_split(x, test_size=test_fraction, random_state=seed)
    return x_train, x_test


def make_networks(key: jax.Array) -> tuple[eqx.nn.MLP, eqx.nn.MLP]:
    """``(encoder, decoder)``: 64 -> 256 -> 256 -> 16 (loc, log scale) and 8 -> 256 -> 256 -> 64."""
    k_enc, k_dec = jax.random.split(key)
    encoder = eqx.nn.MLP(PIXELS, 2 * LATENT, HIDDEN, depth=2, activation=jax.nn.relu, key=k_enc)
    decoder = eqx.nn.MLP(LATENT, PIXELS, HIDDEN, depth=2, activation=jax.nn.relu, key=k_dec)
    return encoder, decoder


def make_vae(encoder: eqx.nn.MLP, decoder: eqx.nn.MLP) -> tuple[Callable, Callable]:
    """``(model, guide)``, NumPyro programs over a batch ``x`` of shape ``(B, 64)``.

    The networks' arrays are the param sites ``"encoder$params"`` and ``"decoder$params"``
    (``eqx_module`` partitions the module into arrays, a ``numpyro.param``, and the rest);
    their initial values are the arrays of ``encoder`` and ``decoder``.
    """

    def model(x):
        decode = eqx_module("decoder", decoder)
        with numpyro.plate("batch", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([LATENT]).to_event(1))
            numpyro.sample("x", dist.Bernoulli(logits=jax.vmap(decode)(z)).to_event(1), obs=x)

    def guide(x):
        encode = eqx_module("encoder", encoder)
        with numpyro.plate("batch", x.shape[0]):
            loc, log_scale = jnp.split(jax.vmap(encode)(x), 2, axis=-1)
            numpyro.sample("z", dist.Normal(loc, jnp.exp(log_scale)).to_event(1))

    return model, guide


# ---------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------


def per_image_estimates(objective: ppl.Expectation, chunk: int, repeats: int = 1) -> Callable:
    """``evaluate(params, x, key) -> (n,)``: the objective of each image of ``x`` alone
    (``objective.estimate`` on a batch of one, averaged over ``repeats`` draws).

    Images go through ``chunk`` at a time (``jax.vmap`` of ``estimate`` over images and
    draws), padded to a whole chunk, so one compiled function serves any number of images.
    """

    @jax.jit
    def run(params, x, key):  # x (chunk, 64): (chunk,) estimates
        keys = jax.random.split(key, (x.shape[0], repeats))
        one = lambda k, xi: objective.estimate(k, params, xi[None])  # noqa: E731
        return jnp.mean(jax.vmap(jax.vmap(one, (0, None)))(keys, x), axis=1)

    def evaluate(params, x, key):
        n = x.shape[0]
        padded = np.concatenate([x, np.zeros(((-n) % chunk, x.shape[1]), x.dtype)])
        out = [run(params, jnp.asarray(padded[i:i + chunk]), jax.random.fold_in(key, i))
               for i in range(0, padded.shape[0], chunk)]
        return jnp.concatenate(out)[:n]

    return evaluate


# ---------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------


def train(name: str, objective: ppl.Expectation, params: dict, x_train: np.ndarray, steps: int,
          key: jax.Array, progress: bool = True, learning_rate: float = 1e-3
          ) -> tuple[dict, float]:
    """Fit ``params`` with Adam on minibatches of 128; returns ``(params, seconds)``."""
    t0 = time.perf_counter()
    result = inference.fit(
        objective, params, jnp.asarray(x_train),
        optimizer=optax.adam(learning_rate), steps=steps, key=key,
        batch=(0, min(BATCH, x_train.shape[0])), progress=progress,
    )
    jax.block_until_ready(result.params)
    seconds = time.perf_counter() - t0
    tail = result.values[-min(100, steps):]
    print(f"{name}: {steps} steps in {seconds:.1f}s (compile included); objective per image "
          f"over the last {tail.shape[0]} minibatches: "
          f"{float(jnp.mean(tail)) / min(BATCH, x_train.shape[0]):.3f}")
    return result.params, seconds


def plot(path: str, encoder, decoder, runs: dict[str, dict], x_test: np.ndarray,
         key: jax.Array, n: int = 10) -> None:
    """Test images, each run's reconstructions (decoder means at the encoder mean) and prior
    samples (decoder means at ``z ~ N(0, I)``), one row each."""
    rows = [("test images", x_test[:n])]
    z = jax.random.normal(key, (n, LATENT))
    for name, params in runs.items():
        enc = eqx.combine(params["encoder$params"], encoder)
        dec = eqx.combine(params["decoder$params"], decoder)
        loc = jax.vmap(enc)(jnp.asarray(x_test[:n]))[:, :LATENT]
        rows.append((f"{name}: reconstructions", jax.nn.sigmoid(jax.vmap(dec)(loc))))
        rows.append((f"{name}: samples", jax.nn.sigmoid(jax.vmap(dec)(z))))
    plot_digit_rows(path, rows, n=n)


def main(steps: int = 3000, out: str = "vae_digits.png", seed: int = 0,
         eval_particles: int = 5000, progress: bool = True,
         runs: tuple[str, ...] = ("elbo", "iwae(8)")) -> dict[str, dict[str, Any]]:
    """Train with ``elbo`` and with per-image ``iwae(8)`` (``plate="batch"``), print and
    return the metrics.

    ``runs`` picks which of the two to train. Returns ``{run: {"train_elbo", "test_elbo",
    "test_iwae", "seconds"}}`` (per image, nats).
    """
    t_start = time.perf_counter()
    x_train, x_test = load_data(seed)
    print(f"digits: {x_train.shape[0]} train / {x_test.shape[0]} test images, 64 binary pixels")
    k_net, k_fit, k_eval, k_plot = jax.random.split(jax.random.key(seed), 4)
    encoder, decoder = make_networks(k_net)
    model, guide = make_vae(encoder, decoder)
    params0 = ppl.init_params((model, guide), k_net, jnp.asarray(x_train[:BATCH]))

    objectives = {
        "elbo": ppl.objectives.elbo(model, guide),
        "iwae(8)": ppl.objectives.iwae(model, guide, K=8, plate="batch"),
    }
    # Per image: the ELBO (mean of 10 draws) and IWAE-`eval_particles`, an estimate of
    # log p(x) from below (8 images x eval_particles decoder passes at a time).
    elbo_of = per_image_estimates(ppl.objectives.elbo(model, guide), chunk=120, repeats=10)
    log_px_of = per_image_estimates(ppl.objectives.iwae(model, guide, K=eval_particles), chunk=8)
    unknown = set(runs) - set(objectives)
    if unknown:
        raise ValueError(f"unknown runs {sorted(unknown)}; choose from {list(objectives)}")
    trained, metrics = {}, {}
    for name in runs:
        objective = objectives[name]
        params, seconds = train(name, objective, params0, x_train, steps, k_fit, progress)
        trained[name] = params
        metrics[name] = {
            "train_elbo": float(jnp.mean(elbo_of(params, x_train, k_eval))),
            "test_elbo": float(jnp.mean(elbo_of(params, x_test, k_eval))),
            "test_iwae": float(jnp.mean(log_px_of(params, x_test, k_eval))),
            "seconds": seconds,
        }

    print(f"\nper image, nats ({steps} steps of batch {BATCH}; "
          f"log p(x) from IWAE-{eval_particles} on the test set):")
    print(f"{'trained with':<14}{'train ELBO':>12}{'test ELBO':>12}{'test log p(x)':>15}"
          f"{'train s':>10}")
    for name, m in metrics.items():
        print(f"{name:<14}{m['train_elbo']:>12.3f}{m['test_elbo']:>12.3f}{m['test_iwae']:>15.3f}"
              f"{m['seconds']:>10.1f}")

    plot(out, encoder, decoder, trained, x_test, k_plot)
    print(f"\nreconstructions and samples written to {os.path.abspath(out)}; "
          f"total {time.perf_counter() - t_start:.0f}s")
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps per objective")
    parser.add_argument("--out", default="vae_digits.png", help="PNG path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-particles", type=int, default=5000,
                        help="particles of the IWAE estimate of the test log p(x)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    main(args.steps, args.out, args.seed, args.eval_particles, not args.no_progress)
