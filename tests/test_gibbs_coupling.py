"""Gibbs on sites whose elements are coupled, discrete Metropolis on vector sites, and the
step-size tuning of continuous blocks during warmup (issue 15, the Gibbs half).

Exact answers come from summing over every configuration. Where the only latent site is
drawn exactly each sweep (a joint enumeration), the draws are independent and a frequency
over ``n`` draws has binomial SE ``sqrt(p (1 - p) / n)``. Where draws are autocorrelated
(Metropolis, MALA), the SE comes from ``C`` independent chains: each chain's mean is one
number and the MCSE of their average is their sd over ``sqrt(C)``. Bounds are 4 SE (a
false alarm about once in 16,000 per statistic), while the errors these tests guard
against (0.501 or 0.0 for an exact 0.982) are hundreds of SE.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.contrib.control_flow import scan

import inference
from inference.mcmc import langevin
from inference.diagnostics import rank_normalized_rhat
from inference.mcmc.gibbs import DiscreteMH, Enumerate, Gibbs, gibbs
from inference.mcmc.gibbs_discrete import _Enumerator
from inference.mcmc.gibbs_model import _Model
from ppl.errors import ModelError

Z = 4.0


def binomial_close(freq, p, n, what):
    se = np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(freq - p) < Z * se), f"{what}: {freq} vs exact {p} (se {se})"


def chains_close(draws, exact, what):
    """draws: (chains, draws, ...); the MCSE from the spread of the chain means."""
    means = np.asarray(draws, np.float64).mean(axis=1)
    se = means.std(axis=0, ddof=1) / np.sqrt(means.shape[0])
    z = (means.mean(axis=0) - exact) / se
    assert np.all(np.abs(z) < Z), f"{what}: z {z} (estimate {means.mean(0)}, exact {exact})"


def x64(dtype):
    return jax.enable_x64(dtype == "float64")


# ---------------------------------------------------------------------------------------
# The coupled pair: each element's term carries the plate axis, yet links both
# ---------------------------------------------------------------------------------------
def coupled():
    z = numpyro.sample("z", dist.Bernoulli(0.5).expand([2]))
    numpyro.factor("agree", jnp.where(z == jnp.roll(z, 1), 2.0, 0.0))


# (0, 0) and (1, 1) get factor 2 + 2 = 4, the two others 0: P(z0 == z1) = e^4 / (e^4 + 1).
P_AGREE = np.exp(4.0) / (np.exp(4.0) + 1.0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_coupled_pair_is_enumerated_jointly_and_exactly(dtype):
    with x64(dtype):
        r = inference.infer(coupled, method=Gibbs({"z": Enumerate()}), num_samples=2000,
                            num_warmup=10, num_chains=2, key=0, progress=False)
    z = np.asarray(r.samples["z"]).reshape(-1, 2)
    binomial_close((z[:, 0] == z[:, 1]).mean(), P_AGREE, len(z), "P(z0 == z1)")
    # each sweep is an exact draw of z, so both agreeing states have probability P_AGREE / 2
    binomial_close(z[:, 0].mean(), 0.5, len(z), "P(z0 = 1)")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_discrete_mh_on_the_coupled_pair_reaches_every_configuration(dtype):
    """Before: every element flipped each step, so only z and 1 - z were visited (0.0)."""
    with x64(dtype):
        r = inference.infer(coupled, method=Gibbs({"z": DiscreteMH()}), num_samples=1000,
                            num_warmup=50, num_chains=32, key=1, progress=False)
    z = np.asarray(r.samples["z"])
    chains_close(z[..., 0] == z[..., 1], P_AGREE, "P(z0 == z1)")
    chains_close(z[..., 0], 0.5, "P(z0 = 1)")
    assert 0.0 < float(np.asarray(r.stats["acceptance_rate"]).mean()) < 1.0


def interacting(y):
    z = numpyro.sample("z", dist.Bernoulli(0.3).expand([3]))
    numpyro.sample("y", dist.Normal(z.sum(), 1.0), obs=y)


def test_discrete_mh_moving_two_of_three_elements_matches_enumeration():
    """Proposals that move a random pair of elements: still symmetric, still exact."""
    states = np.array(list(itertools.product([0, 1], repeat=3)))
    s = states.sum(1)
    w = 0.3 ** s * 0.7 ** (3 - s) * np.exp(-0.5 * (2.0 - s) ** 2)
    w /= w.sum()
    r = inference.infer(interacting, 2.0, method=Gibbs({"z": DiscreteMH(num_elements=2)}),
                        num_samples=1000, num_warmup=50, num_chains=32, key=2, progress=False)
    z = np.asarray(r.samples["z"])
    chains_close(z, w @ states, "P(z_i = 1)")
    chains_close(z.sum(-1) == 3, w[s == 3].sum(), "P(all three)")


# ---------------------------------------------------------------------------------------
# A hidden Markov chain written with numpyro's scan: the transition term of x_t carries the
# time axis but depends on x_{t-1}
# ---------------------------------------------------------------------------------------
Y_HMM = np.array([0.3, 2.1, -0.4, 1.2])
P_STAY = np.array([0.3, 0.8])  # P(x_t = 1 | x_{t-1} = 0), P(x_t = 1 | x_{t-1} = 1)


def hmm(y):
    def step(prev, y_t):
        x = numpyro.sample("x", dist.Bernoulli(jnp.asarray(P_STAY)[prev]))
        numpyro.sample("y", dist.Normal(2.0 * x, 1.0), obs=y_t)
        return x, None

    scan(step, jnp.array(0), y)


def hmm_exact():
    xs = np.array(list(itertools.product([0, 1], repeat=len(Y_HMM))))
    lw = []
    for x in xs:
        prev, lp = 0, 0.0
        for t, xt in enumerate(x):
            p1 = P_STAY[prev]
            lp += np.log(p1 if xt else 1 - p1) - 0.5 * (Y_HMM[t] - 2.0 * xt) ** 2
            prev = xt
        lw.append(lp)
    w = np.exp(np.array(lw) - max(lw))
    return (w / w.sum()) @ xs


@pytest.mark.parametrize("dtype", ["float32", pytest.param("float64", marks=pytest.mark.slow)])
def test_scan_markov_chain_is_enumerated_jointly_and_exactly(dtype):
    with x64(dtype):
        r = inference.infer(hmm, jnp.asarray(Y_HMM), method=Gibbs({"x": Enumerate()}),
                            num_samples=2000, num_warmup=10, num_chains=2, key=3, progress=False)
    x = np.asarray(r.samples["x"]).reshape(-1, len(Y_HMM))
    binomial_close(x.mean(0), hmm_exact(), len(x), "P(x_t = 1)")


def test_scan_markov_chain_over_the_bound_goes_one_element_at_a_time_when_asked():
    """Enumerate(sequential=True): 2^4 = 16 configurations exceed max_joint=8, so each x_t is
    drawn from its exact conditional given the others (single-site Gibbs: autocorrelated
    draws, MCSE from 32 independent chains)."""
    method = Gibbs({"x": Enumerate(max_joint=8, sequential=True)})
    r = inference.infer(hmm, jnp.asarray(Y_HMM), method=method, num_samples=500,
                        num_warmup=20, num_chains=32, key=5, progress=False)
    chains_close(np.asarray(r.samples["x"]), hmm_exact(), "P(x_t = 1)")


def test_coupled_sites_over_the_bound_are_refused_naming_the_term():
    with pytest.raises(ModelError, match=r"site\(s\) \['x'\] depend on 'x' jointly.*2\^4 = 16.*"
                                         r"max_joint=8.*sequential=True.*DiscreteMH"):
        gibbs(hmm, {"x": Enumerate(max_joint=8)}, jnp.asarray(Y_HMM))
    with pytest.raises(ModelError, match=r"\['agree'\].*jnp.roll"):
        gibbs(coupled, {"z": Enumerate(max_joint=3)})
    with pytest.raises(ValueError, match=r"Enumerate\(max_joint=0\)"):
        Enumerate(max_joint=0)
    with pytest.raises(ValueError, match=r"DiscreteMH\(num_elements=0\)"):
        DiscreteMH(num_elements=0)


N_LINK = 6
BAND = jnp.eye(N_LINK) + jnp.eye(N_LINK, k=3)  # element i also sees element i + 3

# Terms that carry the plate axis: element-local ones (gathers, elementwise maps, other
# sites' values) keep mixture assignments element-wise (K evaluations, not K^n); linking ones
# must be found.
LOCAL = {
    "gather": lambda z, mu: mu[z],
    "elementwise": lambda z, mu: jnp.where(z == 2, 1.0, -0.5) * mu[0],
    "diagonal matmul": lambda z, mu: jnp.eye(N_LINK) @ z.astype(jnp.float32),
}
LINKED = {
    "roll": lambda z, mu: (z == jnp.roll(z, 1)).astype(jnp.float32),
    "banded matmul": lambda z, mu: BAND @ z.astype(jnp.float32),
    "one neighbour": lambda z, mu: jnp.where(jnp.arange(N_LINK) == 5, z[2] * 1.0, 0.0),
    "cumsum": lambda z, mu: jnp.cumsum(z) * 0.1,
}


@pytest.mark.parametrize("what", list(LOCAL) + list(LINKED))
def test_coupling_check_finds_links_whatever_the_term_shape(what):
    term = {**LOCAL, **LINKED}[what]

    def model():
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        with numpyro.plate("n", N_LINK):
            z = numpyro.sample("z", dist.Categorical(jnp.ones(3) / 3))
            numpyro.factor("f", term(z, mu))

    coupling = _Enumerator(_Model(model, (), {}), "z").coupling
    assert list(coupling) == ([] if what in LOCAL else ["f"]), coupling


def test_the_coupling_check_under_jit_asks_for_concrete_arguments():
    """The check evaluates the model on the data: with traced data it cannot, and says so
    (inference.Gibbs runs it on the real data before compiling)."""
    @jax.jit
    def build(y):
        return gibbs(interacting, {"z": Enumerate()}, y).init({"z": jnp.zeros(3, jnp.int32)})

    with pytest.raises(ModelError, match=r"site 'z'.*needs concrete arguments.*outside jax.jit"):
        build(jnp.asarray(2.0))


def test_a_term_without_the_plate_axes_couples_by_its_shape():
    coupling = _Enumerator(_Model(interacting, (2.0,), {}), "z").coupling
    assert list(coupling) == ["y"] and "lacks the batch axes" in coupling["y"]


# ---------------------------------------------------------------------------------------
# Step-size tuning of a continuous block during warmup
# ---------------------------------------------------------------------------------------
Y_MIX = np.array([0.5, 1.8, 2.6, 1.1, 2.2])
SHIFT = 0.5  # the two z-conditionals of mu overlap (sd 0.45): a Gibbs chain switches z freely


def shifted(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 3.0))
    z = numpyro.sample("z", dist.Bernoulli(0.5))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu + SHIFT * z, 1.0), obs=y)


def shifted_exact_mean():
    """E[mu | y]: given z the mean is conjugate, N(mu; m_z, v) with v = 1 / (1/9 + n) and
    m_z = v sum(y - SHIFT z); z is weighted by its marginal likelihood."""
    n, v = len(Y_MIX), 1.0 / (1.0 / 9.0 + len(Y_MIX))
    logw, means = [], []
    for z in (0, 1):
        d = Y_MIX - SHIFT * z
        cov = np.eye(n) + 9.0 * np.ones((n, n))
        logw.append(-0.5 * d @ np.linalg.solve(cov, d))  # same log det for both z
        means.append(v * d.sum())
    w = np.exp(np.array(logw) - max(logw))
    return (w / w.sum()) @ np.array(means)


@pytest.mark.parametrize("dtype", ["float32", pytest.param("float64", marks=pytest.mark.slow)])
def test_a_badly_set_mala_block_is_tuned_during_warmup(dtype):
    """MALA at step 1e-3 on a posterior of sd ~0.45 moves ~0.045 a step: untuned, 8 chains
    started in [-2, 2] have not mixed after 1000 steps (R-hat >> 1.01). Tuned by dual
    averaging to acceptance 0.574, the step size grows a hundredfold during warmup."""
    factory = functools.partial(langevin.mala, step_size=1e-3)
    method = Gibbs({"z": Enumerate(), "mu": factory})
    with x64(dtype):
        r = inference.infer(shifted, jnp.asarray(Y_MIX), method=method, num_samples=1000,
                            num_warmup=300, num_chains=8, key=4, progress=False)
    mu = np.asarray(r.samples["mu"])
    assert mu.dtype == np.dtype(dtype)
    assert float(rank_normalized_rhat(mu[..., None])[0]) < 1.01
    chains_close(mu, shifted_exact_mean(), "E[mu]")
    h = np.asarray(r.tuning["step_size"]["mu"])
    assert h.shape == (8,) and np.all(h > 0.05), h
    assert 0.4 < float(np.asarray(r.stats["acceptance_rate"]).mean()) < 0.75


def test_tuning_can_be_turned_off_and_keeps_the_given_step_size():
    method = Gibbs({"z": Enumerate(), "mu": functools.partial(langevin.mala, step_size=1e-3)},
                   adapt_step_size=False)
    r = inference.infer(shifted, jnp.asarray(Y_MIX), method=method, num_samples=100,
                        num_warmup=20, num_chains=4, key=4, progress=False)
    assert "step_size" not in r.tuning
    assert float(rank_normalized_rhat(np.asarray(r.samples["mu"])[..., None])[0]) > 1.1
    with pytest.raises(ValueError, match=r"target_accept_prob=1.5"):
        Gibbs({"mu": langevin.mala}, target_accept_prob=1.5)


def test_only_factories_with_a_step_size_and_an_accept_step_are_tuned():
    """Dual averaging needs an acceptance rate: a combination of unadjusted kernels reports
    1.0 (every move taken), which would drive the step size up without bound."""
    from inference.mcmc import combinators as kernels
    from inference.mcmc.gibbs_tuning import has_accept, initial_step_size

    def ld(x):
        return -0.5 * jnp.sum(x**2)

    def info(alg):
        return alg.step(jax.random.key(0), alg.init(jnp.zeros(2)))[1]

    assert has_accept(info(langevin.mala(ld, 0.1)))
    assert not has_accept(info(langevin.ula(ld, 0.1)))
    assert not has_accept(info(kernels.compose(langevin.ula(ld, 0.1), langevin.ula(ld, 0.2))))
    assert has_accept(info(kernels.compose(langevin.ula(ld, 0.1), langevin.mala(ld, 0.2))))
    assert initial_step_size(functools.partial(langevin.mala, step_size=0.3)) == 0.3
    assert initial_step_size(langevin.mala) == 0.1  # required: tuning starts at 0.1
    assert initial_step_size(lambda ld: langevin.mala(ld, 0.3)) is None  # not tunable
