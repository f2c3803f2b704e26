"""Reverse-time samplers of a score model: each takes ``(fn, process, key, shape or x_T, steps)``
and returns :class:`ScoreSamples` ``(x, nfe, path)``.

One module per sampler (``sde``: Euler-Maruyama; ``ode``: probability-flow ODE; ``dpm``:
multistep exponential integrator; ``predictor_corrector``; ``annealed``: annealed Langevin),
``common`` for the time grid and shared checks, ``gaussian_start`` for the analytical start.
"""

from inference.score.samplers.annealed import annealed_langevin
from inference.score.samplers.common import SCHEDULES, ScoreSamples, timesteps
from inference.score.samplers.dpm import dpm_solver
from inference.score.samplers.gaussian_start import GaussianStart, gaussian_flow
from inference.score.samplers.ode import pf_ode
from inference.score.samplers.predictor_corrector import predictor_corrector
from inference.score.samplers.sde import euler_maruyama

__all__ = [
    "SCHEDULES", "ScoreSamples", "timesteps", "GaussianStart", "gaussian_flow",
    "euler_maruyama", "pf_ode", "dpm_solver", "predictor_corrector", "annealed_langevin",
]
