"""NUTS through BlackJAX, with Stan's windowed warmup, chains vmapped in one compiled program."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
from blackjax.adaptation.mass_matrix import mass_matrix_adaptation
from blackjax.adaptation.step_size import dual_averaging_adaptation
from blackjax.adaptation.window_adaptation import build_schedule

from inference.chains import Sampler
from inference.method import ChainMethod


class _Warmup(NamedTuple):
    da: object  # dual-averaging state, one per chain
    mm: object  # mass-matrix (Welford) state, one per chain
    step_size: jax.Array
    inverse_mass_matrix: jax.Array


@dataclass(frozen=True)
class NUTS(ChainMethod):
    """The No-U-Turn sampler (BlackJAX's kernel) with Stan's window adaptation.

    Warmup adapts the step size by dual averaging towards ``target_accept_prob`` and a
    diagonal (or, with ``dense_mass=True``, dense) inverse mass matrix over Stan's
    expanding windows. All chains run with ``jax.vmap`` in one compiled program.

    Gradients: ``stats["n_grad"]`` counts each kept draw's (its leapfrog steps), and
    ``tuning["warmup_n_grad"]`` each chain's before its first kept draw: the initial-point
    search (one per candidate tried, usually one; the chain starts from the value and
    gradient found there) and the warmup transitions. A run's total is their sum.

    Example:
        >>> import jax, numpyro.distributions as dist, ppl, inference
        >>> def model():
        ...     ppl.sample("x", dist.Normal(0.0, 1.0))
        >>> r = inference.infer(model, method=NUTS(), num_samples=200, num_warmup=200,
        ...                     num_chains=2, progress=False)
        >>> r.samples["x"].shape
        (2, 200)
    """

    target_accept_prob: float = 0.8
    max_tree_depth: int = 10
    dense_mass: bool = False
    init_step_size: float = 1.0


    def __post_init__(self):
        if not 0.0 < float(self.target_accept_prob) < 1.0:
            raise ValueError(f"NUTS(target_accept_prob={self.target_accept_prob}): must be in (0, 1).")
        if not (isinstance(self.max_tree_depth, int) and self.max_tree_depth >= 1):
            raise ValueError(f"NUTS(max_tree_depth={self.max_tree_depth!r}): must be a positive int.")
        if not float(self.init_step_size) > 0.0:
            raise ValueError(f"NUTS(init_step_size={self.init_step_size}): must be > 0.")

    def sampler(self, logdensity_fn: Callable, num_warmup: int, num_samples: int) -> Sampler:
        """The chains as a :class:`inference.chains.Sampler`: warmup steps, then draws.

        The loop runs ``num_warmup + num_samples`` steps; during the first ``num_warmup`` the
        step size and mass matrix adapt over Stan's windows (dual averaging towards
        ``target_accept_prob``; after the last warmup step the averaged step size is kept).
        """
        kernel = blackjax.nuts.build_kernel()
        max_depth = self.max_tree_depth

        def one_step(key, state, step_size, inverse_mass_matrix):
            return kernel(key, state, logdensity_fn, step_size, inverse_mass_matrix, max_depth)

        vstep = jax.vmap(one_step)
        mm_init, mm_update, mm_final = mass_matrix_adaptation(not self.dense_mass)
        da_init, da_update, da_final = dual_averaging_adaptation(self.target_accept_prob)
        # build_schedule gives a (W, 2) array; convert it on the host in one go (a Python
        # loop over it would dispatch ~W tiny device ops on every call).
        # (compile-time evaluation: this may run while a program is being traced).
        with jax.ensure_compile_time_eval():
            schedule = np.asarray(build_schedule(num_warmup)) if num_warmup > 0 else np.zeros((0, 2))
        init_step_size = float(self.init_step_size)

        W = num_warmup
        # Warmup schedule, padded so that it can be indexed at any step (unused after W).
        stage = np.append(schedule[:, 0], 0).astype(np.int32)
        window_end = np.append(schedule[:, 1], 0).astype(bool)

        def adapt(w: _Warmup, t, position, acceptance_rate) -> _Warmup:
            da = jax.vmap(da_update)(w.da, acceptance_rate)
            mm = jax.lax.cond(
                jnp.asarray(stage)[t] == 1, lambda m: jax.vmap(mm_update)(m, position),
                lambda m: m, w.mm
            )

            def end_window(da, mm):
                mm = jax.vmap(mm_final)(mm)
                da = jax.vmap(da_init)(jax.vmap(da_final)(da))
                return da, mm

            da, mm = jax.lax.cond(jnp.asarray(window_end)[t], end_window, lambda d, m: (d, m),
                                  da, mm)
            # After the last warmup step, sample with the averaged step size (Stan's rule).
            step_size = jnp.where(
                t == W - 1, jax.vmap(da_final)(da), jnp.exp(da.log_step_size)
            )
            return _Warmup(da, mm, step_size.astype(w.step_size.dtype), mm.inverse_mass_matrix)

        def start(state):
            num_chains = state.logdensity.shape[0]
            chains = jnp.arange(num_chains)
            dim = sum(x[0].size for x in jax.tree.leaves(state.position))
            mm0 = jax.vmap(lambda _: mm_init(dim))(chains)
            w = _Warmup(
                jax.vmap(lambda _: da_init(init_step_size))(chains),
                mm0,
                jnp.full((num_chains,), init_step_size, state.logdensity.dtype),
                mm0.inverse_mass_matrix,
            )
            # Divergences (warmup, sampling) and each chain's warmup gradients.
            return state, w, jnp.zeros(2, jnp.int32), jnp.zeros((num_chains,), jnp.int32)

        def init(key, positions):
            del key
            return start(jax.vmap(lambda p: blackjax.nuts.init(p, logdensity_fn))(positions))

        def init_from_gradient(key, positions, logdensity, gradient):
            # The initial-point search evaluated them already: no gradient compiled again.
            del key
            return start(blackjax.mcmc.hmc.HMCState(positions, logdensity, gradient))

        def step(carry, t, key):
            state, w, n_div, n_warm = carry
            keys = jax.random.split(key, state.logdensity.shape[0])
            state, info = vstep(keys, state, w.step_size, w.inverse_mass_matrix)
            stats = {
                "lp": state.logdensity,
                "energy": info.energy,
                "diverging": info.is_divergent,
                "acceptance_rate": info.acceptance_rate,
                "step_size": w.step_size,
                "n_steps": info.num_integration_steps,
                "tree_depth": info.num_trajectory_expansions,
                "reached_max_treedepth": info.num_trajectory_expansions >= max_depth,
                "n_grad": info.num_integration_steps,
            }
            n_div = n_div.at[(t >= W).astype(jnp.int32)].add(
                jnp.sum(info.is_divergent).astype(jnp.int32))
            if W > 0:
                w = jax.lax.cond(
                    t < W,
                    lambda w: adapt(w, jnp.minimum(t, W - 1), state.position, info.acceptance_rate),
                    lambda w: w,
                    w,
                )
            n_warm = n_warm + jnp.where(t < W, info.num_integration_steps, 0).astype(n_warm.dtype)
            return (state, w, n_div, n_warm), state.position, stats

        def tuning(carry):
            _, w, n_div, n_warm = carry
            return {"step_size": w.step_size, "inverse_mass_matrix": w.inverse_mass_matrix,
                    # on the host: indexing a device array compiles a small program
                    "warmup_divergences": np.asarray(n_div)[0], "warmup_n_grad": n_warm}

        def postfix(carry):
            _, w, n_div, _ = carry
            return {"step size": jnp.mean(w.step_size), "divergences": n_div[1]}

        return Sampler(init, step, loop_warmup=W, num_steps=W + num_samples, tuning=tuning,
                       postfix=postfix, init_from_gradient=init_from_gradient)
