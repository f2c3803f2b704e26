"""A griffe extension for the API reference: our docstrings head their ``>>>`` examples
``Example:``, which Google-style parsing reads as an admonition (its ``>>>`` lines then
render as Markdown quotes and ``x["a"]`` as a link); renamed ``Examples:`` here, they become
the examples section, whose doctest lines render as Python code. The source is untouched.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_HEADING = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class DoctestExamples(griffe.Extension):
    """Renames ``Example:`` section headings to ``Examples:`` in every loaded docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:  # noqa: D102
        if obj.docstring is not None:
            obj.docstring.value = _HEADING.sub(r"\1Examples:", obj.docstring.value)
