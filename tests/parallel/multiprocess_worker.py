"""One of the two processes of `test_multiprocess.py` (run as a script, not collected).

Usage: python -m tests.parallel.multiprocess_worker PORT PROCESS_ID CHECKPOINT_DIR OUT.npz

Joins a 2-process JAX runtime over gloo (4 fake CPU devices per process), loads the checkpoint
with `from_hf` directly into the `fsdp_tp` layout of a (data=2, fsdp=2, tensor=2) mesh (each
process places only its own shards), assembles the global batch from each process's half, runs
one jitted loss+gradient step and (process 0) writes the gathered results.
"""

import sys


def main(port: int, process_id: int, checkpoint: str, out: str) -> None:
    import functools

    import jax
    import numpy as np
    from flax import nnx
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxpref.models import from_hf
    from jaxpref.parallel import (
        FSDP_TP,
        DistributedConfig,
        MeshConfig,
        batch_sharding,
        global_batch,
        initialize_distributed,
        make_mesh,
        param_shardings,
    )
    from tests.parallel.common import data, loss_fn

    index, count = initialize_distributed(
        DistributedConfig(
            coordinator_address=f"localhost:{port}",
            num_processes=2,
            process_id=process_id,
            initialization_timeout=60,
        )
    )
    assert (index, count) == (process_id, 2), (index, count)
    assert jax.device_count() == 8 and jax.local_device_count() == 4

    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
    model = from_hf(checkpoint, mesh=mesh, rules=FSDP_TP)
    assert not model.embed.get_value().is_fully_addressable
    graphdef, state = nnx.split(model)
    shardings = param_shardings(state, FSDP_TP, mesh)

    ids, mask = data()
    half = ids.shape[0] // 2
    rows = slice(process_id * half, (process_id + 1) * half)
    g_ids, g_mask = global_batch((ids[rows], mask[rows]), mesh, FSDP_TP)
    assert g_ids.shape == ids.shape and not g_ids.is_fully_addressable

    bs = batch_sharding(mesh, FSDP_TP)
    step = jax.jit(
        jax.value_and_grad(functools.partial(loss_fn, graphdef)),
        in_shardings=(shardings, bs, bs),
        out_shardings=(NamedSharding(mesh, P()), shardings),
    )
    loss, grads = step(state, g_ids, g_mask)
    grads = multihost_utils.process_allgather(grads, tiled=True)
    params = multihost_utils.process_allgather(state, tiled=True)
    if process_id == 0:
        flat = {}
        for prefix, tree in (("grad", grads), ("param", params)):
            for path, var in nnx.to_flat_state(tree):
                flat[prefix + ":" + "/".join(map(str, path))] = np.asarray(var.get_value())
        np.savez(out, loss=np.asarray(loss), **flat)
    multihost_utils.sync_global_devices("done")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
