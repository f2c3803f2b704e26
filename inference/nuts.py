"""NUTS through BlackJAX, with Stan's windowed warmup, chains vmapped in one compiled program."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, NamedTuple

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
from blackjax.adaptation.mass_matrix import mass_matrix_adaptation
from blackjax.adaptation.step_size import dual_averaging_adaptation
from blackjax.adaptation.window_adaptation import build_schedule

from inference import progress as progress_lib


class _Warmup(NamedTuple):
    da: object  # dual-averaging state, one per chain
    mm: object  # mass-matrix (Welford) state, one per chain
    step_size: jax.Array
    inverse_mass_matrix: jax.Array


@dataclass(frozen=True)
class NUTS:
    """The No-U-Turn sampler (BlackJAX's kernel) with Stan's window adaptation.

    Warmup adapts the step size by dual averaging towards ``target_accept_prob`` and a
    diagonal (or, with ``dense_mass=True``, dense) inverse mass matrix over Stan's
    expanding windows. All chains run with ``jax.vmap`` in one compiled program.

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

    handles_discrete: ClassVar[bool] = False
    needs_gradients: ClassVar[bool] = True

    def __post_init__(self):
        if not 0.0 < float(self.target_accept_prob) < 1.0:
            raise ValueError(f"NUTS(target_accept_prob={self.target_accept_prob}): must be in (0, 1).")
        if not (isinstance(self.max_tree_depth, int) and self.max_tree_depth >= 1):
            raise ValueError(f"NUTS(max_tree_depth={self.max_tree_depth!r}): must be a positive int.")
        if not float(self.init_step_size) > 0.0:
            raise ValueError(f"NUTS(init_step_size={self.init_step_size}): must be > 0.")

    def build(
        self,
        logdensity_fn: Callable,
        num_warmup: int,
        num_samples: int,
        bar: progress_lib.ProgressBar | None = None,
    ) -> Callable:
        """A pure function ``run(key, positions) -> (draws, stats)`` for batched chains.

        ``positions`` has a leading chain axis; ``draws`` has shape (chains, draws, ...) per
        leaf and ``stats`` holds per-draw statistics under ArviZ's names.
        """
        kernel = blackjax.nuts.build_kernel()
        max_depth = self.max_tree_depth

        def one_step(key, state, step_size, inverse_mass_matrix):
            return kernel(key, state, logdensity_fn, step_size, inverse_mass_matrix, max_depth)

        step = jax.vmap(one_step)
        mm_init, mm_update, mm_final = mass_matrix_adaptation(not self.dense_mass)
        da_init, da_update, da_final = dual_averaging_adaptation(self.target_accept_prob)
        # build_schedule gives a (W, 2) array; convert it on the host in one go (a Python
        # loop over it would dispatch ~W tiny device ops on every call).
        schedule = np.asarray(build_schedule(num_warmup)) if num_warmup > 0 else np.zeros((0, 2))
        init_step_size = float(self.init_step_size)

        W, S = num_warmup, num_samples
        # Warmup schedule, padded so that it can be indexed at any step (unused after W).
        stage = jnp.asarray(np.append(schedule[:, 0], 0).astype(np.int32))
        window_end = jnp.asarray(np.append(schedule[:, 1], 0).astype(bool))

        def adapt(w: _Warmup, t, position, acceptance_rate) -> _Warmup:
            da = jax.vmap(da_update)(w.da, acceptance_rate)
            mm = jax.lax.cond(
                stage[t] == 1, lambda m: jax.vmap(mm_update)(m, position), lambda m: m, w.mm
            )

            def end_window(da, mm):
                mm = jax.vmap(mm_final)(mm)
                da = jax.vmap(da_init)(jax.vmap(da_final)(da))
                return da, mm

            da, mm = jax.lax.cond(window_end[t], end_window, lambda d, m: (d, m), da, mm)
            # After the last warmup step, sample with the averaged step size (Stan's rule).
            step_size = jnp.where(
                t == W - 1, jax.vmap(da_final)(da), jnp.exp(da.log_step_size)
            )
            return _Warmup(da, mm, step_size, mm.inverse_mass_matrix)

        def body(carry, xs):
            state, w, draws, stats, n_div = carry
            t, keys = xs
            state, info = step(keys, state, w.step_size, w.inverse_mass_matrix)
            step_stats = {
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
            # Warmup steps write slot 0, which the first kept draw overwrites.
            slot = jnp.maximum(t - W, 0)
            put = lambda buf, v: jax.lax.dynamic_update_index_in_dim(buf, v, slot, 0)  # noqa: E731
            draws = jax.tree.map(put, draws, state.position)
            stats = jax.tree.map(put, stats, step_stats)
            n_div = n_div.at[(t >= W).astype(jnp.int32)].add(jnp.sum(info.is_divergent))
            if W > 0:
                w = jax.lax.cond(
                    t < W,
                    lambda w: adapt(w, jnp.minimum(t, W - 1), state.position, info.acceptance_rate),
                    lambda w: w,
                    w,
                )
            return (state, w, draws, stats, n_div), None

        def run(key, positions):
            num_chains = jax.tree.leaves(positions)[0].shape[0]
            chains = jnp.arange(num_chains)
            state = jax.vmap(lambda p: blackjax.nuts.init(p, logdensity_fn))(positions)
            dim = sum(x[0].size for x in jax.tree.leaves(positions))
            mm0 = jax.vmap(lambda _: mm_init(dim))(chains)
            w = _Warmup(
                jax.vmap(lambda _: da_init(init_step_size))(chains),
                mm0,
                jnp.full((num_chains,), init_step_size),
                mm0.inverse_mass_matrix,
            )
            # Output buffers, written in place by the loop: (draws, chains, ...).
            draws = jax.tree.map(lambda x: jnp.zeros((S,) + x.shape, x.dtype), state.position)
            stat_dtypes = {"lp": float, "energy": float, "diverging": bool,
                           "acceptance_rate": float, "step_size": float, "n_steps": jnp.int32,
                           "tree_depth": jnp.int32, "reached_max_treedepth": bool,
                           "n_grad": jnp.int32}
            stats = {k: jnp.zeros((S, num_chains), jnp.dtype(d) if d is not float else
                                  state.logdensity.dtype) for k, d in stat_dtypes.items()}
            keys = jax.random.split(key, (W + S, num_chains))
            carry = (state, w, draws, stats, jnp.zeros(2, jnp.int32))
            state, w, draws, stats, n_div = progress_lib.scan(
                body, carry, (jnp.arange(W + S), keys), W + S, bar=bar,
                postfix_fn=lambda c: {"step size": jnp.mean(c[1].step_size),
                                      "divergences": c[4][1]},
            )
            swap = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
            tuning = {"step_size": w.step_size, "inverse_mass_matrix": w.inverse_mass_matrix,
                      "warmup_divergences": n_div[0]}
            return jax.tree.map(swap, draws), jax.tree.map(swap, stats), tuning

        return run
