"""The JSON state engine of formats 1 and 2 (0.1), kept as it was released.

It reads stored states of those formats for ``transforms.engine.codec.decode_legacy``, which converts
them to format 3, and it is ``bench/bench_engine.py``'s baseline.  Its modules are over the house size
budget (``state.py`` 511 lines, a 151-line source generator in ``kernels.py``) because they are frozen:
a reader of a released format is not rewritten.
"""
