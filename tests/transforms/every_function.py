"""One view of every aggregation function, with windows, hops and a lifetime sum, for the engine's
whole-process tests (their child processes import it)."""

from transforms import AggSpec

M, H, D = 60_000, 3_600_000, 86_400_000
T0 = 1_767_225_600_000
SPECS = (AggSpec("s", "sum", "x", H), AggSpec("c", "count", "x", D), AggSpec("m", "mean", "x", H, 60_000),
         AggSpec("lo", "min", "x", D), AggSpec("hi", "max", "y", H), AggSpec("v", "var", "x"),
         AggSpec("sd", "stddev", "x", D), AggSpec("f", "first", "c", H), AggSpec("l", "last", "c", D),
         AggSpec("n3", "last_n", "x", D, n=3), AggSpec("cd", "count_distinct", "c", H),
         AggSpec("e", "count_events", None, H), AggSpec("r", "events_per_minute", None, H),
         AggSpec("t", "seconds_since_last"), AggSpec("life", "sum", "y"))
