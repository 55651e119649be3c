"""Pure event-time windowed aggregations shared by the streaming worker and the batch path.

Nothing here imports a Kafka, Redis or PostgreSQL client: the worker and the
backfill hand events in and take values and serialized state out.
"""

from .aggregations import finalize, merge_moments
from .batch import BatchResult, compute_batch
from .specs import ACTIVITY_FUNCTIONS, COLUMN_FUNCTIONS, FUNCTIONS, NUMERIC_FUNCTIONS, AggSpec
from .state import FORMAT_VERSION, REJECT_DUPLICATE, REJECT_LATE, Rejection, ViewState, compile_reader
from .windows import DAY, HOUR, MINUTE, SECOND, default_hop, format_duration, parse_duration, window_start

__all__ = [
    "ACTIVITY_FUNCTIONS", "COLUMN_FUNCTIONS", "FUNCTIONS", "NUMERIC_FUNCTIONS", "AggSpec",
    "BatchResult", "compute_batch", "FORMAT_VERSION", "REJECT_DUPLICATE", "REJECT_LATE", "Rejection",
    "ViewState", "compile_reader", "DAY", "HOUR", "MINUTE", "SECOND", "default_hop", "format_duration",
    "parse_duration",
    "window_start", "finalize", "merge_moments",
]
