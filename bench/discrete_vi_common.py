"""The shapes shared by the ``discrete_vi`` benchmark's problems (see ``bench/discrete_vi.py``).

A :class:`Problem` is one model with its data and an evaluator of the ELBO; its
:class:`Contestant` s are gradient estimators (ours, NumPyro's, hand-written JAX) that train
the same networks from the same initial parameters with the same optimizer.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax


class Contestant(NamedTuple):
    """One way of training a problem's parameters.

    Attributes:
        name: e.g. ``"ours/reinforce+baseline"``, ``"numpyro/TraceGraph_ELBO"``, ``"hand/enum"``.
        library: ``"ours"``, ``"numpyro"`` or ``"hand"``.
        strategy: the gradient strategy (``"reinforce"``, ``"vimco"``, ``"enum"``, ``"mvd"``,
            ``"default"``...), so the hand-written peer of each of ours can be found.
        init: ``init() -> state``: training state (parameters and optimizer state) at the
            problem's common initial parameters.
        step: ``step(state, key) -> state``: one optimizer step (jit-compiled by the harness).
        params: ``params(state) -> dict``: the parameters in the problem's common layout.
        grad: ``grad(params, key) -> dict``: one estimate of the loss's gradient at ``params``
            (common layout), for gradient variances.
    """

    name: str
    library: str
    strategy: str
    init: Callable[[], Any]
    step: Callable[[Any, jax.Array], Any]
    params: Callable[[Any], dict]
    grad: Callable[[dict, jax.Array], dict]


class Problem(NamedTuple):
    """A model, its data, and the estimators that train it.

    Attributes:
        name: the model's name in the JSON (``"sbn"``, ``"gmm"``, ``"air"``).
        evaluate: ``evaluate(params, key) -> float``: a low-variance ELBO estimate (many
            particles, or exact sums), the same for every contestant.
        contestants: the estimators.
        target_elbo: the ELBO level whose wall time to reach is reported.
        budget_s: wall-time budget per contestant.
    """

    name: str
    evaluate: Callable[[dict, jax.Array], float]
    contestants: list
    target_elbo: float
    budget_s: float
