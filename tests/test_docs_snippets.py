"""The documentation site's code: every Python block of the guides runs, and every public
name has an entry in the API reference.

The guides (``docs/*.md``) are executed page by page, each in a fresh Python process with
its blocks in order in one namespace (as a reader would paste them), marked slow: they
compile and sample. A block preceded by ``<!-- not run: <reason> -->`` is skipped; the reason
is required and shown in the page source. Blocks that only include an example file
(``--8<-- "examples/x.py"``) are the examples themselves, which CI runs (the quick start) or
which their tutorial's committed output records.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GUIDES = sorted(p for p in DOCS.glob("*.md"))

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                    re.MULTILINE | re.DOTALL)
_SKIP = re.compile(r"<!--\s*not run:\s*(?P<reason>[^>]*?)\s*-->\s*$")


def python_blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """``(line, code, skip_reason)`` of each fenced ``python`` block of a Markdown page."""
    text = path.read_text()
    out = []
    for m in _FENCE.finditer(text):
        lang = m.group("info").strip().split()[0] if m.group("info").strip() else ""
        if lang not in ("python", "py"):
            continue
        body = textwrap.dedent(m.group("body"))
        if all(not ln.strip() or ln.strip().startswith("--8<--") for ln in body.splitlines()):
            continue  # an included example file
        before = text[: m.start()].rstrip().splitlines()
        skip = _SKIP.search(before[-1]) if before else None
        line = text[: m.start()].count("\n") + 1
        out.append((line, body, skip.group("reason") if skip else None))
    return out


def test_block_extraction_finds_blocks_and_skips(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text(
        "# t\n\n```python\nx = 1\n```\n\n<!-- not run: needs two hosts -->\n```python\ny\n```\n"
        "\n```bash\nls\n```\n\n```python\n--8<-- \"examples/quickstart.py\"\n```\n"
        "\n* item\n\n    ```python\n    z = x + 1\n    ```\n")
    blocks = python_blocks(page)
    assert [(b[1], b[2]) for b in blocks] == [
        ("x = 1\n", None), ("y\n", "needs two hosts"), ("z = x + 1\n", None)]


def test_every_guide_has_runnable_blocks_or_none_to_skip_silently() -> None:
    # Every skip names its reason; a guide that skips all its blocks would test nothing.
    for page in GUIDES:
        blocks = python_blocks(page)
        for line, _, reason in blocks:
            assert reason is None or len(reason) > 10, f"{page.name}:{line}: give a reason"
        if blocks:
            assert any(r is None for _, _, r in blocks), f"{page.name}: every block skipped"


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in GUIDES if python_blocks(p)], ids=lambda p: p.stem)
def test_guide_code_blocks_run(page: Path, tmp_path: Path) -> None:
    parts = []
    for line, code, reason in python_blocks(page):
        if reason is None:
            parts.append(f"# --- {page.name}:{line}\n{code}")
    script = tmp_path / f"{page.stem}.py"
    script.write_text("\n".join(parts))
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (
        f"a code block of docs/{page.name} failed (blocks in {script}):\n{proc.stderr[-4000:]}")


# --- the API reference covers every public name -----------------------------------------

def _directives() -> list[str]:
    out = []
    for page in sorted((DOCS / "api").glob("*.md")):
        out += re.findall(r"^::: ([\w.]+)\s*$", page.read_text(), re.MULTILINE)
    return out


def _resolve(path: str) -> object:
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(path)


@pytest.mark.parametrize("package", ["ppl", "inference", "models"])
def test_api_reference_documents_every_public_name(package: str) -> None:
    documented = {id(_resolve(p)) for p in _directives()}
    api_text = "\n".join(p.read_text() for p in (DOCS / "api").glob("*.md"))
    pkg = importlib.import_module(package)
    missing = []
    for name in pkg.__all__:
        obj = getattr(pkg, name)
        if id(obj) in documented:
            continue
        if not isinstance(obj, (types.ModuleType, type, types.FunctionType)) and \
                f"`{package}.{name}`" in api_text:
            continue  # a constant (inference.METHODS): described in prose
        missing.append(name)
    assert not missing, (
        f"{package}.{{{', '.join(missing)}}} have no '::: path' entry in docs/api/*.md: add one "
        "(the path where the object is defined) so the reference shows its docstring")


# --- the method guide's figures are the measured ones --------------------------------------

def _json(path: str) -> dict:
    import json
    return json.loads((ROOT / path).read_text())


def _figures() -> list[tuple[str, str]]:
    """(text the guide must contain, where the number comes from)."""
    nuts = {r["model"]: r for r in _json("bench/results/nuts.json")["results"]}
    lang = _json("bench/results/langevin.json")["headline"]["ess_per_1000_grad"]
    enum = _json("bench/results/enum.json")["models"]
    flows = _json("bench/results/flows.json")
    ours = _json("docs/measurements/methods.json")
    es = ours["eight_schools"]
    smc_shares = ours["bimodal"]["SMC(kernel='mala')"]["share_x_pos_per_chain"]
    return [
        (f"{nuts['eight_schools_noncentered']['ours']['ess_per_1000_grad']:.1f}", "nuts.json"),
        (f"{nuts['eight_schools_noncentered']['numpyro']['ess_per_1000_grad']:.1f}", "nuts.json"),
        (f"{nuts['logistic_regression_N1000_D25']['ours']['ess_per_1000_grad']:.1f}", "nuts.json"),
        (f"{es['NUTS, centred model']['ess_per_1000_grad']:.2f} ESS", "methods.json"),
        (f"{es['NUTS, centred model']['divergences']} divergences", "methods.json"),
        (f"{es['NUTS']['ess_per_1000_grad']:.1f} and {es['NUTS']['divergences']}", "methods.json"),
        (f"adjusted underdamped {es['Underdamped(adjusted=True)']['ess_per_1000_grad']:.0f}, "
         f"MALA {es['MALA']['ess_per_1000_grad']:.0f}, NUTS {es['NUTS']['ess_per_1000_grad']:.0f}",
         "methods.json"),
        (f"underdamped {lang['underdamped']:.1f} ESS per 1000 gradients, MALA {lang['mala']:.1f}, "
         f"ULA {lang['ula']:.1f}", "langevin.json"),
        (f"{enum['mixture_K2_N200']['ratio']['ess_per_s']:.2f}x", "enum.json"),
        (f"{enum['hmm_T50']['ratio']['ess_per_s']:.2f}x", "enum.json"),
        (f"NeuTra on the centred model: {flows['neutra']['neutra_iaf']['ess_per_1000_grad']:.1f} "
         f"vs NUTS's {flows['neutra']['nuts']['ess_per_1000_grad']:.1f}", "flows.json"),
        (f"mean-field {flows['vi']['funnel_d10']['mean_field']['elbo']:.2f}, IAF flow "
         f"{flows['vi']['funnel_d10']['flow_iaf']['elbo']:.2f}", "flows.json"),
        (f"`E[z | y]` {ours['gibbs']['gibbs_mean_z']:.3f} against exactly "
         f"{ours['gibbs']['exact_mean_z']:.3f}", "methods.json"),
        (f"mean absolute error {ours['evidence']['smc_mean_abs_error']:.3f} nats", "methods.json"),
        (f"Pareto k {ours['learned']['pareto_k']:.2f}, IRMH acceptance "
         f"{ours['learned']['acceptance_rate']:.2f}", "methods.json"),
        (f"SMC's chains put {min(smc_shares):.2f}-{max(smc_shares):.2f}", "methods.json"),
    ]


def test_method_guide_quotes_the_measured_figures() -> None:
    text = " ".join((DOCS / "choosing-a-method.md").read_text().split())
    missing = [(figure, source) for figure, source in _figures() if figure not in text]
    assert not missing, f"docs/choosing-a-method.md lacks these measured figures: {missing}"


def test_docstring_rewrites_for_the_api_reference() -> None:
    # docs/griffe_doctest_examples.py turns our reST habits into Markdown for mkdocstrings.
    spec = importlib.util.spec_from_file_location("griffe_ext", DOCS / "griffe_doctest_examples.py")
    ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext)
    doc = ("Uses :func:`~inference.langevin.ula` and :class:`Result`.\n\n"
           "    .. math::  a = b,\n        c = d\n\n    More.\n\n"
           "    .. note:: NumPyro's.\n\n"
           "    Example:\n        >>> x = {\"a\": 1}\n")
    assert ext.to_markdown(doc) == (
        "Uses `inference.langevin.ula` and `Result`.\n\n"
        "    ```text\n    a = b,\n    c = d\n    ```\n\n    More.\n\n"
        "    **Note:** NumPyro's.\n\n"
        "    Examples:\n        >>> x = {\"a\": 1}\n")
