"""Every public name of the data layer documents its arguments and results (house style)."""

import pytest

from tests._docstyle import problems, public_objects, submodules

MODULES = submodules("jaxpref.data")


def test_the_synthetic_samplers_are_covered():
    assert {m for m in MODULES if ".synthetic." in m} >= {
        "jaxpref.data.synthetic._bandit",
        "jaxpref.data.synthetic._control",
        "jaxpref.data.synthetic._linear",
        "jaxpref.data.synthetic._token",
    }


@pytest.mark.parametrize(
    "qualname,obj", list(public_objects(MODULES)), ids=lambda x: x if isinstance(x, str) else ""
)
def test_public_names_document_args_and_returns(qualname, obj):
    assert not problems(qualname, obj)
