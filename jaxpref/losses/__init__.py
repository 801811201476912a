"""Preference objectives as pure functions on arrays.

Per-example atoms return unreduced values (`[B]` per pair, or `[B, T]` per token); objectives
return `(scalar, Aux)`. Nothing here imports Flax, orbax, grain or tfds.
"""

from jaxpref.losses._anyloss import *  # noqa: F403
from jaxpref.losses._cpl import *  # noqa: F403
from jaxpref.losses._modifiers import *  # noqa: F403
from jaxpref.losses._objectives import *  # noqa: F403
from jaxpref.losses._pairwise import *  # noqa: F403
from jaxpref.losses._reference_free import *  # noqa: F403
from jaxpref.losses._registry import *  # noqa: F403
from jaxpref.losses._reward_model import *  # noqa: F403
from jaxpref.losses._token import *  # noqa: F403
from jaxpref.losses._unpaired import *  # noqa: F403
