"""The JSON state engine of format 2 (0.1), kept as it was released: the one module of that format.

It reads stored format 2 states for ``transforms.engine.codec.decode_legacy``, which converts them to
format 3, and it is ``bench/bench_engine.py``'s baseline.  Its modules are over the house size budget
(``state.py`` ~480 lines, a 151-line source generator in ``kernels.py``) because they are frozen: a
reader of a released format is not rewritten.  Format 1, which no released version wrote, is refused.
"""
