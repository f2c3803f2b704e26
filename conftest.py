"""Test-session settings shared by the default and slow suites.

Compiling dominates the suite's time (it runs thousands of small programs once each), so
tests compile with XLA's backend optimisation level 0: the same computations, ~25% less
wall time on 2 CPU cores (tests/test_smc.py + test_langevin_methods.py + test_recoverable.py:
70 s -> 53 s). Set ``PPL_TEST_XLA_DEFAULT=1`` to run the suite with XLA's default level,
as users' programs are compiled. Subprocess tests that set their own ``XLA_FLAGS`` keep them.

Doctest collection skips module aliases, whose docstrings are collected where they live.
"""

import os

if not os.environ.get("PPL_TEST_XLA_DEFAULT") and "xla_backend_optimization_level" not in \
        os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_backend_optimization_level=0").strip()

collect_ignore = ["inference/neutra.py"]
