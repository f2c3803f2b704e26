"""``inference.fit``'s :class:`NonFiniteError` (issue 14): the last GOOD params and optimizer
state (those of the step before the bad one), the step, the leaf that went non-finite, and
an explicit word when only the objective estimate did; in float32 and float64.

Every objective here is deterministic, so ``objective.grad_estimate`` is the exact gradient
and a hand-run of the same optax updates (eager, one step at a time) gives the trajectory
the compiled chunks must follow.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import inference
import ppl

DTYPES = [jnp.float32, jnp.float64]


def _x64(dtype):
    return jax.enable_x64(dtype == jnp.float64)


def _hand_run(objective, params, optimizer, steps):
    """The states ``(params, opt_state)`` entering steps 0..steps, and each step's value."""

    @jax.jit
    def one(params, state):
        value, grads = jax.value_and_grad(
            lambda p: objective.estimate(jax.random.key(0), p))(params)
        updates, state = optimizer.update(jax.tree.map(jnp.negative, grads), state, params)
        return optax.apply_updates(params, updates), state, value

    state = optimizer.init(params)
    states, values = [(params, state)], []
    for _ in range(steps):
        params, state, value = one(params, state)
        states.append((params, state))
        values.append(value)
    return states, values


def _assert_tree_close(got, want, dtype):
    # The compiled step and the eager hand-run may round Adam's sqrt/division differently:
    # a few ulps of the dtype, nothing more.
    eps = float(jnp.finfo(dtype).eps)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=8 * eps, atol=8 * eps)


@ppl.expectation
def cross(params):
    """Slope 1 in ``a`` and in each of ``b``; once ``a`` passes 0.95 the value and the gradient
    of ``c`` (the LAST leaf, not the first) become NaN, the others' gradients stay finite."""
    a, b, c = params["a"], params["b"], params["c"]
    bad = a > 0.95
    root = jnp.sqrt(jnp.where(bad, -jnp.abs(c), 1.0))  # NaN value and slope when bad
    return a + jnp.sum(b) + jnp.where(bad, jnp.sum(root), 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("updates", [1, 2, 7])  # one chunk; bad step first of its chunk; mid-chunk
def test_nan_objective_keeps_the_params_of_the_step_before(dtype, updates):
    with _x64(dtype):
        params = {"a": jnp.zeros((), dtype), "b": jnp.zeros(2, dtype), "c": jnp.ones(3, dtype)}
        opt = optax.adam(0.1)  # slope 1: Adam moves a by 0.1 a step, so a = 1.0 > 0.95 at step 10
        states, values = _hand_run(cross, params, opt, 11)
        assert bool(jnp.isfinite(values[9])) and not bool(jnp.isfinite(values[10]))
        with pytest.raises(inference.NonFiniteError, match="step 10 ") as info:
            inference.fit(cross, params, optimizer=opt, steps=20, progress=False, updates=updates)
    err = info.value
    assert err.step == 10 and err.kind == "objective"
    assert err.leaf == "params['c']" and err.leaves == ("params['c']",)
    # The last good state: the params and Adam state entering step 9 (not those of step 10,
    # where the objective is NaN), as the hand-run has them.
    assert err.params_step == 9
    _assert_tree_close(err.params, states[9][0], dtype)
    _assert_tree_close(err.opt_state, states[9][1], dtype)
    assert err.result.params is err.params
    _assert_tree_close(err.bad_params, states[10][0], dtype)
    assert float(err.bad_params["a"]) > 0.95 > float(err.params["a"])
    for leaf in jax.tree_util.tree_leaves((err.params, err.opt_state)):
        assert leaf.dtype in (dtype, jnp.int32, jnp.int64) and bool(jnp.all(jnp.isfinite(leaf)))
    assert err.result.values.dtype == dtype
    np.testing.assert_allclose(err.result.values, jnp.stack(values[:10]), rtol=8e-7)
    message = str(err)
    assert "params['c']" in message and "lower the learning rate" in message
    assert "err.params" in message and "check the model" in message
    # Restarting from the last good state with a smaller rate gets past step 10's point.
    with _x64(dtype):
        again = inference.fit(cross, err.params, optimizer=optax.sgd(1e-3), steps=5,
                              progress=False)
    assert bool(jnp.all(jnp.isfinite(again.values)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_only_the_objective_nonfinite_is_said_explicitly(dtype):
    @ppl.expectation
    def cliff(params):
        return jnp.where(params["x"] > 2.5, jnp.nan, params["x"])  # slope 1 or 0: finite

    with _x64(dtype):
        x0 = {"w": jnp.ones(2, dtype), "x": jnp.zeros((), dtype)}
        with pytest.raises(inference.NonFiniteError, match="only the objective") as info:
            inference.fit(cliff, x0, optimizer=optax.sgd(1.0), steps=10, progress=False)
    err = info.value
    # SGD(1) moves x by exactly 1 a step: x = 3 at step 3, the first NaN.
    assert err.step == 3 and err.kind == "objective" and err.leaf == "objective"
    assert err.leaves == ()
    assert float(err.params["x"]) == 2.0 and float(err.bad_params["x"]) == 3.0
    assert err.params["x"].dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_nonfinite_gradient_with_finite_objective_names_its_leaf(dtype):
    @ppl.expectation
    def kink(params):
        # sqrt(|w - 1|) at w = 1: value 0, slope non-finite; switched on once x passes 2.5.
        on = params["x"] > 2.5
        w = jnp.where(on, params["w"], 2.0)  # off: away from the kink, so the slope is finite
        return params["x"] + jnp.where(on, jnp.sqrt(jnp.abs(w - 1.0)), 0.0)

    with _x64(dtype):
        x0 = {"v": jnp.zeros((), dtype), "w": jnp.ones((), dtype), "x": jnp.zeros((), dtype)}
        with pytest.raises(inference.NonFiniteError, match=r"gradient of params\['w'\]") as info:
            inference.fit(kink, x0, optimizer=optax.sgd(1.0), steps=10, progress=False)
    err = info.value
    assert err.step == 3 and err.kind == "gradient" and err.leaf == "params['w']"
    assert float(err.params["x"]) == 2.0 and err.params_step == 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_overflowing_update_keeps_the_params_it_started_from(dtype):
    @ppl.expectation
    def linear(params):
        return params["z"] + 0.0 * params["a"]  # slope 1 in z, 0 in a

    with _x64(dtype):
        big = float(jnp.finfo(dtype).max) / 3.5  # z: 0, M/3.5, 2M/3.5, 3M/3.5, then inf
        x0 = {"a": jnp.ones((), dtype), "z": jnp.zeros((), dtype)}
        with pytest.raises(inference.NonFiniteError, match=r"update .*params\['z'\]") as info:
            inference.fit(linear, x0, optimizer=optax.sgd(big), steps=10, progress=False)
    err = info.value
    # Step 3's objective and gradient (at z = 3M/3.5) were finite; its update overflowed, so
    # the good state to restart from (with a smaller rate) is the one entering step 3.
    assert err.step == 3 and err.kind == "update" and err.leaf == "params['z']"
    assert err.params_step == 3
    np.testing.assert_allclose(float(err.params["z"]), 3 * big, rtol=1e-6)
    assert float(err.params["a"]) == 1.0
