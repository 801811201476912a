"""Device mesh with the axes `data`, `fsdp`, `tensor`, built from a small frozen config."""

from __future__ import annotations

import dataclasses
import math

import jax

__all__ = ["AXES", "MeshConfig", "make_mesh"]

AXES = ("data", "fsdp", "tensor")
"""The mesh axis names, in mesh order: data, fully sharded data and tensor parallelism."""


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the three mesh axes; one size may be -1 (all remaining devices).

    `data`: pure data parallelism (parameters replicated across it). `fsdp`: data parallelism
    with parameters (and optimizer state) sharded across it. `tensor`: tensor (model)
    parallelism inside matmuls.

    Args:
      data: size of the `data` axis.
      fsdp: size of the `fsdp` axis (default -1: every device not used by the others).
      tensor: size of the `tensor` axis.

    Example:
      >>> print(MeshConfig(data=2, tensor=2).shape(8))
      (2, 2, 2)
    """

    data: int = 1
    fsdp: int = -1
    tensor: int = 1

    def shape(self, num_devices: int) -> tuple[int, int, int]:
        """Resolves -1 and checks that the sizes multiply to `num_devices`.

        Args:
          num_devices: number of devices the mesh spans.

        Returns:
          `(data, fsdp, tensor)` sizes, with a -1 replaced by the devices left over.

        Raises:
          ValueError: more than one -1, a size that is 0 or below -1, or sizes that do not
            multiply to `num_devices`.
        """
        sizes = [self.data, self.fsdp, self.tensor]
        if sizes.count(-1) > 1:
            raise ValueError(f"MeshConfig: at most one axis may be -1, got {sizes}.")
        if any(s == 0 or s < -1 for s in sizes):
            raise ValueError(f"MeshConfig: axis sizes must be positive or -1, got {sizes}.")
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise ValueError(f"MeshConfig: {num_devices} devices are not divisible by the "
                                 f"fixed axis sizes {sizes}.")  # fmt: skip
            sizes[sizes.index(-1)] = num_devices // known
        if math.prod(sizes) != num_devices:
            raise ValueError(f"MeshConfig: axis sizes {sizes} (product {math.prod(sizes)}) do "
                             f"not match the {num_devices} devices.")  # fmt: skip
        return tuple(sizes)


def make_mesh(config: MeshConfig | None = None, *, devices=None) -> jax.sharding.Mesh:
    """Builds a `Mesh` with axes `('data', 'fsdp', 'tensor')` of type `Auto`.

    Auto axes let XLA propagate shardings from the inputs and the declared parameter shardings,
    so model code needs no sharding annotations.

    Args:
      config: axis sizes (default: everything on `fsdp`).
      devices: devices to use (default: all devices of every process).

    Returns:
      The mesh.

    Example:
      >>> mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
      >>> print(dict(mesh.shape))
      {'data': 2, 'fsdp': 2, 'tensor': 2}
    """
    config = MeshConfig() if config is None else config
    devices = None if devices is None else list(devices)
    shape = config.shape(jax.device_count() if devices is None else len(devices))
    auto = (jax.sharding.AxisType.Auto,) * len(AXES)
    return jax.make_mesh(shape, AXES, axis_types=auto, devices=devices)
