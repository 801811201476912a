"""Sharding: device mesh, logical-axis rules, sharded initialisation, batches, multi-process setup.

Parameters carry logical axis names (see `jaxpref.models`); a `ShardingRules` table maps them to
the mesh axes `data`, `fsdp`, `tensor`. Train and decode steps are plain `jax.jit` over
`nnx.split` state with these shardings; nothing uses `pmap`.
"""

from jaxpref.parallel._distributed import *  # noqa: F403
from jaxpref.parallel._mesh import *  # noqa: F403
from jaxpref.parallel._rules import *  # noqa: F403
from jaxpref.parallel._shard import *  # noqa: F403
