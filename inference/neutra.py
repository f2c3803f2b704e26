"""Alias of :mod:`inference.methods.neutra`, its home since issue 13 (kept for one release)."""

import sys

from inference.methods import neutra as _moved

sys.modules[__name__] = _moved
