"""The web console (``featurestore ui``, and ``/ui`` of ``featurestore serve``): catalog, lineage, search,
monitoring, usage and cost pages rendered on the server; docs/console.md."""

from .app import Console, create_console_app, mount_console
from .lineage import lineage_graph

__all__ = ["Console", "create_console_app", "lineage_graph", "mount_console"]
