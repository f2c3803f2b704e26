"""Compiling once: the program cache, its keys, JAX's disk cache and the program store.

``cache`` (``PROGRAMS``, ``compiling``), ``fingerprint`` (what a key digests),
``disk_cache`` (JAX's persistent cache, configured at ``import inference``),
``store`` (serialized executables across processes).
"""
