"""Compiled programs kept on disk under our own fingerprint (``inference.programs.store``):
a new process loads them without tracing, gets the same draws, and a broken store is only
a miss.

Processes are real subprocesses pointed at a temporary cache directory
(``PPL_JAX_COMPILATION_CACHE``); in this process the store's directory is only swapped
through ``monkeypatch`` (JAX's own cache settings are never touched here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import inference
from inference.programs import cache as compilation
from inference.programs import store as program_store
from inference.programs.fingerprint import fingerprint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str, cache: str, env: dict | None = None, cwd: str = ROOT) -> dict:
    """Run ``code`` in a fresh interpreter on the cache ``cache``; its last stdout line is
    JSON, returned."""
    full = {k: v for k, v in os.environ.items()
            if k not in ("JAX_COMPILATION_CACHE_DIR", "PPL_JAX_COMPILATION_CACHE")}
    full.update({"PPL_JAX_COMPILATION_CACHE": cache, "PYTHONPATH": ROOT, **(env or {})})
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=full, cwd=cwd, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- (a) a new process loads what another one stored ------------------------------------
ROUND_TRIP = """
    import hashlib, json
    import jax, jax.numpy as jnp, numpy as np, numpyro, numpyro.distributions as dist
    import inference
    from inference.programs import store as program_store

    # A small jitted function, through the store directly.
    x = jnp.linspace(-1.0, 1.0, 5)
    digest = "ab" * 20
    f = program_store.load(digest)
    loaded = f is not None
    if f is None:
        f = jax.jit(lambda x: jnp.sin(x) * 3.0 + x ** 2).lower(x).compile()
        program_store.save(digest, f)

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
        with numpyro.plate("data", y.shape[0]):
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    r = inference.infer(model, jnp.array([1.0, 2.0, 0.5]), key=3, num_warmup=50,
                        num_samples=50, num_chains=2, progress=False)
    print(json.dumps({"loaded": loaded, "f": np.asarray(f(x)).tolist(),
                      "cache": r.timing["cache"],
                      "draws": np.asarray(r.samples["mu"]).tolist()}))
"""


def test_a_new_process_loads_the_stored_programs(tmp_path):
    cache = str(tmp_path / "cache")
    first = _python(ROUND_TRIP, cache)
    assert not first["loaded"] and first["cache"] == "miss"
    assert os.listdir(os.path.join(cache, program_store.SUBDIR))
    second = _python(ROUND_TRIP, cache)
    assert second["loaded"] and second["cache"] == "disk"
    x = np.linspace(-1.0, 1.0, 5, dtype=np.float32)
    np.testing.assert_allclose(second["f"], np.sin(x) * 3.0 + x**2, rtol=1e-5, atol=1e-6)
    assert second["f"] == first["f"]
    assert second["draws"] == first["draws"]  # the same key: the very same draws


FUSED = """
    import json
    import jax, jax.numpy as jnp, numpy as np
    import inference
    from inference.programs.cache import compile_program

    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # JAX caches it too

    def f(x):
        return jnp.cumsum(jnp.sin(x)[::2] * 3.0) + jnp.exp(-x[:4] ** 2).sum()

    x = jnp.linspace(0.0, 1.0, 8)
    program, info = compile_program(jax.jit(f), (x,), key=("fused-test",), label="t",
                                    progress=False)
    print(json.dumps({"cache": info["cache"], "out": np.asarray(program(x)).tolist()}))
"""


@pytest.mark.slow  # slow suite: two fresh processes (issue 12: a 5-minute default suite)
def test_an_executable_from_jax_cache_is_compiled_afresh_before_it_is_stored(tmp_path):
    # An executable JAX read back from its own cache re-serializes without its generated
    # code on the CPU ("NOT_FOUND: Function ..._fusion not found" when run): never stored.
    cache = str(tmp_path / "cache")
    store = os.path.join(cache, program_store.SUBDIR)
    first = _python(FUSED, cache)
    assert first["cache"] == "miss" and any(n.endswith(".prog") for n in os.listdir(store))
    for name in os.listdir(store):  # JAX's cache stays warm, ours is lost
        os.remove(os.path.join(store, name))
    from_jax = _python(FUSED, cache)
    assert from_jax["cache"] == "disk"
    assert [n[-6:] for n in os.listdir(store)] == [".fresh"]  # a marker, not the program
    fresh = _python(FUSED, cache)  # compiled with JAX's cache bypassed, then stored
    assert fresh["cache"] == "miss" and [n[-5:] for n in os.listdir(store)] == [".prog"]
    loaded = _python(FUSED, cache)
    assert loaded["cache"] == "disk"
    assert loaded["out"] == fresh["out"] == from_jax["out"] == first["out"]


# -- (b) a broken store is a miss -----------------------------------------------------------
@pytest.fixture
def store(tmp_path, monkeypatch):
    """The store pointed at ``tmp_path`` in this process, its warn-once flag reset."""
    monkeypatch.setattr(program_store, "directory", lambda: str(tmp_path))
    monkeypatch.setattr(program_store, "_warned", False)
    return tmp_path


def _forget(key, args):
    """Drop the in-memory entry of a program (as in a new process)."""
    found = compilation.program_key(key, compilation.abstract(args))
    compilation.PROGRAMS._entries.pop(found.digest, None)
    return found


def _double():
    return jax.jit(lambda x: x * 2.0).lower(jnp.ones(3)).compile()


def test_a_corrupt_entry_is_a_miss_and_one_warning(store):
    digest = "cd" * 20
    program_store.save(digest, _double())
    path = store / f"{digest}.prog"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    path.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="cannot be loaded") as record:
        assert program_store.load(digest) is None
    assert len(record) == 1 and not path.exists()  # removed, to be written anew
    other = "ef" * 20
    (store / f"{other}.prog").write_bytes(b"not a program at all")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # at most one warning per process
        assert program_store.load(other) is None
    # Through a compile session: a miss, a working program, and the entry written anew.
    key = ("program-store-test", 1.5)
    stable = _forget(key, (jnp.ones(3),)).stable
    (store / f"{stable}.prog").write_bytes(b"garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f, info = compilation.compile_program(jax.jit(lambda x: x + 1.5), (jnp.ones(3),),
                                              key=key, label="t", progress=False)
    assert info["cache"] != "disk" and f(jnp.ones(3)).tolist() == [2.5] * 3
    assert program_store.load(stable) is not None


def test_a_disk_entry_fills_the_memory_cache(store):
    key = ("program-store-memory", 2.5)
    f = jax.jit(lambda x: x * 2.5)
    _forget(key, (jnp.ones(2),))
    _, first = compilation.compile_program(f, (jnp.ones(2),), key=key, label="t",
                                           progress=False)
    assert first["cache"] != "disk"
    _forget(key, (jnp.ones(2),))  # as in a new process
    g, second = compilation.compile_program(f, (jnp.ones(2),), key=key, label="t",
                                            progress=False)
    assert second["cache"] == "disk" and g(jnp.ones(2)).tolist() == [2.5, 2.5]
    _, third = compilation.compile_program(f, (jnp.ones(2),), key=key, label="t",
                                           progress=False)
    assert third["cache"] == "memory"


def test_programs_with_host_callbacks_are_not_stored(store):
    def noisy(x):
        jax.debug.callback(lambda v: None, x)
        return x + 1

    program_store.save("12" * 20, jax.jit(noisy).lower(jnp.ones(2)).compile())
    assert not list(store.iterdir())


def test_programs_with_custom_calls_are_not_stored(store):
    # LAPACK (jnp.linalg) is a custom call on the CPU: a new process that loads such a program
    # before tracing any linear algebra crashes when it runs it (see the next test).
    program_store.save("13" * 20, jax.jit(jnp.linalg.inv).lower(jnp.eye(3)).compile())
    assert not list(store.iterdir())


DENSE = """
    import json
    import numpy as np, numpyro, numpyro.distributions as dist
    import inference

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
        s = numpyro.sample("s", dist.HalfNormal(2.0))
        with numpyro.plate("data", y.shape[0]):
            numpyro.sample("y", dist.Normal(mu, s), obs=y)

    r = inference.infer(model, np.array([1.0, 2.0, 0.5]), method=inference.NUTS(dense_mass=True),
                        key=3, num_warmup=50, num_samples=50, num_chains=2, progress=False)
    print(json.dumps({"draws": np.asarray(r.samples["mu"]).tolist()}))
"""


@pytest.mark.slow  # slow suite: two fresh processes
def test_a_dense_mass_nuts_program_runs_again_in_a_new_process(tmp_path):
    # NUTS's dense mass matrix takes Cholesky factors (LAPACK custom calls): when its program
    # was stored, the second process died of a segmentation fault loading it.
    cache = str(tmp_path / "cache")
    first = _python(DENSE, cache)
    second = _python(DENSE, cache)
    assert second["draws"] == first["draws"]


def test_the_store_keeps_the_newest_entries_within_its_bound(store, monkeypatch):
    program = _double()
    names = ["01" * 20, "02" * 20, "03" * 20]
    for i, name in enumerate(names):
        program_store.save(name, program)
        os.utime(store / f"{name}.prog", (1000 + i, 1000 + i))
    size = (store / f"{names[0]}.prog").stat().st_size
    monkeypatch.setenv(program_store.ENV, str(2 * size))
    program_store.save("04" * 20, program)
    assert sorted(p.name[:2] for p in store.iterdir()) == ["03", "04"]


# -- (c) the stable digest -------------------------------------------------------------------
MODEL_FILE = """
import numpyro, numpyro.distributions as dist

KINDS = {{"normal", "laplace", "cauchy"}}  # a set: its order follows string hashing


def make(loc):
    def model(y):
        mu = numpyro.sample("mu", dist.Normal(loc, 10.0))
        kind = "normal" if "normal" in KINDS else "laplace"
        numpyro.sample("y", dist.Normal(mu, {scale}), obs=y)
    return model
"""

DIGESTS = """
    import json, sys
    import jax.numpy as jnp
    import inference
    from inference.programs.cache import abstract, program_key
    sys.path.insert(0, {folder!r})
    import model_a, model_b

    def stable(model):
        parts = ("chunk", model, inference.NUTS(), 10, 10, 2)
        return program_key(parts, abstract((jnp.ones(3),))).stable

    print(json.dumps({{"a1": stable(model_a.make(1.0)), "a1_again": stable(model_a.make(1.0)),
                       "a2": stable(model_a.make(2.0)), "b1": stable(model_b.make(1.0))}}))
"""


@pytest.mark.slow  # slow suite: two fresh processes; the default suite loads stored programs in a new process (issue 12)
def test_the_stable_digest_is_the_same_in_every_process(tmp_path):
    (tmp_path / "model_a.py").write_text(MODEL_FILE.format(scale="1.0"))
    (tmp_path / "model_b.py").write_text(MODEL_FILE.format(scale="2.0"))  # other code
    code = DIGESTS.format(folder=str(tmp_path))
    cache = str(tmp_path / "cache")
    one = _python(code, cache, env={"PYTHONHASHSEED": "1"})
    two = _python(code, cache, env={"PYTHONHASHSEED": "2"})
    assert one == two
    assert None not in one.values()
    assert one["a1"] == one["a1_again"]
    assert one["a1"] != one["a2"]  # a closed-over constant
    assert one["a1"] != one["b1"]  # the model's code


def test_stable_names_of_library_objects_in_process():
    import numpyro.distributions as dist

    # Library classes, functions and compiled callables have names across processes ...
    assert fingerprint(dist.Normal, jnp.add, np.add, len, jax.nn.relu).stable is not None
    # ... not a class made in a factory (its name does not lead back to it) ...
    def factory():
        class Local:
            pass
        return Local

    local = factory()
    local.__module__ = "numpyro.fake"
    assert fingerprint(local).stable is None and fingerprint(local).digest
    # ... nor a value whose repr shows a memory address.
    assert fingerprint(jax.tree_util.Partial(print)).stable is not None
    assert fingerprint(object.__repr__(object())).stable is None


def test_the_environment_decides_the_stable_key(monkeypatch):
    parts = (("env-test", 1.0),)
    before = compilation.program_key(*parts)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    after = compilation.program_key(*parts)
    assert before.digest == after.digest and before.stable != after.stable
    monkeypatch.setattr(compilation, "_STATIC_ENV", "another jax version")
    assert compilation.program_key(*parts).stable not in (before.stable, after.stable)
