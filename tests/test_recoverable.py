"""Recoverable long runs: Ctrl-C, continuing chains, init_params, checkpoints, save/load.

Every run here has the shapes of the module's base run (NUTS, 40 warmup + 40 draws, 2
chains), so the compiled programs are shared; the extensions compile once per length.
Interruptions and crashes are raised from the progress bar's update, which the host loop
calls after every chunk (no real signals).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import inference
from inference import chains
from ppl.errors import ModelError
from draws_equal import assert_same_draws

W, S, C = 40, 40, 2
Y = jnp.array([1.0, 2.0, 3.0, 0.5, 2.2])


def model(y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    s = numpyro.sample("s", dist.HalfNormal(2.0))
    with numpyro.plate("data", 5):
        numpyro.sample("y", dist.Normal(mu, s), obs=y)


def infer_with(model, data, **options):
    """``infer(model, **data)`` with this module's counts, key 0, quiet (other test modules
    use it for their own models and methods)."""
    options = {"num_samples": S, "num_warmup": W, "num_chains": C, "key": 0,
               "progress": False, "diagnostics": False, **options}
    return inference.infer(model, **data, **options)


def run(**options):
    return infer_with(model, {"y": Y}, **options)


@pytest.fixture(scope="module")
def base():
    return run()


assert_same = assert_same_draws


class StopAt:
    """A ProgressBar stand-in raising ``error`` at the first update reaching ``step``."""

    def __init__(self, step, error):
        self.step, self.error, self.seen = step, error, []

    def __call__(self, total, desc="", enabled=True, phases=None):
        outer = self

        class Bar(inference.progress.ProgressBar):
            def update(self, done, postfix):
                outer.seen.append(int(done))
                if int(done) >= outer.step and len(outer.seen) > 1:
                    raise outer.error

        return Bar(total, desc, False, phases)


# -- continuing chains -------------------------------------------------------------------
def test_extend_appends_draws_from_the_last_state(base):
    ext = base.extend(S, progress=False, diagnostics=False)
    assert ext.samples["mu"].shape == (C, 2 * S) and ext.stats["lp"].shape == (C, 2 * S)
    np.testing.assert_array_equal(ext.samples["mu"][:, :S], base.samples["mu"])
    assert ext.state.t == base.state.t + S and ext.state.draws == 2 * S
    # No new warmup: the tuned step size is the one the new draws use.
    np.testing.assert_array_equal(ext.stats["step_size"][:, S:],
                                  np.broadcast_to(base.tuning["step_size"][:, None], (C, S)))
    # The new draws start from the state: the same chains moved elsewhere (mu = 40 on
    # the unconstrained scale) give other draws with the same keys.
    moved = _with_position(base.state, "mu", 40.0)
    far = _replace_state(base, moved).extend(S, progress=False, diagnostics=False)
    assert not np.array_equal(far.samples["mu"][:, S], ext.samples["mu"][:, S])


def _with_position(state, site, value):
    """A copy of a NUTS state with the unconstrained position of ``site`` set to ``value``."""
    tree = jax.tree_util.tree_unflatten(state.treedef, state.leaves)
    nuts_state = tree[0]
    position = dict(nuts_state.position)
    position[site] = np.full_like(position[site], value)
    tree = (nuts_state._replace(position=position), *tree[1:])
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    import dataclasses

    return dataclasses.replace(state, leaves=[np.asarray(x) for x in leaves], treedef=treedef)


def _replace_state(result, state):
    import dataclasses

    return dataclasses.replace(result, state=state)


@pytest.mark.slow  # slow suite (issue 12: a 5-minute default suite); siblings in this file cover the same code by default
def test_extend_twice_equals_extend_once_and_keys_give_the_same_extension(base):
    once = base.extend(2 * 20, progress=False, diagnostics=False)
    twice = base.extend(20, progress=False, diagnostics=False).extend(
        20, progress=False, diagnostics=False)
    assert_same(once, twice)
    k1 = base.extend(20, key=1, progress=False, diagnostics=False)
    k1_again = base.extend(20, key=1, progress=False, diagnostics=False)
    k2 = base.extend(20, key=2, progress=False, diagnostics=False)
    assert_same(k1, k1_again)
    assert not np.array_equal(k1.samples["mu"], k2.samples["mu"])


@pytest.mark.slow
def test_extend_equals_a_longer_run(base):
    longer = run(num_samples=S + 20)
    assert_same(base.extend(20, progress=False, diagnostics=False), longer)


def test_extend_refuses_results_without_chain_state(base):
    import dataclasses

    with pytest.raises(ValueError, match="no chain state"):
        dataclasses.replace(base, state=None).extend(10)
    with pytest.raises(ValueError, match="no model attached"):
        dataclasses.replace(base, model=None).extend(10)
    with pytest.raises(ValueError, match="method could not be rebuilt"):
        dataclasses.replace(base, method=None).extend(10)


# -- Ctrl-C --------------------------------------------------------------------------------
def test_ctrl_c_returns_the_draws_so_far_and_extend_finishes_the_run(base, monkeypatch):
    bar = StopAt(W + 20, KeyboardInterrupt())
    monkeypatch.setattr(chains, "ProgressBar", bar)
    with pytest.warns(UserWarning, match=r"interrupted \(KeyboardInterrupt\) after 20 of 40"):
        partial = run()
    monkeypatch.undo()
    assert partial.samples["mu"].shape == (C, 20) and partial.state.interrupted
    np.testing.assert_array_equal(partial.samples["mu"], base.samples["mu"][:, :20])
    # The rest of the run, continued from the interrupted state: the same draws.
    assert_same(partial.extend(20, progress=False, diagnostics=False), base)


def test_ctrl_c_during_extend_returns_the_new_draws_so_far(base, monkeypatch):
    monkeypatch.setattr(chains, "ProgressBar", StopAt(10, KeyboardInterrupt()))
    with pytest.warns(UserWarning, match=r"after 10 of 40 draws per chain"):
        partial = base.extend(S, progress=False, diagnostics=False)
    monkeypatch.undo()
    assert partial.num_draws == S + 10 and partial.state.draws == S + 10
    full = base.extend(S, progress=False, diagnostics=False)
    np.testing.assert_array_equal(partial.samples["mu"], full.samples["mu"][:, :S + 10])


def test_ctrl_c_during_warmup_propagates(monkeypatch):
    monkeypatch.setattr(chains, "ProgressBar", StopAt(W // 2, KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt, match="during warmup"):
        run()


# -- checkpoints ---------------------------------------------------------------------------
def test_a_crashed_run_resumes_from_its_checkpoint_bit_identically(base, tmp_path, monkeypatch):
    path = tmp_path / "run.npz"
    bar = StopAt(W + 14, RuntimeError("simulated crash"))
    monkeypatch.setattr(chains, "ProgressBar", bar)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(checkpoint=path, checkpoint_every=8)
    monkeypatch.undo()
    assert path.exists()
    resumed = run(checkpoint=path, checkpoint_every=8)
    assert_same(resumed, base)
    # The finished file holds the whole run: calling again returns it at once.
    assert_same(run(checkpoint=path), base)


def test_a_checkpoint_from_another_run_is_refused(base, tmp_path, monkeypatch):
    path = tmp_path / "run.npz"
    monkeypatch.setattr(chains, "ProgressBar", StopAt(8, KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        run(checkpoint=path)  # interrupted in warmup: the checkpoint stays
    monkeypatch.undo()
    with pytest.raises(ValueError, match="differs in key"):
        run(checkpoint=path, key=1)
    # Resumed from inside warmup (the adaptation state is in the file): the same run.
    assert_same(run(checkpoint=path), base)
    with pytest.raises(ValueError, match="checkpoint_every is given but checkpoint is not"):
        run(checkpoint_every=5)
    # Learned's i.i.d. draws from a fitted flow run nothing in chunks: nothing to checkpoint.
    with pytest.raises(TypeError, match="checkpoint= writes the state of the IRMH chains"):
        run(method=inference.Learned(source=jnp.zeros((10, 2)), correct=None),
            checkpoint=path)


# -- save and load -------------------------------------------------------------------------
def test_save_and_load_round_trip_and_extend(base, tmp_path):
    path = tmp_path / "result.npz"
    base.save(path)
    loaded = inference.load_result(path)
    assert_same(loaded, base)
    assert loaded.method == base.method
    np.testing.assert_array_equal(loaded.tuning["step_size"], base.tuning["step_size"])
    np.testing.assert_array_equal(loaded.observed["y"], np.asarray(Y))
    assert loaded.state.t == base.state.t and loaded.state.treedef is None
    with pytest.raises(ValueError, match="no model attached"):
        loaded.extend(20)
    again = inference.load_result(path, model, y=Y)
    assert_same(again.extend(20, progress=False, diagnostics=False),
                base.extend(20, progress=False, diagnostics=False))
    with pytest.raises(ValueError, match="not a saved Result"):
        bogus = tmp_path / "ckpt.npz"
        inference.checkpoint.write_archive(bogus, {}, {"kind": "checkpoint"})
        inference.load_result(bogus)


def test_save_keeps_nested_tuning_and_a_result_without_chains(tmp_path):
    # A Result built by hand (as VI's: nested fitted params, no chain state): no compiling.
    tuning = {"params": {"guide": {"loc": np.arange(3.0)}}, "pair": [np.ones(2), np.zeros(1)],
              "step_size": np.float32(0.5), "fn": (lambda x: x)}
    r = inference.Result(samples={"x": np.ones((2, 5))}, stats={"lp": np.zeros((2, 5))},
                         method=inference.VI(steps=10), tuning=tuning)
    r.save(tmp_path / "vi.npz")
    loaded = inference.load_result(tmp_path / "vi.npz")
    np.testing.assert_array_equal(loaded.tuning["params"]["guide"]["loc"], np.arange(3.0))
    np.testing.assert_array_equal(loaded.tuning["pair"][1], np.zeros(1))
    assert loaded.tuning["step_size"] == np.float32(0.5) and "fn" not in loaded.tuning
    assert loaded.method == inference.VI(steps=10) and loaded.state is None
    with pytest.raises(ValueError, match="no chain state to continue"):
        loaded.extend(5)


# -- init_params ---------------------------------------------------------------------------
def test_init_params_are_checked_before_running():
    with pytest.raises(ModelError, match=r"no value for latent site\(s\) \['s'\]"):
        run(init_params={"mu": 0.0})
    with pytest.raises(ModelError, match=r"site\(s\) \['nu'\] that are not latent"):
        run(init_params={"mu": 0.0, "s": 1.0, "nu": 1.0})
    with pytest.raises(ModelError, match=r"init_params\['mu'\] has shape \(3,\); expected \(\) "):
        run(init_params={"mu": jnp.zeros(3), "s": 1.0})
    with pytest.raises(ModelError, match=r"init_params\['s'\] = -1\.0* is outside the support"):
        run(init_params={"mu": 0.0, "s": -1.0})
    with pytest.raises(ModelError, match=r"\(chain 1\) is outside the support"):
        run(init_params={"mu": 0.0, "s": jnp.array([1.0, -1.0])})
    # A method that takes no init_params says so and why (NeuTra, Gibbs and Learned take them:
    # tests/test_neutra_recover.py, test_gibbs_recover.py, test_learned_recover.py).
    with pytest.raises(TypeError, match="init_params is not taken by SMC: SMC starts every"):
        run(method=inference.SMC(), init_params={"mu": 0.0, "s": 1.0})


def test_init_params_map_to_the_unconstrained_start_of_each_chain():
    from inference.starting_points import unconstrained_starts

    import ppl

    pot = ppl.potential(model, y=Y)
    x = unconstrained_starts(pot, {"mu": jnp.array([3.0, -3.0]), "s": 2.0}, num_chains=2)
    np.testing.assert_allclose(x["mu"], [3.0, -3.0])
    np.testing.assert_allclose(x["s"], [np.log(2.0)] * 2, rtol=1e-6)


def test_init_params_start_the_chains(base):
    # A start where the density is not finite is reported (so the start is used) ...
    with pytest.raises(ModelError, match=r"not finite at init_params \(chain 0\)"):
        run(init_params={"mu": 0.0, "s": 1e-30})
    # ... and a finite one gives a run of its own.
    r = run(init_params={"mu": jnp.array([1.0, 2.0]), "s": 1.0})
    assert r.samples["mu"].shape == (C, S)
    assert not np.array_equal(r.samples["mu"], base.samples["mu"])


@pytest.mark.slow
def test_init_params_are_where_the_chains_start():
    # Tiny steps (1e-4, at most one doubling): the first draws stay within 1e-3 of the start.
    r = inference.infer(model, y=Y, method=inference.NUTS(init_step_size=1e-4, max_tree_depth=1),
                        num_warmup=0, num_samples=4, num_chains=2, progress=False,
                        diagnostics=False, init_params={"mu": jnp.array([30.0, -30.0]), "s": 1.0})
    np.testing.assert_allclose(r.samples["mu"][:, 0], [30.0, -30.0], atol=1e-3)
    np.testing.assert_allclose(r.samples["s"][:, 0], [1.0, 1.0], atol=1e-3)


def test_checkpoint_file_is_written_atomically(tmp_path):
    path = tmp_path / "a.npz"
    inference.checkpoint.write_archive(path, {"x": np.arange(3)}, {"kind": "test"})
    assert os.listdir(tmp_path) == ["a.npz"]


@pytest.mark.slow
@pytest.mark.parametrize("method, x64", [(inference.MALA(find_mode=0), False),
                                         (inference.NUTS(), True)],
                         ids=["MALA-float32", "NUTS-float64"])
def test_extend_load_and_checkpoint_for_langevin_and_float64(method, x64, tmp_path):
    # A Langevin state (warmup inside init, another state structure) and float64 arrays go
    # through extend, save/load (the state's structure rebuilt from the model) and a
    # checkpointed run, each bit-identical to the plain longer run. (Extensions of S draws
    # reuse the run's own chunk program: fewer compiles.)
    with jax.enable_x64(x64):
        y = jnp.asarray(np.asarray(Y), dtype=jnp.result_type(float))
        opts = dict(method=method, num_warmup=W, num_chains=C, key=0, progress=False,
                    diagnostics=False)
        r = inference.infer(model, y=y, num_samples=S, **opts)
        assert r.samples["mu"].dtype == (np.float64 if x64 else np.float32)
        longer = inference.infer(model, y=y, num_samples=2 * S, **opts)
        assert_same(r.extend(S, progress=False, diagnostics=False), longer)
        r.save(tmp_path / "r.npz")
        loaded = inference.load_result(tmp_path / "r.npz", model, y=y)
        assert loaded.samples["mu"].dtype == r.samples["mu"].dtype
        assert_same(loaded.extend(S, progress=False, diagnostics=False), longer)
        checkpointed = inference.infer(model, y=y, num_samples=S, checkpoint=tmp_path / "c.npz",
                                       checkpoint_every=10, **opts)
        assert_same(checkpointed, r)


def mixture(y=None):
    mu = numpyro.sample("mu", dist.Normal(jnp.array([-2.0, 2.0]), 1.0).to_event(1))
    with numpyro.plate("data", 6):
        z = numpyro.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        numpyro.sample("y", dist.Normal(mu[z.astype(jnp.int32)], 0.5), obs=y)


@pytest.mark.slow
def test_extend_draws_the_enumerated_discrete_sites_for_the_new_draws():
    y = jnp.array([-2.1, -1.9, -2.2, 2.0, 2.1, 1.8])
    r = inference.infer(mixture, y=y, num_samples=S, num_warmup=W, num_chains=C,
                        progress=False, diagnostics=False)
    ext = r.extend(S, progress=False, diagnostics=False)
    assert ext.samples["z"].shape == (C, 2 * S, 6)
    np.testing.assert_array_equal(ext.samples["z"][:, :S], r.samples["z"])
    # Components 4 apart with noise sd 0.5: each point's assignment given mu is certain up to
    # exp(-(4 - 0.3)^2 / (2 * 0.25)) ~ 1e-12, so every new draw repeats the chain's labels
    # (a chain may sit in the label-switched mode: compared per chain).
    labels = np.asarray(r.samples["z"]).mean(axis=1)
    assert set(np.unique(labels)) <= {0.0, 1.0}
    np.testing.assert_array_equal(np.asarray(ext.samples["z"][:, S:]),
                                  np.broadcast_to(labels[:, None, :], (C, S, 6)))
    again = r.extend(S, progress=False, diagnostics=False)
    assert_same(again, ext)  # the same key: the same discrete draws


def test_a_checkpoint_is_not_resumed_with_an_edited_model(base, tmp_path, monkeypatch):
    # The file's fingerprint holds a digest of the model's code and the values it reads:
    # the same model defined again resumes, an edited one is refused by name.
    path = tmp_path / "run.npz"
    monkeypatch.setattr(chains, "ProgressBar", StopAt(W + 10, RuntimeError("crash")))
    with pytest.raises(RuntimeError, match="crash"):
        run(checkpoint=path, checkpoint_every=5)
    monkeypatch.undo()

    def edited(y=None):
        mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
        s = numpyro.sample("s", dist.HalfNormal(3.0))  # was HalfNormal(2.0)
        with numpyro.plate("data", 5):
            numpyro.sample("y", dist.Normal(mu, s), obs=y)

    options = dict(num_samples=S, num_warmup=W, num_chains=C, key=0, progress=False,
                   diagnostics=False, checkpoint=path, checkpoint_every=5)
    with pytest.raises(ValueError, match="differs in model"):
        inference.infer(edited, y=Y, **options)
    assert_same(run(checkpoint=path, checkpoint_every=5), base)
