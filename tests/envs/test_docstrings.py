"""Every public name of the testbeds documents its arguments and results (house style)."""

import jax
import pytest

from tests._docstyle import problems, public_objects, submodules

MODULES = submodules("jaxpref.envs")


def test_every_testbed_module_is_covered():
    assert set(MODULES) >= {
        "jaxpref.envs._bandit",
        "jaxpref.envs._control",
        "jaxpref.envs._linear",
        "jaxpref.envs._tabular",
        "jaxpref.envs._token",
    }


def test_the_check_catches_missing_sections_also_behind_jit():
    @jax.jit
    def double(x):
        """Doubles `x`."""
        return 2 * x

    assert problems("double", double) == ["double: missing ['Args:', 'Returns:']"]

    class Box:
        """A box."""

        def __call__(self, x):
            """Calls."""
            return x

    assert problems("Box", Box) == [
        "Box: no Attributes or Args",
        "Box.__call__: missing ['Args:', 'Returns:']",
    ]


@pytest.mark.parametrize(
    "qualname,obj", list(public_objects(MODULES)), ids=lambda x: x if isinstance(x, str) else ""
)
def test_public_names_document_args_and_returns(qualname, obj):
    assert not problems(qualname, obj)
