"""The ``stacklevel`` that points a warning at the user's code.

A warning raised deep inside ``infer`` (an interrupted run, a poor fit) should name the
line of the user's script that called ``infer``, ``fit`` or ``result.extend``, however many
frames of this package lie between. :func:`user_stacklevel` counts them.

Example:
    >>> import warnings
    >>> def library_function():
    ...     warnings.warn("careful", UserWarning, stacklevel=user_stacklevel())
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     library_function()
    >>> caught[0].filename == __file__ or caught[0].filename.startswith("<doctest")
    True
"""

from __future__ import annotations

import os
import sys

__all__ = ["user_stacklevel"]

PACKAGE = os.path.dirname(os.path.abspath(__file__))


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning issued by this function's caller point at the
    first frame outside the ``inference`` package (the user's ``infer``, ``fit`` or
    ``extend`` call)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(PACKAGE):
        frame, level = frame.f_back, level + 1
    return level
