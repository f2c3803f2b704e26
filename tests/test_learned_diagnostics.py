"""Importance diagnostics and IRMH info of inference.learned: ties in the Pareto-k tail, and
the proposal's weight reported by every IRMH step (what the diagnostics are computed from)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inference.learned import irmh, pareto_khat


def _tied_log_weights():
    """100 heavy-tailed (Pareto, tail index 2) weights above a block of 500 equal ones: the
    tail of M = 213 draws (n = 5000) then holds 113 weights tied with the threshold."""
    rng = np.random.default_rng(1)
    top = np.sort(rng.pareto(2.0, 100))
    return np.log(np.r_[1.0 + top + 1e-3, np.ones(500), rng.uniform(0.1, 0.9, 4400)])


def test_pareto_khat_leaves_ties_with_the_threshold_out_of_the_fit():
    """Weights tied with the threshold are not exceedances: with them in the fit, the
    first-quartile exceedance was 0 and k came out NaN (so Learned's k > 0.7 warning could
    never fire). Fitted on the 100 exceedances instead, k is finite, agrees with ArviZ's
    psislw (0.x) to round-off, and a bounded tail still gives k < 0."""
    lw = _tied_log_weights()
    k = pareto_khat(lw)
    assert math.isfinite(k)
    # 100 Pareto(2) exceedances: k near 1/2, SE ~ (1 + k) / sqrt(100) = 0.15; 4 SE
    assert abs(k - 0.5) < 4 * 0.15, k
    az = pytest.importorskip("arviz")
    if hasattr(az, "psislw"):
        assert abs(k - float(az.psislw(lw.copy())[1])) < 1e-6
    # rounded weights (float32 sums of a near-exact proposal): many ties, bounded tail
    rounded = np.round(np.log(np.random.default_rng(2).lognormal(0.0, 0.05, 100)), 3)
    assert pareto_khat(rounded) < 0.5
    assert pareto_khat(np.zeros(1000)) == -math.inf  # equal weights: bounded


def test_irmh_info_is_the_proposals_weight_even_when_rejected():
    """IRMHInfo.log_weight is log p - log q at the proposed point, accepted or not (the
    importance diagnostics of Learned are computed from these). The proposal is redrawn
    from the step's key split (k_prop, k_acc) and checked against the info."""
    logp = lambda x: -0.5 * jnp.sum((x - 3.0) ** 2)  # noqa: E731  far from q: many rejections
    q_sample = lambda k: jax.random.normal(k, (2,))  # noqa: E731
    q_logp = lambda x: -0.5 * jnp.sum(x**2)  # noqa: E731
    alg = irmh(logp, q_sample, q_logp)
    state = alg.init(jnp.array([3.0, 3.0]))  # the mode of p: almost every proposal rejected
    keys = jax.random.split(jax.random.key(0), 50)

    @jax.jit
    def run(keys):
        infos = jax.vmap(alg.step, in_axes=(0, None))(keys, state)[1]
        proposals = jax.vmap(lambda k: q_sample(jax.random.split(k)[0]))(keys)
        return infos, jax.vmap(logp)(proposals) - jax.vmap(q_logp)(proposals)

    infos, want = run(keys)
    assert int(jnp.sum(~infos.is_accepted)) > 40
    np.testing.assert_allclose(infos.log_weight, want, rtol=1e-6)
    # a rejected step's weight is the proposal's, not the kept state's
    rejected = ~np.asarray(infos.is_accepted)
    state_w = float(state.logdensity - state.proposal_logdensity)
    assert np.all(np.asarray(infos.log_weight)[rejected] != state_w)
