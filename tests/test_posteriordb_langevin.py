"""MALA and adjusted underdamped Langevin (OBABO) recover the posteriordb reference posteriors.

Same check as for NUTS (``test_posteriordb_nuts.check_against_reference``): each reference
mean within 4 combined standard errors (our MCSE, which accounts for autocorrelation, and
the reference's), on 4 chains x 1000 kept draws. One-gradient kernels have a lower ESS per
step than NUTS, so the draws are thinned (MALA: every 5th step; OBABO with 4 leapfrog steps
per transition: also every 5th). The mean bound is the same 4-sigma bound, which widens by
itself where the ESS is lower. R-hat: the looser R-hat < 1.05 that the issue allows when
the ESS is lower -- kidiq under OBABO reaches a min ESS of only ~100-200 of 4000 draws
(intercept and slope correlate at -0.99), where split R-hat's own noise is ~0.01-0.02, so
1.01 would fail a correct sampler; MALA meets 1.01 on all six (measured). Dense mass matrices:
kidiq's and sblrc's coefficients are strongly correlated, which a diagonal mass cannot
undo for kernels without NUTS's long trajectories. Each case takes ~10-20 s (mostly
compilation), so all are in the slow suite.
"""

import pytest

import inference
from test_posteriordb_nuts import FAST, SLOW, check_against_reference

METHODS = {
    "MALA": inference.MALA(dense_mass=True, thinning=5),
    "OBABO": inference.Underdamped(adjusted=True, num_integration_steps=4, dense_mass=True,
                                   thinning=5),
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("name", FAST + SLOW)
def test_reference_posterior_langevin(name, method):
    check_against_reference(name, method=METHODS[method], rhat_bound=1.05)
