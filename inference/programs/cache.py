"""Compile once per shape: the caches of compiled programs, and a clock for compiling.

Every compiled program of ``infer`` and ``fit`` goes through :func:`compile_program`. It is
kept in :data:`PROGRAMS`, a bounded in-memory LRU cache (the library's only in-memory one,
:envvar:`PPL_JAX_PROGRAM_CACHE_SIZE` entries, default 64), under a key made of everything
that changes the program: the :func:`inference.programs.fingerprint.fingerprint` of the model and the
method (code, closures, globals it reads, settings), the structure and static leaves of the
data, the shapes and dtypes of its arrays, the run's sizes, the devices and the JAX flags
that change tracing (``jax_enable_x64`` ...). Data arrays are inputs of the programs, not
constants baked into them, so new data of the same shapes reuses the program. When some
part cannot be fingerprinted the program is compiled afresh and not kept (never stale).

Across processes, :mod:`inference.programs.store` keeps the compiled executables on disk
(under the disk cache's directory) keyed by a *stable* digest: the same fingerprint with
library objects named by where they are defined instead of by ``id`` (see
:attr:`inference.programs.fingerprint.Fingerprint.stable`), plus everything outside the key that
could change the program in a new process (:func:`environment`: the versions of Python,
JAX, jaxlib, NumPyro and the other libraries, the backend and its devices, the XLA flags
and JAX settings, and a digest of the sources of ``ppl`` and ``inference``). A new process
then skips tracing, lowering and compiling alike (``cache == "disk"``). Programs the store
cannot keep (host callbacks, constants baked in) still go through JAX's persistent
compilation cache (see :mod:`inference.disk_cache`), which saves the XLA compile only.

While XLA compiles, a line says so with the time elapsed (``NUTS: compiling... 3.2 s``),
then how long it took, so a first call never looks frozen.

``PROGRAMS.clear()`` empties the in-memory cache.

Example:
    >>> import jax, jax.numpy as jnp
    >>> f = jax.jit(lambda x: x + 1)
    >>> c1, info = compile_program(f, (jnp.ones(3),), key=("demo", 3), label="demo", progress=False)
    >>> c2, info2 = compile_program(f, (jnp.ones(3),), key=("demo", 3), label="demo", progress=False)
    >>> c1 is c2, info2["cache"]
    (True, 'memory')
"""

from __future__ import annotations

import collections
import hashlib
import importlib.metadata
import os
import sys
import threading
import time
import warnings
from typing import Any, Callable, NamedTuple

import jax
from jax import monitoring
from tqdm.auto import tqdm

from inference.programs import disk_cache
from inference.programs import store as program_store
from inference.programs.fingerprint import Unfingerprintable, fingerprint

__all__ = ["PROGRAMS", "ProgramCache", "compiling", "Compiling", "compile_program", "program_key",
           "ProgramKey", "abstract", "environment"]


def _memory_maps() -> int | None:
    """The number of memory mappings of this process (Linux), or ``None``."""
    try:
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return None


def _map_limit() -> int | None:
    """The kernel's limit on a process's memory mappings (``vm.max_map_count``), or ``None``."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


class ProgramCache:
    """A bounded least-recently-used map from program keys to compiled programs.

    Each entry also keeps alive the objects its key names by identity (see
    :class:`inference.programs.fingerprint.Fingerprint`), so an id in a key is never reused by
    another object while the entry exists.

    Bounded in entries (``maxsize``) and in memory mappings: XLA's CPU runtime maps each
    kernel of a program separately (a NUTS program holds about a thousand mappings), and a
    process that reaches the kernel's ``vm.max_map_count`` (65530 by default) dies in LLVM
    ("Unable to allocate section memory") or with a segmentation fault. So when the process
    holds more than ``map_fraction`` of that limit, the least recently used programs are
    dropped (they compile again if used again) until it holds less, or one is left.
    """

    def __init__(self, maxsize: int = 64, map_fraction: float = 0.5):
        self.map_fraction = float(map_fraction)
        self._map_limit = _map_limit()
        self.maxsize = int(maxsize)
        self._entries: collections.OrderedDict[str, tuple[Any, tuple]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> Any | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: str, program: Any, keep: tuple = ()) -> None:
        if self.maxsize <= 0:
            return
        with self._lock:
            self._entries[key] = (program, keep)
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)
            if self._map_limit:
                budget = self.map_fraction * self._map_limit
                while len(self._entries) > 1 and (_memory_maps() or 0) > budget:
                    self._entries.popitem(last=False)  # its executables are freed with it
                maps = _memory_maps() or 0
                if maps > 0.8 * self._map_limit:
                    warnings.warn(
                        f"this process holds {maps} memory mappings, near the kernel's limit "
                        f"of {self._map_limit} (vm.max_map_count), mostly of compiled programs "
                        "kept outside inference's cache; at the limit XLA crashes the process. "
                        "jax.clear_caches() frees JAX's own.", ResourceWarning, stacklevel=3)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def _cache_size() -> int:
    try:
        return int(os.environ.get("PPL_JAX_PROGRAM_CACHE_SIZE", "64"))
    except ValueError:
        return 64


#: The compiled programs of this process (see the module docstring).
PROGRAMS = ProgramCache(_cache_size())

# JAX flags that change what a function traces to.
_FLAGS = ("jax_enable_x64", "jax_default_matmul_precision", "jax_numpy_rank_promotion",
          "jax_numpy_dtype_promotion", "jax_default_prng_impl", "jax_enable_checks",
          "jax_debug_nans", "jax_debug_infs", "jax_disable_jit")


def abstract(tree: Any) -> Any:
    """Shapes, dtypes and weak types of the array leaves of ``tree`` (a hashable summary)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    out = []
    for x in leaves:
        aval = jax.typeof(x) if isinstance(x, jax.Array) else jax.api_util.shaped_abstractify(x)
        sharding = getattr(x, "sharding", None)
        out.append((tuple(aval.shape), str(aval.dtype), bool(getattr(aval, "weak_type", False)),
                    repr(getattr(sharding, "spec", None))))
    return str(treedef), tuple(out)


class ProgramKey(NamedTuple):
    """``digest``: the in-memory key; ``identities``: objects it names by identity (kept
    alive with the entry); ``stable``: the key across processes (None: not kept on disk)."""

    digest: str
    identities: tuple
    stable: str | None


def program_key(*parts: Any) -> ProgramKey | None:
    """The :class:`ProgramKey` of a program built from ``parts``, or None if some part
    cannot be fingerprinted (then the program must not be cached).

    The JAX flags that change tracing and the default backend are added to ``parts``; the
    stable digest also covers :func:`environment`.
    """
    flags = tuple(getattr(jax.config, name, None) for name in _FLAGS)
    try:
        fp = fingerprint(parts, flags, jax.default_backend())
    except Unfingerprintable:
        return None
    stable = None
    if fp.stable is not None:
        env = environment()
        if env is not None:
            stable = hashlib.blake2b(f"{fp.stable}|{env}".encode(), digest_size=20).hexdigest()
    return ProgramKey(fp.digest, fp.identities, stable)


# -- what else decides a program in a new process ----------------------------------------
#: Distributions whose versions are part of the stable key (their code is named, not hashed).
_VERSIONED = ("jax", "jaxlib", "numpy", "scipy", "numpyro", "blackjax", "optax", "equinox",
              "flowjax", "jaxtyping")
#: JAX settings that say nothing about the program (caches, logging, dumps, checks of the
#: Python side); every other setting is part of the stable key.
_CONFIG_IGNORED_PREFIXES = ("jax_compilation_cache", "jax_persistent_cache",
                            "jax_enable_compilation_cache", "jax_raise_persistent_cache",
                            "jax_log_compiles", "jax_logging_level", "jax_explain_cache_misses",
                            "jax_debug_log_modules", "jax_dump_ir", "jax_include_debug_info",
                            "jax_pprint", "jax_traceback", "jax_tracer_error",
                            "jax_compiler_detailed_logging", "jax_captured_constants",
                            "jax_check_proxy_envs", "jax_transfer_guard")
_STATIC_ENV: str | None = None
_STATIC_LOCK = threading.Lock()


def _version(name: str) -> str:
    module = sys.modules.get(name)
    version = getattr(module, "__version__", None)
    if isinstance(version, str):
        return version
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _sources_digest() -> str:
    """A digest of the ``.py`` files of ``ppl`` and ``inference`` (read once per process)."""
    h = hashlib.blake2b(digest_size=20)
    import ppl  # noqa: PLC0415  (ppl imports inference lazily; avoid a cycle at import)

    for package in (ppl, sys.modules["inference"]):
        root = os.path.dirname(os.path.abspath(package.__file__))
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(f for f in files if f.endswith(".py")):
                path = os.path.join(folder, name)
                with open(path, "rb") as f:
                    data = f.read()
                h.update(f"{package.__name__}/{os.path.relpath(path, root)}:{len(data)}:".encode())
                h.update(data)
    return h.hexdigest()


def _static_environment() -> str:
    global _STATIC_ENV
    with _STATIC_LOCK:
        if _STATIC_ENV is None:
            parts = [sys.version, sys.implementation.cache_tag,
                     *(f"{name}={_version(name)}" for name in _VERSIONED),
                     f"sources={_sources_digest()}"]
            _STATIC_ENV = "\n".join(parts)
        return _STATIC_ENV


def environment() -> str | None:
    """A digest of what, besides a program's fingerprint, decides the program a new process
    would compile: library versions and our sources (computed once per process), the
    backend, its version and devices, the XLA flags, and the JAX settings (None: some
    setting has no process-independent value, so nothing is kept on disk).
    """
    if jax.process_count() > 1:  # executables are shared between hosts there, not stored
        return None
    devices = jax.devices()
    client = devices[0].client
    config = []
    for name, value in sorted(getattr(jax.config, "values", {}).items()):
        if name.startswith(_CONFIG_IGNORED_PREFIXES):
            continue
        text = repr(value)
        if " at 0x" in text:
            return None
        config.append(f"{name}={text}")
    xla = [os.environ.get("XLA_FLAGS", ""), os.environ.get("LIBTPU_INIT_ARGS", ""),
           *(a for a in sys.argv if a.startswith("--xla"))]
    parts = [_static_environment(), jax.default_backend(), client.platform,
             getattr(client, "platform_version", ""), str(jax.process_count()),
             repr([(d.id, d.platform, d.device_kind, d.process_index) for d in devices]),
             repr(xla), *config]
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=20).hexdigest()


class _CompileStatus:
    """``label: compiling... 3.2 s`` while a compile runs, then the time it took (tqdm line)."""

    def __init__(self, label: str, enabled: bool):
        self.label, self.enabled = label, bool(enabled)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._line: Any = None
        self.t0 = 0.0

    def _tick(self) -> None:
        while not self._stop.wait(0.25):
            self._line.set_description_str(
                f"{self.label}: compiling... {time.perf_counter() - self.t0:.1f} s")

    def __enter__(self) -> "_CompileStatus":
        self.t0 = time.perf_counter()
        if self.enabled:
            self._line = tqdm(total=None, bar_format="{desc}", desc=f"{self.label}: compiling...",
                              leave=True)
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()
        return self

    def done(self, seconds: float, source: str) -> None:
        """``source``: ``"store"`` (every program loaded from our program store), ``"disk"``
        (some from a disk cache) or anything else (compiled)."""
        self._finish()
        if self._line is not None:
            where = {"store": " (loaded from the disk cache: no tracing)",
                     "disk": " (from the disk cache)"}.get(source, "")
            self._line.set_description_str(f"{self.label}: compiled in {seconds:.1f} s{where}")

    def _finish(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __exit__(self, *exc: Any) -> None:
        self._finish()
        if self._line is not None:
            self._line.close()


class _DiskHits:
    """Counts JAX's persistent-cache hits of compiles in this thread (``jax.monitoring``
    reports them synchronously, in the compiling thread)."""

    def __init__(self) -> None:
        self.hits = 0
        self._thread = threading.get_ident()

    def __call__(self, event: str, **kwargs: Any) -> None:
        if event == "/jax/compilation_cache/cache_hits" and threading.get_ident() == self._thread:
            self.hits += 1


class Compiling:
    """A compile session: programs looked up in :data:`PROGRAMS` or compiled, under one
    status line (shown only if something really compiles) and one clock.

    Use :func:`compiling`. ``seconds`` is the time spent compiling (0 when every program
    came from memory); ``cache`` says where they came from: ``"memory"``, ``"disk"``
    (:mod:`inference.programs.store`, or JAX's persistent cache), ``"miss"`` (compiled), or
    ``"off"`` (not cacheable).
    """

    def __init__(self, label: str, progress: bool):
        self.label, self.progress = label, progress
        self.seconds = 0.0
        self._sources: list[str] = []
        self._stored = 0  # programs loaded from the program store
        self._status: _CompileStatus | None = None
        self._hits = _DiskHits()

    def compile(self, jitted: Any, args: tuple, *, key: tuple | None,
                key_args: Any = None) -> Any:
        """The compiled ``jitted`` for ``args``.

        ``key``: what decides the program besides the shapes of ``key_args`` (default
        ``args``), e.g. the model, the method and the static data; ``None``: do not cache.
        ``args`` may be a function returning them (arrays or ``jax.ShapeDtypeStruct``),
        called only when the program is really compiled; ``key_args`` is then required.

        Looked up in :data:`PROGRAMS`, then in :mod:`inference.programs.store` (no tracing),
        else traced, lowered and compiled (through JAX's persistent cache) and stored.
        """
        digest = stable = None
        if key is not None:
            found = program_key(key, abstract(args if key_args is None else key_args))
            if found is not None:
                digest, identities, stable = found
                entry = PROGRAMS.get(digest)
                if entry is not None:
                    self._sources.append("memory")
                    return entry
        if self._status is None:
            self._status = _CompileStatus(self.label, self.progress).__enter__()
            monitoring.register_event_listener(self._hits)
        t0 = time.perf_counter()
        program = program_store.load(stable) if stable is not None else None
        if program is not None:
            self._stored += 1
            source = "disk"
        else:
            program, source = self._compile(jitted, args, digest, stable)
        self.seconds += time.perf_counter() - t0
        if digest is not None:
            PROGRAMS.put(digest, program, identities)
        self._sources.append(source)
        return program

    def _compile(self, jitted: Any, args: tuple, digest: str | None,
                 stable: str | None) -> tuple[Any, str]:
        """Trace, lower and compile (through JAX's persistent cache); store the program if
        it was really compiled here. JAX's cached executables cannot be stored again, so a
        hit there is noted, and the next process compiles with JAX's cache bypassed."""
        fresh = stable is not None and program_store.wants_fresh_compile(stable)
        if callable(args):  # arguments (or their shapes) that cost a trace to make
            args = args()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lowered = jitted.lower(*args)
            before = self._hits.hits  # hits of this program, not of eager ops while tracing
            if fresh:
                with disk_cache.bypassed():
                    program = lowered.compile()
            else:
                program = lowered.compile()
            hit = self._hits.hits > before
        disk_cache.report_problems(caught)
        if stable is not None:
            if hit:
                if program_store.storable(program):
                    program_store.note_cache_hit(stable)
            elif not program_store.save(stable, program) and fresh:
                program_store.forget_marker(stable)
        return program, "disk" if hit else "miss" if digest is not None else "off"

    @property
    def cache(self) -> str:
        """Where the programs came from (the least cached of them)."""
        for source in ("off", "miss", "disk", "memory"):
            if source in self._sources:
                return source
        return "memory"

    def close(self, failed: bool = False) -> None:
        if self._status is not None:
            _unregister(self._hits)
            if not failed:
                compiled = len(self._sources) - self._sources.count("memory")
                source = ("store" if compiled and self._stored == compiled else self.cache)
                self._status.done(self.seconds, source)
            self._status.__exit__(None, None, None)
            self._status = None


class compiling:  # noqa: N801  (used as a context manager, like a function)
    """``with compiling("NUTS", progress) as c: program = c.compile(jax.jit(f), args, key=...)``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> with compiling("demo", progress=False) as c:
        ...     f = c.compile(jax.jit(lambda x: x * 2), (jnp.ones(2),), key=("demo-double",))
        >>> f(jnp.ones(2)).tolist()
        [2.0, 2.0]
    """

    def __init__(self, label: str, progress: bool = True):
        self._session = Compiling(label, progress)

    def __enter__(self) -> Compiling:
        return self._session

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self._session.close(failed=exc_type is not None)


def compile_program(
    jitted: Any,
    args: tuple,
    *,
    key: tuple | None,
    label: str,
    progress: bool = True,
    key_args: Any = None,
) -> tuple[Callable, dict[str, Any]]:
    """One program through a :class:`Compiling` session: ``(compiled, info)`` with
    ``info["compile"]`` the seconds spent and ``info["cache"]`` where it came from."""
    with compiling(label, progress) as session:
        program = session.compile(jitted, args, key=key, key_args=key_args)
    return program, {"compile": session.seconds, "cache": session.cache}


def _unregister(listener: Callable) -> None:
    try:
        monitoring.unregister_event_listener(listener)
    except (AttributeError, ValueError, AssertionError):  # older JAX: no unregister
        pass
