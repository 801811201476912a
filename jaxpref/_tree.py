"""Names and fingerprints of pytree leaves, shared by the data and training layers.

Two ways of naming a leaf's path, for two purposes:

* `path_label(path)`: `params['w']`, `opt_state[1].mu['w']`: for messages a reader matches
  against the code that built the tree (it keeps the difference between a dict key, a list
  index and an attribute);
* `path_key(path)`: `params/layers/0/w`: a key that ignores that difference, so a list and a dict
  keyed by position (as a checkpoint or a JSON file stores it) name their leaves alike.

`params_fingerprint` hashes a parameter tree by `path_key`, so a tree and its restored copy have
the same fingerprint. This module depends on JAX and numpy only.
"""

from __future__ import annotations

import hashlib

import jax
import numpy as np

__all__ = ["params_fingerprint", "path_key", "path_label"]


def path_label(path) -> str:
    """A readable name of a leaf path: `params['w']` for the path `['params']['w']`.

    A leading string dict key is written bare (the name of a part of a state); the rest is
    `jax.tree_util.keystr`.

    Args:
      path: a key path from `jax.tree_util.tree_flatten_with_path`.

    Returns:
      The name.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> tree = {"params": {"w": jnp.ones(2)}, "opt_state": (jnp.ones(2),)}
      >>> print([path_label(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]])
      ['opt_state[0]', "params['w']"]
    """
    head = getattr(path[0], "key", None) if path else None
    if isinstance(head, str):
        return head + jax.tree_util.keystr(path[1:])
    return jax.tree_util.keystr(path)


def path_key(path) -> str:
    """A leaf path as `a/b/0/c`: dict keys, sequence indices and attribute names alike.

    Args:
      path: a key path from `jax.tree_util.tree_flatten_with_path`.

    Returns:
      The key.

    Example:
      >>> import jax, numpy as np
      >>> tree = {"layers": [{"w": np.ones(2)}]}
      >>> print([path_key(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]])
      ['layers/0/w']
    """
    parts = (getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)
    return "/".join(str(p) for p in parts)


def params_fingerprint(params) -> str:
    """SHA-256 over every leaf's path, dtype, shape and bytes, in the order of the paths.

    For each leaf, sorted by `path_key`, the hash reads the key, then `f"{dtype}{shape}"`
    (`float32(2, 3)`), then the C-order bytes of the array. Paths are written `a/b/0/c`, so a
    parameter list and a dict keyed by position (as a checkpoint stores it) give the same
    fingerprint. An NNX `State` names its leaves `.../value` and its pure dict
    (`State.to_pure_dict()`) does not: fingerprint one form consistently.

    Args:
      params: a pytree of arrays (numpy or fully addressable `jax.Array`s).

    Returns:
      The hex digest (64 characters).

    Example:
      >>> import numpy as np
      >>> as_list = params_fingerprint({"layers": [{"w": np.ones(2, np.float32)}]})
      >>> as_dict = params_fingerprint({"layers": {"0": {"w": np.ones(2, np.float32)}}})
      >>> wider = params_fingerprint({"layers": [{"w": np.ones(2, np.float64)}]})
      >>> print(as_list == as_dict, as_list == wider)
      True False
    """
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]
    h = hashlib.sha256()
    for name, leaf in sorted(((path_key(p), x) for p, x in leaves), key=lambda item: item[0]):
        arr = np.ascontiguousarray(np.asarray(leaf))
        h.update(name.encode())
        h.update(f"{arr.dtype}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()
