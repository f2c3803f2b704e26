"""Compile once per shape (``inference.programs.cache``, ``inference.programs.fingerprint``,
``inference.disk_cache``): reuse across calls, never a stale program, a clear compile status.

The statistical checks use a conjugate model, mu ~ Normal(0, 10), y_i ~ Normal(mu, 1), whose
posterior mean is sum(y) / (n + 1/100): a reused program must give the posterior of the data
passed *now*. Tolerance: 5 Monte Carlo standard errors of the mean (ArviZ's ``mcse_mean``;
a correct sampler is outside that with probability < 1e-6), while a stale program (old data,
old constant) would be off by the data shift of 2 to 5 posterior standard deviations, i.e.
tens of MCSEs.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import inference
from inference.programs.fingerprint import Unfingerprintable, fingerprint

KW = dict(num_warmup=200, num_samples=300, num_chains=2, progress=False)
PRIOR_SD = 10.0


def conjugate(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SD))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def exact_mean(y, prior_mean=0.0):
    n = y.shape[0]
    return (float(np.sum(y)) + prior_mean / PRIOR_SD**2) / (n + 1.0 / PRIOR_SD**2)


def assert_posterior_mean(result, expected):
    summary = result.summary()
    mean, mcse = float(summary["mean"]["mu"]), float(summary["mcse_mean"]["mu"])
    assert abs(mean - expected) < 5 * mcse + 1e-3, (mean, expected, mcse)


# -- fingerprints ----------------------------------------------------------------------
def test_fingerprint_follows_closures_globals_and_helpers():
    def make(c):
        def model():
            return c * 2

        return model

    assert fingerprint(make(1.0)).digest == fingerprint(make(1.0)).digest
    assert fingerprint(make(1.0)).digest != fingerprint(make(2.0)).digest
    # Arrays by content, not identity.
    assert fingerprint(np.arange(3.0)).digest == fingerprint(np.arange(3.0)).digest
    assert fingerprint(np.arange(3.0)).digest != fingerprint(np.arange(3.0) + 1).digest
    # Method settings.
    assert fingerprint(inference.NUTS()).digest != fingerprint(
        inference.NUTS(target_accept_prob=0.9)).digest
    # A traced value cannot be a constant of a cached program.
    with pytest.raises(Unfingerprintable):
        jax.jit(lambda x: fingerprint(x))(1.0)


SCALE = 1.0


def _helper(x):
    return x * SCALE


def _uses_helper(x):
    return _helper(x) + 1


def test_fingerprint_follows_module_globals_through_helpers():
    global SCALE
    before = fingerprint(_uses_helper).digest
    SCALE = 3.0
    try:
        assert fingerprint(_uses_helper).digest != before
    finally:
        SCALE = 1.0
    assert fingerprint(_uses_helper).digest == before


# -- reuse and staleness through infer -------------------------------------------------
@pytest.fixture(scope="module")
def first_run():
    y = jnp.array([1.0, 2.0, 3.0, 2.5])
    return y, inference.infer(conjugate, y, key=0, **KW)


def test_new_data_of_the_same_shape_reuses_the_program(first_run):
    y, first = first_run
    assert_posterior_mean(first, exact_mean(y))
    y2 = y + 5.0  # a shift of ~10 posterior sds
    second = inference.infer(conjugate, y2, key=0, **KW)
    assert second.timing["cache"] == "memory" and second.timing["compile"] == 0.0
    assert_posterior_mean(second, exact_mean(y2))


def test_a_cached_program_uses_the_new_key(first_run):
    y, first = first_run
    again = inference.infer(conjugate, y, key=0, **KW)
    other = inference.infer(conjugate, y, key=1, **KW)
    assert again.timing["cache"] == other.timing["cache"] == "memory"
    np.testing.assert_array_equal(np.asarray(again.samples["mu"]), np.asarray(first.samples["mu"]))
    assert not np.allclose(np.asarray(other.samples["mu"]), np.asarray(first.samples["mu"]))


@pytest.mark.slow  # slow suite (issue 12: a 5-minute default suite); siblings in this file cover the same code by default
def test_a_new_shape_or_method_setting_compiles_anew(first_run):
    y, _ = first_run
    longer = inference.infer(conjugate, jnp.concatenate([y, y]), key=0, **KW)
    assert longer.timing["cache"] != "memory"
    tighter = inference.infer(conjugate, y, key=0, method=inference.NUTS(target_accept_prob=0.95),
                              **KW)
    assert tighter.timing["cache"] != "memory"
    assert_posterior_mean(longer, exact_mean(jnp.concatenate([y, y])))


def test_editing_a_closed_over_constant_gives_the_new_posterior():
    prior_mean = 0.0

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(prior_mean, PRIOR_SD))
        with numpyro.plate("data", y.shape[0]):
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    # One observation: the prior's mean matters (posterior mean moves by ~1/101 of it).
    y = jnp.array([1.0])
    first = inference.infer(model, y, key=0, **KW)
    assert_posterior_mean(first, exact_mean(y, 0.0))
    prior_mean = 400.0  # moves the posterior mean by ~4 posterior sds
    second = inference.infer(model, y, key=0, **KW)
    assert second.timing["cache"] != "memory"
    assert_posterior_mean(second, exact_mean(y, 400.0))


@pytest.mark.slow  # slow suite: compiles the fallback program (issue 12: a 5-minute default suite)
def test_a_model_that_reads_its_data_values_still_runs():
    # np.asarray on the data cannot be traced: infer compiles with the data as constants.
    def model(y):
        n_pos = int(np.sum(np.asarray(y) > 0))
        mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SD))
        with numpyro.plate("data", n_pos):
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y[:n_pos])

    y = jnp.array([1.0, 2.0, 3.0, 2.5])
    r = inference.infer(model, y, key=0, **KW)
    assert_posterior_mean(r, exact_mean(y))
    r2 = inference.infer(model, y + 1.0, key=0, **KW)  # data baked in: a new program, right
    assert_posterior_mean(r2, exact_mean(y + 1.0))


def test_fit_reuses_its_program_for_new_data():
    import optax
    import ppl

    @ppl.expectation
    def objective(params, target):
        values, _ = ppl.sim(lambda: numpyro.sample("z", dist.Normal(params, 0.1)))
        return -jnp.sum((values["z"] - target) ** 2)

    kw = dict(optimizer=optax.adam(0.1), steps=300, key=0, progress=False)
    r1 = inference.fit(objective, jnp.zeros(2), jnp.array([1.0, -1.0]), **kw)
    before = inference.programs.cache.PROGRAMS.hits
    r2 = inference.fit(objective, jnp.zeros(2), jnp.array([3.0, 2.0]), **kw)
    assert inference.programs.cache.PROGRAMS.hits == before + 1
    # The optimum is the target; 0.1 covers the optimizer's noise (z has sd 0.1).
    np.testing.assert_allclose(np.asarray(r1.params), [1.0, -1.0], atol=0.1)
    np.testing.assert_allclose(np.asarray(r2.params), [3.0, 2.0], atol=0.1)


@pytest.mark.slow  # slow suite: two methods compiled twice; the default suite checks reuse through NUTS and fit (issue 12: a 5-minute default suite)
def test_smc_and_gibbs_reuse_their_programs():
    y = jnp.array([1.0, 2.0, 3.0, 2.5])
    smc = inference.SMC(num_particles=200)
    inference.infer(conjugate, y, method=smc, num_samples=100, num_chains=2, progress=False)
    r = inference.infer(conjugate, y + 5.0, method=smc, num_samples=100, num_chains=2,
                        progress=False)
    assert r.timing["cache"] == "memory"
    # 100 draws of 200 particles: an SMC's draws are not independent, so this checks the
    # data were used (a stale program would sit ~10 posterior sds away), with 1 sd of room.
    sd = 1.0 / np.sqrt(4 + 1e-2)
    assert abs(float(np.mean(r.samples["mu"])) - exact_mean(y + 5.0)) < sd

    gibbs = inference.Gibbs({"mu": functools.partial(inference.mala, step_size=0.3)})
    inference.infer(conjugate, y, method=gibbs, **KW)
    r = inference.infer(conjugate, y + 5.0, method=gibbs, **KW)
    assert r.timing["cache"] == "memory"


# -- what a user sees ---------------------------------------------------------------------
def test_compiling_is_shown_before_sampling(capsys):
    def fresh(y):  # a model no other test compiled
        mu = numpyro.sample("mu", dist.Normal(1.0, PRIOR_SD))
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    inference.infer(fresh, 1.0, key=0, **{**KW, "progress": True})
    err = capsys.readouterr().err
    assert "NUTS: compiling" in err and "NUTS: compiled in" in err
    assert err.index("NUTS: compiled in") < err.index("NUTS warmup")
    inference.infer(fresh, 2.0, key=0, **{**KW, "progress": True})
    assert "compiling" not in capsys.readouterr().err  # the same program: nothing to compile


# -- the disk cache -----------------------------------------------------------------------
def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items()
            if k not in ("JAX_COMPILATION_CACHE_DIR", "PPL_JAX_COMPILATION_CACHE")}
    full.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=full, timeout=300)


@pytest.mark.slow  # slow suite: three fresh processes; the default suite checks the cache through test_program_store (issue 12: a 5-minute default suite)
def test_disk_cache_default_opt_out_user_choice_and_unwritable(tmp_path):
    code = """
        import warnings, jax
        warnings.simplefilter("always")
        import inference
        print("DIR", inference.disk_cache.cache_dir())
    """
    default = _run(code, {"XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert f"DIR {tmp_path / 'xdg' / 'ppl-jax' / 'jax'}" in default.stdout, default.stderr
    off = _run(code, {"PPL_JAX_COMPILATION_CACHE": "0"})
    assert "DIR None" in off.stdout, off.stderr
    mine = _run(code, {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "mine")})
    assert f"DIR {tmp_path / 'mine'}" in mine.stdout, mine.stderr
    # A path below a regular file cannot be created (even by root): one warning, no cache.
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    bad = _run(code, {"PPL_JAX_COMPILATION_CACHE": str(blocker / "cache")})
    assert "DIR None" in bad.stdout, bad.stderr
    assert bad.stderr.count("is not writable") == 1


def test_a_failing_disk_cache_warns_once_and_turns_off():
    import warnings

    from inference.programs import disk_cache

    saved = disk_cache.cache_dir()
    fake = warnings.WarningMessage(
        UserWarning("Error writing persistent compilation cache entry for 'jit_f': "
                    "OSError: [Errno 28] No space left on device"), UserWarning, "x.py", 1)
    try:
        with pytest.warns(RuntimeWarning, match="turned off") as record:
            disk_cache.report_problems([fake, fake])
        assert len(record) == 1 and disk_cache.cache_dir() is None
    finally:
        if saved is not None:
            disk_cache._set_dir(saved)


@pytest.mark.slow  # slow suite: VI compiled twice; fit's reuse is checked in the default suite (issue 12: a 5-minute default suite)
def test_vi_with_keyword_data_reuses_its_programs():
    def model(y=None):
        mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SD))
        with numpyro.plate("data", 4):
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    vi = inference.VI(guide="normal", steps=1500)
    kw = dict(method=vi, num_samples=500, num_chains=2, key=0, progress=False)
    y = jnp.array([1.0, 2.0, 3.0, 2.5])
    inference.infer(model, y=y, **kw)
    before = inference.programs.cache.PROGRAMS.hits
    r = inference.infer(model, y=y + 5.0, **kw)
    assert inference.programs.cache.PROGRAMS.hits >= before + 2  # the fit and the draws
    # A normal guide is exact here; 0.1 (0.2 posterior sd) covers Adam's jitter at lr 1e-2
    # and the Monte Carlo error of 1000 draws (0.016), while stale data would be 5 away.
    assert abs(float(np.mean(r.samples["mu"])) - exact_mean(y + 5.0)) < 0.1


user_config = __import__("types").ModuleType("user_config")  # a user's settings module
user_config.SCALE = 1.0


def _reads_a_user_module(x):
    return x * user_config.SCALE


def test_fingerprint_follows_attributes_of_user_modules():
    # `config.SCALE` edited between two calls must not reuse a program built with the old
    # value (modules of libraries are taken as fixed; a user's are not).
    before = fingerprint(_reads_a_user_module).digest
    user_config.SCALE = 2.0
    try:
        assert fingerprint(_reads_a_user_module).digest != before
    finally:
        user_config.SCALE = 1.0
    assert fingerprint(_reads_a_user_module).digest == before


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="memory maps counted on Linux")
def test_the_program_cache_drops_programs_when_the_process_nears_its_map_limit():
    # XLA's CPU runtime maps every kernel of a program separately: about a thousand
    # mappings for a NUTS program, so 64 cached programs reached vm.max_map_count (65530)
    # and a process (a notebook's; CI's test worker) died in XLA's compiler. A sweep of
    # every method over the posteriordb models died so after 65 runs. Here a budget
    # below what the process already holds leaves only the newest entry; a budget above
    # it keeps them all (up to maxsize). The dropped entry's executable is released: the
    # process's mappings go down.
    from inference.programs import cache

    tight = cache.ProgramCache(maxsize=10, map_fraction=1e-9)
    for i in range(3):
        tight.put(f"k{i}", object())
    assert len(tight) == 1 and tight.get("k2") is not None
    loose = cache.ProgramCache(maxsize=10, map_fraction=1.0)
    for i in range(3):
        loose.put(f"k{i}", object())
    assert len(loose) == 3

    held = cache.ProgramCache(maxsize=10, map_fraction=1.0)
    program = jax.jit(lambda x: jnp.tanh(x) * 3.0 + jnp.sin(x) ** 2).lower(jnp.ones(7)).compile()
    held.put("p", program)
    del program
    before = cache._memory_maps()
    held.map_fraction = 1e-9
    held.put("q", object())  # over budget: "p" goes
    assert held.get("p") is None and cache._memory_maps() < before
