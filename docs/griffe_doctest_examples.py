"""A griffe extension for the API reference: reStructuredText habits of our docstrings,
rewritten to Markdown when they are loaded (the source is untouched).

* ``Example:`` headings become ``Examples:``: Google-style parsing reads ``Example:`` as an
  admonition, whose ``>>>`` lines would render as Markdown quotes and ``x["a"]`` as a link;
  the examples section renders them as Python.
* ``:func:`x``` (and ``:class:``, ``:mod:``, ``:meth:``, ``:data:``, ``:attr:``, ``:exc:``,
  ``:obj:``) become code spans.
* ``.. math::`` blocks become code blocks (the site has no math renderer: it works offline).
* ``.. note::`` (in NumPyro's docstrings, shown for its primitives) becomes a bold "Note:".
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_HEADING = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_ROLE = re.compile(r":(?:func|class|mod|meth|data|attr|exc|obj):`~?([^`]+)`")
_NOTE = re.compile(r"^([ \t]*)\.\. note::[ \t]*", re.MULTILINE)
_MATH = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<first>.*)$")


def _math_blocks(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = _MATH.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent = m.group("indent")
        body = [m.group("first").strip()] if m.group("first").strip() else []
        i += 1
        while i < len(lines) and (not lines[i].strip() or
                                  len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
            if not lines[i].strip() and (i + 1 >= len(lines) or
                                         len(lines[i + 1]) - len(lines[i + 1].lstrip()) <= len(indent)):
                break  # a blank line that ends the directive
            body.append(lines[i].strip())
            i += 1
        out += [f"{indent}```text", *(f"{indent}{b}" for b in body if b), f"{indent}```"]
    return "\n".join(out)


def to_markdown(text: str) -> str:
    """The rewrites above, on one docstring.

    Examples:
        >>> to_markdown("See :func:`~a.b`.\\n\\n.. math::  x = 1,\\n    y = 2\\n\\nExample:\\n    >>> 1\\n    1")
        'See `a.b`.\\n\\n```text\\nx = 1,\\ny = 2\\n```\\n\\nExamples:\\n    >>> 1\\n    1'
    """
    text = _HEADING.sub(r"\1Examples:", text)
    text = _ROLE.sub(r"`\1`", text)
    text = _NOTE.sub(r"\1**Note:** ", text)
    return _math_blocks(text)


class DoctestExamples(griffe.Extension):
    """Rewrites every loaded docstring with :func:`to_markdown`."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:  # noqa: D102
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
