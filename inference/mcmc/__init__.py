"""MCMC kernels (BlackJAX protocol: pure ``init``/``step``), their tuning, combinators and Gibbs.

``langevin`` (ULA, MALA, underdamped/OBABO/BAOAB, randomized midpoint, SGLD/SGHMC,
short-run Langevin flow), ``adaptation`` (step size and mass matrix for those kernels),
``combinators`` (compose, cycle, mixture), ``gibbs`` with ``gibbs_model``,
``gibbs_discrete`` and ``gibbs_tuning`` (within-Gibbs with enumeration, discrete
Metropolis-Hastings and step-size tuning of continuous blocks).
"""
