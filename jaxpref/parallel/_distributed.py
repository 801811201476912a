"""Multi-process setup: `jax.distributed.initialize`, a no-op for a single process."""

from __future__ import annotations

import dataclasses

import jax

__all__ = ["DistributedConfig", "initialize_distributed"]


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How this process joins a multi-process JAX run.

    Args:
      coordinator_address: `host:port` of process 0's coordinator (None: single process, or
        auto-detection when `auto_detect`).
      num_processes: total number of processes.
      process_id: index of this process.
      local_device_ids: devices of this host to use (None: all).
      auto_detect: let JAX detect the cluster (TPU pods, SLURM, ...) and ignore the fields
        above.
      cpu_collectives: collectives backend for CPU devices ("gloo" or "mpi").
      initialization_timeout: seconds to wait for every process to join.

    Example:
      >>> print(DistributedConfig().num_processes)
      1
    """

    coordinator_address: str | None = None
    num_processes: int = 1
    process_id: int = 0
    local_device_ids: tuple[int, ...] | None = None
    auto_detect: bool = False
    cpu_collectives: str = "gloo"
    initialization_timeout: int = 300


def initialize_distributed(config: DistributedConfig | None = None) -> tuple[int, int]:
    """Joins the multi-process runtime; does nothing for a single process.

    Must run before any JAX computation. On CPU it selects the `gloo` collectives so that
    cross-process collectives work between local processes.

    Args:
      config: the setup (default: single process).

    Returns:
      `(jax.process_index(), jax.process_count())`.

    Example:
      >>> print(initialize_distributed())
      (0, 1)
    """
    config = DistributedConfig() if config is None else config
    if not config.auto_detect and config.num_processes == 1:
        return jax.process_index(), jax.process_count()
    if jax.distributed.is_initialized():
        return jax.process_index(), jax.process_count()
    jax.config.update("jax_cpu_collectives_implementation", config.cpu_collectives)
    if config.auto_detect:
        jax.distributed.initialize(initialization_timeout=config.initialization_timeout)
    else:
        if config.coordinator_address is None:
            raise ValueError("initialize_distributed: `coordinator_address` is required when "
                             f"num_processes={config.num_processes}.")  # fmt: skip
        jax.distributed.initialize(
            coordinator_address=config.coordinator_address,
            num_processes=config.num_processes,
            process_id=config.process_id,
            local_device_ids=config.local_device_ids,
            initialization_timeout=config.initialization_timeout,
        )
    return jax.process_index(), jax.process_count()
