"""The compiled columnar state engine: per view, every cached entity's state in numpy arrays,
applied and evaluated a whole micro-batch at a time by one generic set of numba kernels.

``layout`` turns a spec set into the integer tables the kernels read; ``arena`` holds the
states; ``kernels`` and ``codec_kernels`` are the compiled code; ``values`` converts Python
values in and out; ``codec`` is the binary state format.
"""

from .arena import StateArena
from .codec import StateFormatError
from .jit import COMPILED
from .layout import FORMAT_VERSION, Layout, layout_for

__all__ = ["COMPILED", "FORMAT_VERSION", "Layout", "StateArena", "StateFormatError", "layout_for"]
