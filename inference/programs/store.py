"""Compiled programs kept on disk, keyed by our own fingerprint: a new process skips tracing,
lowering and compiling alike.

JAX's persistent compilation cache (:mod:`inference.disk_cache`) is keyed by the lowered
program, so a new process still traces and lowers every program before it can look it up
(seconds for NUTS). This store is keyed by the *stable* digest of
:func:`inference.programs.cache.program_key` (the fingerprint of the model, the method, the
data's shapes, plus the library versions, our sources, the devices and JAX's settings), known
before tracing, and holds the executable itself, serialized with JAX's public
:mod:`jax.experimental.serialize_executable`.

Files are ``<digest>.prog`` under ``<disk cache directory>/ppl-programs/`` (the directory
:func:`inference.disk_cache.cache_dir` says; no directory, no store). Each is written to a
temporary file and renamed into place (readers never see half a file), and carries a
checksum of its contents, checked before anything is handed to XLA. The store keeps the
most recently used entries within :envvar:`PPL_JAX_PROGRAM_STORE_BYTES` bytes (default
1 GiB); a hit refreshes an entry's time.

Only freshly compiled executables are stored. One that JAX read back from its persistent
cache cannot be serialized again (on the CPU the copy lacks the generated code and fails when
run: ``NOT_FOUND: Function wrapped_slice.1 not found``), so then only a marker
``<digest>.fresh`` is written (:func:`note_cache_hit`), and the next process compiles that
program with JAX's cache bypassed (:func:`wants_fresh_compile`) and stores it.

Failures never break a run: an unreadable, corrupt or incompatible entry is a miss (and is
removed), a failed write (a full disk) leaves the store as it was; either gives one warning
per process. Programs that cannot be serialized (host callbacks, constants baked in,
effects) are silently not stored.

Warning:
    Loading an executable runs code from the store's directory; it must be yours (it is,
    under your own cache directory), as for JAX's own cache.

Example:
    >>> import jax, jax.numpy as jnp
    >>> with disk_cache.bypassed():  # a fresh compile (one read back from JAX's cache cannot be stored)
    ...     compiled = jax.jit(lambda x: x + 1).lower(jnp.ones(2)).compile()
    >>> stored = save("0" * 40, compiled)  # False when the disk cache is off
    >>> again = load("0" * 40)
    >>> again is None or again(jnp.ones(2)).tolist() == [2.0, 2.0]
    True
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import threading
import time
import warnings
from typing import Any

import jax

from inference.programs import disk_cache

__all__ = ["load", "save", "storable", "note_cache_hit", "wants_fresh_compile", "forget_marker",
           "directory", "SUBDIR", "ENV"]

#: The store's folder inside the disk cache directory.
SUBDIR = "ppl-programs"
#: The environment variable that bounds the store's size, in bytes.
ENV = "PPL_JAX_PROGRAM_STORE_BYTES"
_DEFAULT_MAX_BYTES = 1024**3
_SUFFIX = ".prog"
_FRESH = ".fresh"  # marker: compile this one with JAX's cache bypassed, then store it
_STALE_MARKER_SECONDS = 30 * 24 * 3600.0
_MAGIC = b"ppl-program-store 1\n"
_CHECKSUM_BYTES = 32
_STALE_TMP_SECONDS = 3600.0

_warned = False
_lock = threading.Lock()


def directory() -> str | None:
    """The store's directory now (None: the store is off)."""
    base = disk_cache.cache_dir()
    if not base or "://" in str(base):  # off, or a remote path JAX handles itself
        return None
    return os.path.join(str(base), SUBDIR)


def _max_bytes() -> int:
    try:
        return int(os.environ.get(ENV, _DEFAULT_MAX_BYTES))
    except ValueError:
        return _DEFAULT_MAX_BYTES


def _warn_once(message: str) -> None:
    global _warned
    with _lock:
        if _warned:
            return
        _warned = True
    warnings.warn(f"inference: the compiled-program store {message}; the run goes on "
                  "(compiling where needed). Further problems with it are not reported.",
                  RuntimeWarning, stacklevel=4)


def _path(folder: str, digest: str) -> str:
    if not digest or not all(c in "0123456789abcdef" for c in digest):
        raise ValueError(f"not a hex digest: {digest!r}")
    return os.path.join(folder, digest + _SUFFIX)


def storable(compiled: Any) -> bool:
    """False for programs a new process could not run as stored: host callbacks (pointers
    into this process), effects, objects kept alive for the executable, mutable arrays,
    constants passed beside the executable, and custom calls.

    Custom calls (on the CPU: LAPACK, behind ``jnp.linalg``, Cholesky and triangular solves,
    NUTS's dense mass matrix) name handlers that a process registers when it first traces
    such an operation. A new process that loads the stored program before tracing one
    crashes when it runs it (a segmentation fault: measured with ``NUTS(dense_mass=True)``
    on eight schools, and with ``jnp.linalg.solve`` through
    ``jax.experimental.serialize_executable`` alone). JAX's own persistent cache still keeps
    these programs (it traces first).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> storable(jax.jit(jnp.linalg.inv).lower(jnp.eye(2)).compile())
        False
    """
    unloaded = getattr(getattr(compiled, "_executable", None), "_unloaded_executable", None)
    if unloaded is None:
        return False
    for name in ("host_callbacks", "keepalive", "ordered_effects", "unordered_effects"):
        if getattr(unloaded, name, None):
            return False
    if getattr(getattr(compiled, "_params", None), "const_args", None):
        return False
    if getattr(unloaded, "mut", None) is not None:
        return False
    try:
        text = compiled.as_text()
    except Exception:  # noqa: BLE001 -- no text: cannot check, do not store
        return False
    return text is not None and "custom_call_target=" not in text


def _marker(folder: str, digest: str) -> str:
    return _path(folder, digest)[: -len(_SUFFIX)] + _FRESH


def note_cache_hit(digest: str) -> None:
    """``digest``'s program came from JAX's persistent cache (it cannot be stored): mark it
    so that the next process compiles it afresh (:func:`wants_fresh_compile`)."""
    folder = directory()
    if folder is None:
        return
    try:
        os.makedirs(folder, exist_ok=True)
        with open(_marker(folder, digest), "wb"):
            pass
    except (OSError, ValueError) as err:
        _warn_once(f"in {folder!r} cannot be written ({type(err).__name__}: {err})")


def wants_fresh_compile(digest: str) -> bool:
    """Whether an earlier process got ``digest``'s program from JAX's cache (marked by
    :func:`note_cache_hit`): then compile it with JAX's cache bypassed and :func:`save` it."""
    folder = directory()
    if folder is None:
        return False
    try:
        return os.path.exists(_marker(folder, digest))
    except ValueError:
        return False


def _encode(digest: str, compiled: Any) -> bytes | None:
    from jax.experimental import serialize_executable

    if not storable(compiled):
        return None
    try:
        payload, in_tree, out_tree = serialize_executable.serialize(compiled)
        devices = [d.id for d in compiled._executable._unloaded_executable.device_list]
        body = pickle.dumps({"digest": digest, "payload": payload, "in_tree": in_tree,
                             "out_tree": out_tree, "devices": devices,
                             "platform": jax.default_backend()},
                            protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001  (not serializable: consts, callbacks, odd pytrees)
        return None
    return _MAGIC + hashlib.blake2b(body, digest_size=_CHECKSUM_BYTES).digest() + body


def _decode(digest: str, data: bytes) -> Any:
    from jax.experimental import serialize_executable

    head = len(_MAGIC) + _CHECKSUM_BYTES
    if not data.startswith(_MAGIC) or len(data) <= head:
        raise ValueError("not a program store entry")
    body = data[head:]
    if hashlib.blake2b(body, digest_size=_CHECKSUM_BYTES).digest() != data[len(_MAGIC):head]:
        raise ValueError("checksum mismatch (a corrupt or truncated file)")
    entry = pickle.loads(body)
    if entry.get("digest") != digest or entry.get("platform") != jax.default_backend():
        raise ValueError("the entry is for another program or backend")
    by_id = {d.id: d for d in jax.devices()}
    if not all(i in by_id for i in entry["devices"]):
        raise ValueError("the entry's devices are not present")
    # The program must be loaded on exactly the devices it was compiled for (others abort).
    return serialize_executable.deserialize_and_load(
        entry["payload"], entry["in_tree"], entry["out_tree"],
        execution_devices=[by_id[i] for i in entry["devices"]])


def load(digest: str) -> Any | None:
    """The compiled program stored under ``digest`` (a ``jax.stages.Compiled``), or None."""
    folder = directory()
    if folder is None:
        return None
    try:
        path = _path(folder, digest)
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        _warn_once(f"in {folder!r} cannot be read ({type(err).__name__}: {err})")
        return None
    try:
        compiled = _decode(digest, data)
    except Exception as err:  # noqa: BLE001  (corrupt, truncated, from another version)
        _warn_once(f"entry {path!r} cannot be loaded ({type(err).__name__}: {err}); it is "
                   "removed and compiled anew")
        _remove(path)
        return None
    try:
        os.utime(path)  # recently used: evicted last
    except OSError:
        pass
    return compiled


def save(digest: str, compiled: Any) -> bool:
    """Store ``compiled`` under ``digest``, then evict the least recently used entries
    beyond the bound. ``compiled`` must come from a real compile in this process (not from
    JAX's persistent cache). False if nothing was stored (the store is off, the program
    cannot be serialized, the write failed)."""
    folder = directory()
    if folder is None:
        return False
    data = _encode(digest, compiled)
    if data is None:
        return False
    tmp = None
    try:
        path = _path(folder, digest)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=_SUFFIX)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        tmp = None
        _remove(_marker(folder, digest))
        _evict(folder, _max_bytes())
    except (OSError, ValueError) as err:
        _warn_once(f"in {folder!r} cannot be written ({type(err).__name__}: {err})")
        return False
    finally:
        if tmp is not None:
            _remove(tmp)
    return True


def forget_marker(digest: str) -> None:
    """Drop ``digest``'s :func:`note_cache_hit` marker (its fresh compile could not be
    stored: do not bypass JAX's cache for it again)."""
    folder = directory()
    if folder is not None:
        try:
            _remove(_marker(folder, digest))
        except ValueError:
            pass


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _evict(folder: str, max_bytes: int) -> None:
    """Remove the least recently used entries until the store holds at most ``max_bytes``
    (``max_bytes < 0``: unbounded)."""
    if max_bytes < 0:
        return
    entries = []
    now = time.time()
    with os.scandir(folder) as it:
        for e in it:
            if not e.name.endswith((_SUFFIX, _FRESH)):
                continue
            try:
                st = e.stat()
            except OSError:
                continue
            if e.name.endswith(_FRESH):  # a marker whose program was never compiled again
                if now - st.st_mtime > _STALE_MARKER_SECONDS:
                    _remove(e.path)
                continue
            if e.name.startswith("."):  # a write that never finished (its process died)
                if now - st.st_mtime > _STALE_TMP_SECONDS:
                    _remove(e.path)
                continue
            entries.append((st.st_mtime, st.st_size, e.path))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries):
        if total <= max_bytes:
            break
        _remove(path)
        total -= size
