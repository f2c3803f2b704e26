"""Pins what ``ppl.jax_internals`` (the one module using ``jax._src``) relies on, so that a
JAX release that changes it fails here, by name, rather than deep inside ``ppl.sim``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ppl import jax_internals as ji


def test_outside_any_transformation_the_trace_is_not_a_vmap():
    assert not ji.is_vmap(ji.current_trace())


def test_vmap_levels_chain_back_to_the_outer_trace_with_their_sizes():
    seen = {}

    def outer(_):
        seen["outer"] = ji.current_trace()

        def inner(_):
            level = ji.current_trace()
            seen["inner"], seen["inner_parent"] = level, ji.parent(level)
            seen["sizes"] = (ji.axis_size(level), ji.axis_size(ji.parent(level)))
            return 0.0

        return jax.vmap(inner)(jnp.zeros(2))

    jax.vmap(outer)(jnp.zeros(3))
    assert ji.is_vmap(seen["outer"]) and ji.is_vmap(seen["inner"])
    assert seen["inner_parent"] is seen["outer"]
    assert seen["sizes"] == (2, 3)


def test_jit_and_scan_bodies_are_not_vmap_levels():
    kinds = []

    def body(c, _):
        kinds.append(ji.is_vmap(ji.current_trace()))
        return c, None

    jax.jit(lambda x: jax.lax.scan(body, x, None, length=2)[0])(0.0)
    assert kinds == [False]


def test_a_batched_value_has_one_element_per_mapped_index():
    def f(_):
        level = ji.current_trace()
        return ji.batched(level, jnp.arange(4.0) * 10.0) + 1.0

    np.testing.assert_allclose(np.asarray(jax.vmap(f)(jnp.zeros(4))), [1.0, 11.0, 21.0, 31.0])
