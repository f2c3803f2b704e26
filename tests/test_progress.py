"""The chunked progress scan computes exactly what ``lax.scan`` computes, and reports a
handful of times per run rather than every step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inference.progress import ProgressBar, scan


class RecordingBar(ProgressBar):
    def __init__(self, total):
        super().__init__(total, enabled=True)
        self.calls = []

    def update(self, done, postfix):
        self.calls.append((int(done), {k: float(v) for k, v in postfix.items()}))


def body(carry, x):
    total, count = carry
    return (total + jnp.sin(x) * count, count + 1), None


@pytest.mark.parametrize("length", [1, 7, 20, 41, 100])
def test_same_result_as_lax_scan(length):
    xs = jnp.linspace(0.0, 3.0, length)
    init = (jnp.zeros(()), jnp.zeros((), jnp.int32))
    expected = jax.lax.scan(body, init, xs)[0]
    bar = RecordingBar(length)
    got = jax.jit(lambda xs: scan(body, init, xs, length, bar=bar, updates=20,
                                  postfix_fn=lambda c: {"count": c[1]}))(xs)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-6)
    assert int(got[1]) == length
    done = [d for d, _ in bar.calls]
    assert done[0] == 0 and done[-1] == length
    assert done == sorted(done)
    assert len(bar.calls) <= 21  # one opening call + at most `updates` chunk ends
    # The postfix is read from the carry at the moment of each report.
    assert [p["count"] for _, p in bar.calls] == [float(d) for d in done]


def test_disabled_bar_is_plain_scan():
    bar = RecordingBar(5)
    bar.enabled = False
    out = scan(body, (0.0, 0), jnp.arange(5.0), 5, bar=bar)
    assert bar.calls == [] and int(out[1]) == 5


def test_phases_label_the_bar(capsys):
    bar = ProgressBar(10, desc="NUTS", phases=[("warmup", 4), ("sample", 6)])
    bar.update(2, {})
    bar.update(8, {"divergences": 0})
    bar.close()
    err = capsys.readouterr().err
    assert "NUTS warmup" in err and "NUTS sample" in err and "divergences=0" in err
