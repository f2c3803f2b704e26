"""``Result.to_arviz()`` gives the installed ArviZ's own structure, usable without warnings.

Runs under ArviZ 0.x (InferenceData, Python 3.11) and ArviZ 1.x (DataTree, Python 3.12+);
CI runs this file under both.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import inference
from inference.arviz_data import import_arviz, arviz_major_version, from_groups

pytestmark = pytest.mark.arviz


def regression(x, y=None):
    a = numpyro.sample("a", dist.Normal(0.0, 2.0))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    with numpyro.plate("n", x.shape[0]):
        numpyro.sample("y", dist.Normal(a * x, s), obs=y)


@pytest.fixture(scope="module")
def result():
    x = jnp.linspace(-1.0, 1.0, 6)
    y = 0.5 * x + jnp.array([0.1, -0.2, 0.05, 0.0, 0.15, -0.1])
    return inference.infer(regression, x, y=y, num_samples=100, num_warmup=100, num_chains=2,
                           key=jax.random.key(1), progress=False)


def _groups(data):
    if arviz_major_version() >= 1:
        return set(data.children)
    return set(data.groups())


def test_groups_and_schema_names(result):
    data = result.to_arviz(log_likelihood=True)
    assert {"posterior", "sample_stats", "observed_data", "log_likelihood"} <= _groups(data)
    stats = set(data["sample_stats"].data_vars)
    assert {"lp", "energy", "diverging", "acceptance_rate", "step_size", "n_steps",
            "tree_depth", "reached_max_treedepth", "n_grad"} <= stats
    post = data["posterior"]
    assert tuple(post["a"].shape) == (2, 100)
    assert tuple(data["log_likelihood"]["y"].shape) == (2, 100, 6)
    np.testing.assert_allclose(np.asarray(data["observed_data"]["y"]), np.asarray(result.observed["y"]))


def test_log_likelihood_matches_scipy(result):
    from scipy import stats

    ll = result.log_likelihood()["y"]
    a, s = np.asarray(result.samples["a"]), np.asarray(result.samples["s"])
    x, y = np.asarray(result.model_args[0]), np.asarray(result.observed["y"])
    expected = stats.norm(a[..., None] * x, s[..., None]).logpdf(y)
    np.testing.assert_allclose(ll, expected, rtol=1e-4, atol=1e-5)


def test_summary_and_plot_trace_without_warnings(result):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    az = import_arviz()
    data = result.to_arviz()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = az.summary(data)
        az.plot_trace(data)
    plt.close("all")
    # ArviZ warns when it suspects the chain/draw layout is wrong (e.g. "more chains than
    # draws", "shape validation failed"); none of that may appear. Deprecation notices from
    # matplotlib inside ArviZ 0.x are not about our data and are ignored.
    about_layout = [str(w.message) for w in caught
                    if any(word in str(w.message).lower() for word in ("shape", "dim", "chain", "draw"))]
    assert about_layout == []
    assert {"a", "s"} <= set(table.index)
    # ArviZ's own R-hat/ESS found the draws: columns exist and are finite.
    rhat_col = "r_hat" if "r_hat" in table.columns else "rhat"
    assert np.all(np.isfinite(table[rhat_col].astype(float)))


def test_from_groups_drops_empty_groups():
    data = from_groups({"posterior": {"x": np.zeros((2, 5, 3))}, "observed_data": {}})
    assert _groups(data) >= {"posterior"}
    assert "observed_data" not in _groups(data)
