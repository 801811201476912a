"""Test-session setup shared by `tests/` and the doctests under `jaxpref/`.

JAX reads these settings once, when its backend starts, so they are applied here before any test
module imports JAX: 8 fake CPU devices (so sharded code runs as on a pod slice), strict rank
promotion (implicit broadcasting of mismatched ranks is an error), and a persistent compilation
cache that keeps repeated runs of the suite fast.
"""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402

_CACHE = pathlib.Path(__file__).resolve().parent / ".jax_cache"
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
