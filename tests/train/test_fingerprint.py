"""`params_fingerprint` and the leaf-path names of `jaxpref._tree`."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxpref._tree import path_key, path_label
from jaxpref.train import params_fingerprint


def _tree():
    return {
        "layers": [
            {"w": np.arange(6, dtype=np.float32).reshape(2, 3)},
            {"b": np.array([1, 2], np.int32)},
        ],
        "emb": jnp.ones((2, 2), jnp.bfloat16),
        "scale": np.float64(0.5),
    }


def test_fingerprint_is_pinned():
    # The digest experiments.dpo stored in its reports before the function moved here: hash of
    # path `a/b/0/c`, then `f"{dtype}{shape}"`, then the bytes, leaves sorted by path.
    expected = "951dd9741a9c466893983c2293a3431e6d35d20174957aae32905bf6ef205823"
    assert params_fingerprint(_tree()) == expected


def test_a_list_and_a_dict_keyed_by_position_are_the_same_parameters():
    tree = _tree()
    by_position = {**tree, "layers": {str(i): layer for i, layer in enumerate(tree["layers"])}}
    as_tuple = {**tree, "layers": tuple(tree["layers"])}
    reference = params_fingerprint(tree)
    assert params_fingerprint(by_position) == reference
    assert params_fingerprint(as_tuple) == reference
    del tree["scale"]  # float64: JAX would store it as float32
    assert params_fingerprint(jax.tree.map(jnp.asarray, tree)) == params_fingerprint(tree)


def test_dtype_shape_value_and_name_change_the_fingerprint():
    tree = _tree()
    w = tree["layers"][0]["w"]
    variants = [
        {"layers": [{"w": w.astype(np.float64)}, tree["layers"][1]]},
        {"layers": [{"w": w.reshape(3, 2)}, tree["layers"][1]]},
        {"layers": [{"w": w.reshape(6)}, tree["layers"][1]]},
        {"layers": [{"w": np.where(w == 4.0, np.nextafter(w, 9.0), w)}, tree["layers"][1]]},
        {"layers": [{"v": w}, tree["layers"][1]]},
        {"layers": [tree["layers"][1], {"w": w}]},
    ]
    reference = params_fingerprint(tree)
    prints = {params_fingerprint({**tree, **v}) for v in variants}
    assert reference not in prints and len(prints) == len(variants)
    # Same bytes, another dtype of the same width: still different parameters.
    as_int = {**tree, "layers": [{"w": w.view(np.int32)}, tree["layers"][1]]}
    assert params_fingerprint(as_int) != reference


def test_path_names():
    tree = {"params": {"w": 0.0, "layers": [1.0]}, "opt_state": (2.0,)}
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    assert [path_label(p) for p, _ in flat] == [
        "opt_state[0]",
        "params['layers'][0]",
        "params['w']",
    ]
    assert [path_key(p) for p, _ in flat] == ["opt_state/0", "params/layers/0", "params/w"]
    assert path_label(jax.tree_util.tree_flatten_with_path([3.0])[0][0][0]) == "[0]"
