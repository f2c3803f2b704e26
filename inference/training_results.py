"""What the training loop's trainers return and raise: :class:`FitResult` (a run that can
go on), :class:`NonFiniteError` and :func:`non_finite_error` (a run that stopped at a
non-finite step, with the last good state). :mod:`inference.training` re-exports them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

__all__ = ["FitResult", "NonFiniteError", "Stopped", "non_finite_error"]


class Stopped(NamedTuple):
    """Where a guarded replay stopped: the first step whose ``ok`` flags were not all true.

    Attributes:
        step: its 0-based index.
        ok: its flags (``False`` marks the parts that went non-finite), a numpy array.
        state: the state that step started from (every step before it was applied).
        previous: the state one step earlier (``state`` itself when ``step`` is 0).
    """

    step: int
    ok: np.ndarray
    state: Any
    previous: Any


class _FitFields(NamedTuple):
    params: Any
    values: jax.Array


class FitResult(_FitFields):
    """What :func:`inference.fit` and :func:`minimize` return: a ``(params, values)`` pair
    (it unpacks as one) that also knows where training stands, so that it can go on.

    Attributes:
        params: the fitted parameters (same pytree structure as the initial ones).
        values: per-step objective (or loss) values, shape ``(step,)``: every step since
            the first run this one continues (or the steps that ran before a non-finite
            one, in :attr:`NonFiniteError.result`).
        opt_state: the optimizer's state after the last step (``None`` where not kept).
        step: how many steps were applied in all (step ``i`` used ``fold_in(key, i)``).
        key: the run's key (a continuation with ``key=None`` goes on with it).
        interrupted: training was stopped by Ctrl-C (``KeyboardInterrupt``) before the
            steps asked for were done; ``params`` are those reached.

    Passing a FitResult as ``inference.fit``'s ``params`` continues it: ``fit(obj, fit(obj,
    p, steps=N), steps=M)`` equals ``fit(obj, p, steps=N + M)``, bit for bit.

    Example:
        >>> import jax.numpy as jnp
        >>> import jax.numpy as jnp
        >>> r = FitResult({"w": jnp.ones(2)}, jnp.zeros(3), step=3)
        >>> params, values = r
        >>> r.step, r.interrupted, values.shape
        (3, False, (3,))
    """

    def __new__(cls, params: Any, values: jax.Array, *, opt_state: Any = None,
                step: int | None = None, key: jax.Array | None = None,
                interrupted: bool = False) -> "FitResult":
        self = super().__new__(cls, params, values)
        self.opt_state, self.key, self.interrupted = opt_state, key, bool(interrupted)
        if step is None:  # the steps the values cover (a trainer's values may be a dict)
            leaves = [x for x in jax.tree.leaves(values) if np.ndim(x) > 0]
            step = int(np.shape(leaves[0])[0]) if leaves else 0
        self.step = int(step)
        return self

    opt_state: Any = None
    key: Any = None
    interrupted: bool = False

    def _replace(self, **changes: Any) -> "FitResult":
        new = super()._replace(**changes)
        new.__dict__.update(self.__dict__)
        return new

    def __repr__(self) -> str:
        flag = ", interrupted" if self.interrupted else ""
        return f"FitResult(step={self.step}{flag}, params={self.params!r})"


class NonFiniteError(FloatingPointError):
    """A training step's value, a gradient or an updated parameter stopped being finite.

    Raised by every trainer (:func:`inference.fit`, :func:`minimize` and the trainers built on
    it, :func:`models.latent_flow.fit`, :func:`models.coopflow.fit`). Step ``j`` evaluates
    the value and its gradients at the params after ``j`` updates and applies one more
    update. The first step where the value, a gradient leaf or an updated leaf is not finite
    is ``step``; nothing from it is applied.

    Attributes:
        step: 0-based index of that first bad step.
        kind: what went non-finite first: ``"objective"`` (the value; gradients may be
            non-finite too), ``"gradient"`` (a gradient leaf, with a finite value) or
            ``"update"`` (an updated parameter overflowed; value and gradients finite); the
            model trainers use their part names.
        leaf: the pytree path of the first parameter leaf whose gradient (or, for ``"update"``,
            updated value) was not finite (``"params['loc']"``), or ``"objective"`` when only
            the value was (every gradient finite); the model trainers name the part.
        leaves: every such parameter leaf path (empty when ``leaf == "objective"``).
        params, opt_state: the last good state, from which a smaller learning rate can carry
            on: for ``"objective"`` and ``"gradient"``, the params and optimizer state of the
            step before ``step`` (the last point where the value and its gradients were
            finite; the initial ones if ``step`` is 0); for ``"update"``, those of ``step``.
        params_step: how many updates ``params`` had (``step - 1``, ``step``, or 0).
        bad_params: the params ``step`` was evaluated at (where to look at the model).
        result: :class:`FitResult` with ``params`` and the ``step`` values before ``step``.

    Example:
        >>> import jax.numpy as jnp, optax, ppl, inference
        >>> @ppl.expectation
        ... def cliff(params):  # NaN once x passes 2.5; SGD(1) moves x by 1 per step
        ...     return jnp.where(params["x"] > 2.5, jnp.nan, params["x"])
        >>> try:
        ...     inference.fit(cliff, {"x": jnp.zeros(())}, optimizer=optax.sgd(1.0),
        ...                   steps=10, progress=False)
        ... except inference.NonFiniteError as err:
        ...     print(err.step, err.kind, err.leaf, float(err.params["x"]),
        ...           float(err.bad_params["x"]))
        3 objective objective 2.0 3.0
    """

    def __init__(self, message: str, step: int, leaf: str | None, result: FitResult, *,
                 kind: str | None = None, leaves: tuple[str, ...] = (), opt_state: Any = None,
                 bad_params: Any = None, params_step: int | None = None):
        super().__init__(message)
        self.step, self.leaf, self.result = step, leaf, result
        self.kind, self.leaves = kind, tuple(leaves)
        self.params, self.opt_state, self.bad_params = result.params, opt_state, bad_params
        self.params_step = step if params_step is None else params_step


def non_finite_error(owner: str, stopped: Stopped, values: jax.Array, names: list[str], *,
                     quantity: str = "loss", advice: str = "") -> NonFiniteError:
    """The :class:`NonFiniteError` for an :func:`optax_step` run that stopped.

    ``names`` are the parameter leaves' paths (:func:`leaf_names`), ``values`` the steps'
    values (through the bad step), ``quantity`` what the value is ("loss", "objective
    estimate"), ``advice`` where to look besides the learning rate.
    """
    bad_step = stopped.step
    n = len(names)
    flags = ~np.asarray(stopped.ok, bool)
    bad_value, bad_grads, bad_updates = bool(flags[0]), flags[1:1 + n], flags[1 + n:1 + 2 * n]
    value = float(values[bad_step])
    kind = "objective" if bad_value else ("gradient" if bad_grads.any() else "update")
    marks = bad_updates if kind == "update" else bad_grads
    leaves = tuple(name for name, f in zip(names, marks) if f)
    leaf = leaves[0] if leaves else "objective"
    listed = ", ".join(leaves[:4]) + (f" and {len(leaves) - 4} more" if len(leaves) > 4 else "")
    bad_params, bad_state = stopped.state
    if kind == "update":
        # The value and gradients at the step's params were finite: restart from there.
        good, good_state, good_step = bad_params, bad_state, bad_step
        what = (f"the update made parameter leaf {listed} non-finite (overflow; the {quantity} "
                f"{value} and the gradients were finite)")
    else:
        (good, good_state), good_step = stopped.previous, max(bad_step - 1, 0)
        if kind == "objective" and not leaves:
            what = (f"only the {quantity} was non-finite ({value}; the gradients were "
                    "finite), so err.leaf is 'objective'")
        elif kind == "objective":
            what = f"non-finite {quantity} ({value}) and gradient of {listed}"
        else:
            what = f"non-finite gradient of {listed} ({quantity} {value})"
    last = "" if kind == "update" else (f", the last point where the {quantity} and gradients "
                                        "were finite")
    message = (
        f"{owner}: step {bad_step} (0-based) went non-finite: {what}. Training stopped. "
        f"err.params and err.opt_state hold the last good state (after {good_step} update(s)"
        f"{last}); err.bad_params the params step {bad_step} was evaluated at. To fix: lower the "
        "learning rate (or clip gradients, optax.clip_by_global_norm) and restart from "
        f"err.params{', and ' + advice if advice else ''}."
    )
    return NonFiniteError(message, bad_step, leaf, FitResult(good, values[:bad_step]),
                          kind=kind, leaves=leaves, opt_state=good_state, bad_params=bad_params,
                          params_step=good_step)
