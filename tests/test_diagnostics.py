"""End-of-run diagnostics: R-hat, bulk ESS, divergences, tree depth, E-BFMI; infer's warnings."""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import inference
from inference.diagnostics import (DiagnosticWarning, bulk_ess, check_draws, ebfmi,
                                   rank_normalized_rhat)


def _ar1(rng, chains, draws, k, phi):
    x = rng.normal(size=(chains, draws, k))
    for t in range(1, draws):
        x[:, t] += phi * x[:, t - 1]
    return x


@pytest.mark.arviz
def test_rhat_and_bulk_ess_agree_with_arviz():
    import arviz as az

    rng = np.random.default_rng(0)
    for x in (rng.normal(size=(4, 300, 2)), _ar1(rng, 4, 300, 2, 0.8),
              _ar1(rng, 4, 300, 2, 0.8) + np.arange(4)[:, None, None] * 0.3,
              np.round(rng.normal(size=(4, 300, 2)), 1)):  # ties: repeated draws
        data = az.convert_to_dataset({"x": x})
        # Same definition (rank-normalized split R-hat, max with the folded one): equal up
        # to rounding.
        np.testing.assert_allclose(rank_normalized_rhat(x), az.rhat(data)["x"].values, rtol=1e-8)
        # Same rank normalization and split; NumPyro's and ArviZ's autocorrelation sums
        # truncate slightly differently (a few percent on these sizes).
        np.testing.assert_allclose(bulk_ess(x), az.ess(data, method="bulk")["x"].values,
                                   rtol=0.05)


def test_check_draws_names_the_problems_and_the_quantities():
    rng = np.random.default_rng(1)
    good = {"x": rng.normal(size=(4, 500, 3))}
    # iid draws: R-hat ~ 1 + O(1/n) (below 1.01 for 2000 draws), ESS ~ 2000 >> 400.
    assert check_draws(good, {}, num_chains=4) == []
    bad = {"x": rng.normal(size=(4, 500, 3)) + np.array([0, 0, 1, 2])[:, None, None] *
           np.array([0.0, 0.0, 1.0])}
    msgs = check_draws(bad, {}, num_chains=4)
    # Chains apart in x[2] only: its R-hat is high and its bulk ESS low, x[0] and x[1] pass.
    assert len(msgs) == 2 and msgs[0].startswith("R-hat above 1.01 for 1 quantity: x[2] (")
    assert msgs[1].startswith(
        "bulk ESS below 100 per chain (400 for 4 chains) for 1 quantity: x[2]")
    sticky = {"s": _ar1(rng, 2, 200, 1, 0.95)[..., 0]}
    msgs = check_draws(sticky, {}, num_chains=2)
    assert any(m.startswith("bulk ESS below 100 per chain (200 for 2 chains) for 1 quantity: s (")
               for m in msgs)
    # Draws that are not Markov chains (VI, ...): no R-hat/ESS checks.
    assert check_draws(bad, {}, num_chains=4, markov_chains=False) == []
    # Constant components (nothing to mix) are left out rather than reported as NaN.
    assert check_draws({"c": np.ones((2, 100))}, {}, num_chains=2) == []


def test_non_finite_draws_are_named_by_chain_draw_and_site():
    # Before: a NaN draw made the component's range NaN, it was taken for a constant and
    # skipped, and a chain that had diverged (ULA on arma11 in float32: 97% NaN) passed
    # every check in silence.
    rng = np.random.default_rng(0)
    samples = {"a": rng.normal(size=(3, 200)), "b": rng.normal(size=(3, 200, 2)),
               "k": np.zeros((3, 200), np.int32)}
    samples["a"][2, 120:] = np.nan
    samples["b"][0, 7, 1] = np.inf
    messages = check_draws(samples, {}, num_chains=3)
    assert messages[0].startswith("non-finite draws (NaN or inf) in chain 0, from draw 7 on, "
                                  "chain 2, from draw 120 on: site(s) 'a', 'b'."), messages
    assert "Use an adjusted method" in messages[0]
    assert not any(m.startswith("non-finite") for m in
                   check_draws({"a": rng.normal(size=(3, 200))}, {}, num_chains=3))


def test_check_draws_reports_divergences_tree_depth_and_ebfmi():
    rng = np.random.default_rng(2)
    x = {"x": rng.normal(size=(2, 400))}
    diverging = np.zeros((2, 400), bool)
    diverging[0, :3] = True
    depth = np.full((2, 400), 4)
    depth[1, :8] = 10
    white = rng.normal(size=(2, 400))  # E-BFMI ~ 2 for independent energies
    walk = np.cumsum(rng.normal(size=(2, 400)), axis=1)  # E-BFMI ~ 0.01 for a random walk
    energy = np.stack([white[0], walk[1]])
    stats = {"diverging": diverging, "reached_max_treedepth": depth >= 10, "tree_depth": depth,
             "energy": energy}
    msgs = check_draws(x, stats, num_chains=2)
    assert msgs[0].startswith("3 divergent transitions after warmup (0.38% of draws)")
    assert msgs[1].startswith("8 draws (1%) reached the maximum tree depth (10)")
    assert msgs[2].startswith("E-BFMI below 0.3 in chain 1 (")
    assert len(msgs) == 3 and all("\n" not in m for m in msgs)
    values = ebfmi(energy)
    assert values[0] > 1.0 and values[1] < 0.1


def model(y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    s = numpyro.sample("s", dist.HalfNormal(2.0))
    with numpyro.plate("data", 5):
        numpyro.sample("y", dist.Normal(mu, s), obs=y)


Y = jnp.array([1.0, 2.0, 3.0, 0.5, 2.2])


def _infer(**options):
    # 40 draws of 2 chains: bulk ESS is at most ~80 < 200, so there is always a message.
    return inference.infer(model, y=Y, num_samples=40, num_warmup=40, num_chains=2, key=0,
                           **options)


def test_infer_warns_each_problem_once_and_diagnostics_false_silences():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = _infer(progress=False)
    found = [str(w.message) for w in caught if issubclass(w.category, DiagnosticWarning)]
    expected = [f"NUTS: {m}" for m in r.diagnose()]
    assert expected and found == expected  # each once, in order (progress=False keeps them)
    assert any(m.startswith("NUTS: bulk ESS below 100 per chain") for m in found)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _infer(progress=False, diagnostics=False)
    assert not [w for w in caught if issubclass(w.category, DiagnosticWarning)]
