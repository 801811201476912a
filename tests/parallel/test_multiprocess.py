"""Two local processes joined by `jax.distributed` over gloo compute what one process computes."""

import functools
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from jaxpref.models import from_hf, preset, to_hf
from tests.models.helpers import random_model
from tests.parallel.common import data, loss_fn

ROOT = pathlib.Path(__file__).resolve().parents[2]
TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    out = tmp_path / "result.npz"
    checkpoint = tmp_path / "checkpoint"
    to_hf(random_model(preset("llama-tiny"), seed=2), checkpoint)
    port = _free_port()
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_NUMPY_RANK_PROMOTION": "raise",
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    cmd = [sys.executable, "-m", "tests.parallel.multiprocess_worker", str(port)]
    procs = [
        subprocess.Popen(
            [*cmd, str(i), str(checkpoint), str(out)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-4000:]

    # The same step in this process, on one device, without sharding.
    graphdef, state = nnx.split(from_hf(checkpoint))
    ids, mask = data()
    loss, grads = jax.jit(jax.value_and_grad(functools.partial(loss_fn, graphdef)))(
        state, ids, mask
    )
    got = np.load(out)
    np.testing.assert_allclose(got["loss"], loss, atol=1e-5)
    for prefix, tree in (("param", state), ("grad", grads)):
        for path, var in nnx.to_flat_state(tree):
            key = prefix + ":" + "/".join(map(str, path))
            tol = 0.0 if prefix == "param" else 1e-5
            np.testing.assert_allclose(got[key], var.get_value(), atol=tol, err_msg=key)
