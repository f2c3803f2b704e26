"""Ctrl-C during a chunked run: a flag read between chunks, not an exception raised anywhere.

Python answers SIGINT by raising ``KeyboardInterrupt`` in the main thread at the next safe
point, and that point can be inside a callback Python calls from C (a garbage-collection
callback of JAX's, say), where the exception cannot propagate and is lost: the run goes on
as if nothing was pressed. While a run is in flight, :func:`deferred` answers the first
Ctrl-C by setting a flag instead; the run reads it after each chunk (:func:`check` raises
``KeyboardInterrupt`` there, where the run's own handling keeps what it has). A second
Ctrl-C raises at once, as usual, to stop waiting for a chunk.

Only Python's own handler is replaced, and only in the main thread; a handler that someone
else installed (a notebook's, say) is left alone, and so is any run started from another
thread: their Ctrl-C works as before.

Example:
    >>> import os, signal
    >>> with deferred() as interrupted:
    ...     os.kill(os.getpid(), signal.SIGINT)  # as a Ctrl-C would
    ...     flag = interrupted()
    >>> flag
    True
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

__all__ = ["deferred", "check", "never"]


def never() -> bool:
    """The flag of a run that no handler of ours watches: never set."""
    return False


@contextlib.contextmanager
def deferred() -> Iterator[Callable[[], bool]]:
    """Within the block, the first Ctrl-C sets a flag (the yielded function reads it) and the
    second raises ``KeyboardInterrupt``. Outside the main thread, or when SIGINT has a handler
    other than Python's default, the flag is never set and Ctrl-C works as before."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield never
        return
    pressed = threading.Event()

    def handler(signum, frame):
        if pressed.is_set():
            raise KeyboardInterrupt
        pressed.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield pressed.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


def check(interrupted: Callable[[], bool]) -> None:
    """Raise ``KeyboardInterrupt`` if ``interrupted()``: where a run stops between chunks."""
    if interrupted():
        raise KeyboardInterrupt
