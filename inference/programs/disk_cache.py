"""JAX's persistent compilation cache, on by default: a new process reuses compiled programs.

``import inference`` turns on JAX's own on-disk cache of compiled programs (keyed by JAX on
the compiled program itself, so it is never stale) in a per-user directory, unless the user
already chose one or opted out:

=======================================  ===============================================
``JAX_COMPILATION_CACHE_DIR`` set, or     left as the user configured it (we change
``jax_compilation_cache_dir`` already     nothing)
set through ``jax.config``
``PPL_JAX_COMPILATION_CACHE=0``           off (also ``off``, ``false``, ``no``)
(or ``off``/``false``/``no``)
``PPL_JAX_COMPILATION_CACHE=/a/path``     that directory
unset                                     ``$XDG_CACHE_HOME/ppl-jax/jax`` (default
                                          ``~/.cache/ppl-jax/jax``)
=======================================  ===============================================

When we turn it on, programs that took at least 0.2 s to compile are written (JAX's
default is 1 s), and the directory is bounded to 2 GiB (least recently used entries go
first). To clear it, delete the directory (:func:`cache_dir` says which one).

A directory that cannot be created or written, or a write that fails later (a full disk),
gives one warning and the run goes on without the disk cache.

The same directory holds :mod:`inference.programs.store` (``ppl-programs/``): our compiled
programs, keyed before tracing. An executable JAX read back from its own cache cannot be
written there again (on the CPU its re-serialization lacks the generated code, and fails
when run), so a program the store still lacks is compiled once more with JAX's cache
bypassed (:func:`bypassed`) in the next process.

Example:
    >>> import inference
    >>> d = inference.disk_cache.cache_dir()
    >>> d is None or isinstance(d, str)
    True
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import warnings
from typing import Iterable, Iterator

import jax

__all__ = ["configure", "cache_dir", "disable", "bypassed", "ENV"]

#: The environment variable that chooses the directory or turns the cache off.
ENV = "PPL_JAX_COMPILATION_CACHE"
_OFF = {"0", "off", "false", "no"}
_MIN_COMPILE_SECONDS = 0.2
_MAX_BYTES = 2 * 1024**3


def _default_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ppl-jax", "jax")


def cache_dir() -> str | None:
    """The directory JAX's persistent compilation cache uses now (None: off)."""
    return jax.config.jax_compilation_cache_dir or None


def _writable(path: str) -> str | None:
    """None if ``path`` can be created and written, else the reason."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as err:
        return f"{type(err).__name__}: {err}"
    return None


def _set_dir(path: str | None) -> None:
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_compilation_cache_dir", path)
    compilation_cache.reset_cache()  # re-read the setting even if JAX already compiled


def configure() -> str | None:
    """Turn the cache on as the module docstring says; returns the directory used (or None).

    Called once by ``import inference``; calling it again is harmless.
    """
    if jax.config.jax_compilation_cache_dir or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return cache_dir()  # the user's own choice
    value = os.environ.get(ENV, "").strip()
    if value.lower() in _OFF:
        return None
    path = os.path.expanduser(value) if value else _default_dir()
    problem = _writable(path)
    if problem is not None:
        warnings.warn(
            f"inference: the compilation cache directory {path!r} is not writable ({problem}); "
            f"running without a disk cache. Set {ENV} to another directory, or to 0 to turn "
            "it off and silence this warning.",
            RuntimeWarning, stacklevel=2,
        )
        return None
    _set_dir(path)
    if jax.config.jax_persistent_cache_min_compile_time_secs == 1.0:  # JAX's default
        jax.config.update("jax_persistent_cache_min_compile_time_secs", _MIN_COMPILE_SECONDS)
    if jax.config.jax_compilation_cache_max_size == -1:  # JAX's default: unbounded
        jax.config.update("jax_compilation_cache_max_size", _MAX_BYTES)
    return path


def disable() -> None:
    """Turn the disk cache off for the rest of this process."""
    _set_dir(None)


_BYPASS = threading.Lock()


@contextlib.contextmanager
def bypassed() -> Iterator[None]:
    """JAX's persistent cache neither read nor written inside (a compile there is fresh).

    JAX decides once per process whether its cache is used; this switches it off and on
    again (for the whole process: a compile in another thread meanwhile just goes uncached).
    """
    from jax.experimental.compilation_cache import compilation_cache

    with _BYPASS:
        before = jax.config.jax_enable_compilation_cache
        jax.config.update("jax_enable_compilation_cache", False)
        compilation_cache.reset_cache()
        try:
            yield
        finally:
            jax.config.update("jax_enable_compilation_cache", before)
            compilation_cache.reset_cache()


def report_problems(caught: Iterable[warnings.WarningMessage]) -> None:
    """Re-issue warnings caught around a compile; a cache read/write failure (a full disk)
    becomes one warning of ours, and the disk cache is turned off for this process."""
    failed = None
    for w in caught:
        text = str(w.message)
        if "persistent compilation cache" in text and ("Error writing" in text or
                                                       "Error reading" in text):
            failed = failed or text
            continue
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if failed is not None:
        where = cache_dir()
        disable()
        warnings.warn(
            f"inference: the compilation cache in {where!r} failed ({failed}); it is turned "
            f"off for this process and the run goes on uncached. Free space there, or set "
            f"{ENV} to another directory (or 0).",
            RuntimeWarning, stacklevel=3,
        )
