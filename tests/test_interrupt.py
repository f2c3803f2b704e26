"""Ctrl-C as a flag while a chunked run is in flight (inference.interrupt).

A KeyboardInterrupt raised by Python's default SIGINT handler can land inside a callback
called from C (CI once lost one in JAX's garbage-collection callback, printed as an
"Exception ignored" warning, and the run went on). These tests send real signals."""

from __future__ import annotations

import os
import signal
import threading

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest

import inference
from inference import chains, interrupt


def _ctrl_c():
    os.kill(os.getpid(), signal.SIGINT)


def test_first_ctrl_c_sets_the_flag_second_raises_handler_restored():
    with interrupt.deferred() as pressed:
        assert not pressed()
        _ctrl_c()
        assert pressed()  # no exception: the flag is set instead
        with pytest.raises(KeyboardInterrupt):
            _ctrl_c()
            for _ in range(1000):  # the handler runs at the next bytecode boundary
                pass
        with pytest.raises(KeyboardInterrupt):
            interrupt.check(pressed)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_other_threads_and_other_handlers_are_left_alone():
    seen = []
    thread = threading.Thread(target=lambda: seen.append(interrupt.deferred().__enter__()))
    thread.start()
    thread.join()
    assert seen == [interrupt.never]

    def mine(signum, frame):
        seen.append(signum)

    previous = signal.signal(signal.SIGINT, mine)
    try:
        with interrupt.deferred() as pressed:
            assert pressed is interrupt.never
            assert signal.getsignal(signal.SIGINT) is mine
            _ctrl_c()
            for _ in range(1000):
                pass
        assert seen[-1] == signal.SIGINT
    finally:
        signal.signal(signal.SIGINT, previous)


def model(y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    with numpyro.plate("data", 5):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def test_a_real_ctrl_c_during_sampling_returns_the_draws_so_far(monkeypatch):
    """The signal is sent from the progress bar's update after 20 of 40 draws: the chains
    stop at the next chunk boundary with the 20 draws, as with a raised KeyboardInterrupt."""

    class Bar(inference.progress.ProgressBar):
        def update(self, done, postfix):
            if int(done) >= 40 + 20 and not getattr(Bar, "sent", False):
                Bar.sent = True
                _ctrl_c()

    monkeypatch.setattr(chains, "ProgressBar", lambda total, desc="", enabled=True, phases=None:
                        Bar(total, desc, False, phases))
    y = jnp.array([1.0, 2.0, 3.0, 0.5, 2.2])
    with pytest.warns(UserWarning, match=r"interrupted \(KeyboardInterrupt\) after 20 of 40"):
        r = inference.infer(model, y=y, num_warmup=40, num_samples=40, num_chains=2, key=0,
                            progress=False, diagnostics=False)
    assert r.samples["mu"].shape == (2, 20) and r.state.interrupted
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
