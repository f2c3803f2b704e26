"""Test-session settings.

The default suite compiles at XLA's backend optimisation level 0. Compiling dominates its
time (it runs hundreds of small programs once each), and level 0 is the same computation
with ~25% less wall time on 2 CPU cores (tests/test_smc.py + test_langevin_methods.py +
test_recoverable.py: 70 s -> 53 s). The slow suite (``-m slow``: long statistical checks
whose runs, not compiles, dominate) and any other selection compile as users' programs are
compiled, at XLA's default level. ``PPL_TEST_XLA_DEFAULT=1`` keeps the default level for
the default suite too. Subprocess tests that set their own ``XLA_FLAGS`` keep them.

Tests run without the on-disk compilation cache (``PPL_JAX_COMPILATION_CACHE=0``) unless
that variable (or ``JAX_COMPILATION_CACHE_DIR``) is set: a run must not depend on, or write
into, the state of a user's own cache directory, and a crash in a deserialized program
should only ever show up in the tests of the cache. Those give their subprocesses their own
cache directories. (Time is about the same: one process over tests/test_langevin_methods.py
+ test_smc.py took 68 s with a fresh cache and 54-60 s without, but the whole default suite
took 6:53 without against 6:24-6:37 with, as its workers reuse each other's programs.)

Doctest collection skips module aliases, whose docstrings are collected where they live.
"""

import os

import pytest

collect_ignore = ["inference/neutra.py"]


if not (os.environ.get("PPL_JAX_COMPILATION_CACHE") or os.environ.get("JAX_COMPILATION_CACHE_DIR")):
    # For subprocesses; this process has already imported inference (pyproject's
    # filterwarnings names inference.diagnostics), which turned the cache on: turn it off.
    os.environ["PPL_JAX_COMPILATION_CACHE"] = "0"
    import sys

    if "inference.programs.disk_cache" in sys.modules:
        sys.modules["inference.programs.disk_cache"].disable()


def pytest_configure(config):
    # Before collection, so before any test module initialises JAX's backend.
    markexpr = (config.getoption("markexpr", "") or "").replace(" ", "")
    flags = os.environ.get("XLA_FLAGS", "")
    if (markexpr == "notslow" and not os.environ.get("PPL_TEST_XLA_DEFAULT")
            and "xla_backend_optimization_level" not in flags):
        os.environ["XLA_FLAGS"] = (flags + " --xla_backend_optimization_level=0").strip()


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs(request):
    """After each test module of the slow suite, drop its compiled programs (inference's
    cache and JAX's).

    XLA's CPU runtime maps each kernel of a program into memory separately (about a thousand
    mappings for a NUTS program). A worker that keeps every program of a few hundred heavy
    tests alive reaches the kernel's vm.max_map_count, and XLA then crashes it (a
    segmentation fault or "LLVM ERROR: Unable to allocate section memory" while compiling).
    The library bounds its own cache by mappings; the tests also hold programs outside it.
    The default suite keeps them: its programs are small, and recompiling what modules share
    cost it 57 worker-seconds (5:14 against 4:52).
    """
    yield
    if (request.config.getoption("markexpr", "") or "").replace(" ", "") == "notslow":
        return
    import jax

    from inference.programs.cache import PROGRAMS

    PROGRAMS.clear()
    jax.clear_caches()
