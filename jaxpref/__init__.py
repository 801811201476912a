"""jaxpref: learning from preferences in JAX.

The bottom layer (`jaxpref.logprobs`, `jaxpref.losses`) is pure functions on arrays and imports
nothing beyond JAX. Subpackages are imported on demand: `import jaxpref.losses as jl`.
"""

__version__ = "0.1.0"
