"""Load a feature repository: a Python file, or a folder of ``.py`` files.

Each file is executed as its own module (unique, deterministic module name,
registered in ``sys.modules``; the repository folder is on ``sys.path`` while
loading, so files may import each other by plain module name).  Every
``Entity``, ``EventSource``, ``FeatureView``, ``OnDemandFeatureView`` and
``FeatureService`` at module top level is collected, together with the
objects they reference.  In a folder, files are loaded in name order; files
whose name starts with ``_`` or ``.`` are skipped (helpers they define are
still found when imported by another file).  Relative ``FileHistory`` paths
are made absolute against the folder of the file that defines the source.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .definitions import (
    Entity,
    EventSource,
    FeatureSelection,
    FeatureService,
    FeatureView,
    FileHistory,
    OnDemandFeatureView,
)
from .exceptions import DefinitionError, UnknownNameError

__all__ = ["Repository", "load_repo"]


def _identity(obj: Any) -> Any:
    if isinstance(obj, (FeatureView, OnDemandFeatureView, FeatureService, EventSource)):
        return obj.to_json()
    return obj.model_dump(mode="json")


@dataclass
class Repository:
    """Definitions found in a repository, by name."""

    path: Path
    entities: dict[str, Entity] = field(default_factory=dict)
    sources: dict[str, EventSource] = field(default_factory=dict)
    views: dict[str, FeatureView] = field(default_factory=dict)
    odfvs: dict[str, OnDemandFeatureView] = field(default_factory=dict)
    services: dict[str, FeatureService] = field(default_factory=dict)
    #: ``(kind, name) -> file`` where each object was first found.
    origins: dict[tuple[str, str], Path] = field(default_factory=dict)

    @staticmethod
    def _get(table: dict[str, Any], kind: str, name: str) -> Any:
        try:
            return table[name]
        except KeyError:
            known = ", ".join(sorted(table)) or "none"
            raise UnknownNameError(f"unknown {kind} {name!r} (known: {known})") from None

    def entity(self, name: str) -> Entity:
        return self._get(self.entities, "entity", name)

    def source(self, name: str) -> EventSource:
        return self._get(self.sources, "event source", name)

    def view(self, name: str) -> FeatureView:
        return self._get(self.views, "feature view", name)

    def odfv(self, name: str) -> OnDemandFeatureView:
        return self._get(self.odfvs, "on-demand feature view", name)

    def service(self, name: str) -> FeatureService:
        return self._get(self.services, "feature service", name)

    # -- building ----------------------------------------------------------------------

    def _add(self, obj: Any, origin: Path) -> None:
        table, kind = {
            Entity: (self.entities, "Entity"),
            EventSource: (self.sources, "EventSource"),
            FeatureView: (self.views, "FeatureView"),
            OnDemandFeatureView: (self.odfvs, "OnDemandFeatureView"),
            FeatureService: (self.services, "FeatureService"),
        }[type(obj)]
        if isinstance(obj, EventSource) and isinstance(obj.history, FileHistory):
            # Shared by reference with the views built on it, so fix it in place.
            object.__setattr__(obj, "history", obj.history.resolve(origin.parent))
        existing = table.get(obj.name)
        if existing is not None:
            if existing is not obj and _identity(existing) != _identity(obj):
                first = self.origins[(kind, obj.name)]
                raise DefinitionError(
                    f"{kind} {obj.name!r} is defined differently in {first} and {origin}"
                )
            return
        if kind == "EventSource":
            shared = next((src for src in self.sources.values() if src.topic == obj.topic), None)
            if shared is not None:
                raise DefinitionError(
                    f"EventSource {obj.name!r} in {origin} reads topic {obj.topic!r}, which EventSource "
                    f"{shared.name!r} in {self.origins[(kind, shared.name)]} reads too: a worker reads each topic as "
                    f"one source (one schema, one entity key the events are partitioned by); give each source its "
                    f"own topic")
        if kind in ("FeatureView", "OnDemandFeatureView"):
            other_table, other = ((self.odfvs, "OnDemandFeatureView") if kind == "FeatureView"
                                  else (self.views, "FeatureView"))
            if obj.name in other_table:
                raise DefinitionError(
                    f"{kind} {obj.name!r} in {origin} has the same name as {other} {obj.name!r} "
                    f"in {self.origins[(other, obj.name)]}"
                )
        table[obj.name] = obj
        self.origins[(kind, obj.name)] = origin
        for ref in _references(obj):
            self._add(ref, origin)


def _references(obj: Any) -> list[Any]:
    if isinstance(obj, FeatureView):
        return [obj.entity, obj.source]
    if isinstance(obj, OnDemandFeatureView):
        return [s.view if isinstance(s, FeatureSelection) else s for s in obj.sources]
    if isinstance(obj, FeatureService):
        out = []
        for item in obj.features:
            out.append(item.view if isinstance(item, FeatureSelection) else item)
        return out
    return []


_KINDS = (Entity, EventSource, FeatureView, OnDemandFeatureView, FeatureService)


def _module_name(path: Path) -> str:
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    return f"_featurestore_repo_{digest}_{stem}"


def _exec_file(path: Path) -> Any:
    name = _module_name(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise DefinitionError(f"{path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except DefinitionError as exc:
        sys.modules.pop(name, None)
        raise DefinitionError(f"{path}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - any error in user code
        sys.modules.pop(name, None)
        tb = traceback.extract_tb(exc.__traceback__)
        line = next((f" (line {f.lineno})" for f in reversed(tb) if Path(f.filename) == path), "")
        raise DefinitionError(f"{path}{line}: failed to import: {type(exc).__name__}: {exc}") from exc
    return module


def load_repo(path: str | Path) -> Repository:
    """Load the definitions of a repository file or folder (see the module docstring)."""
    root = Path(path).expanduser().resolve()
    if root.is_dir():
        files = sorted(p for p in root.glob("*.py") if not p.name.startswith(("_", ".")))
        folder = root
        if not files:
            raise DefinitionError(f"{root}: no .py files in the repository folder")
    elif root.is_file():
        files, folder = [root], root.parent
    else:
        raise DefinitionError(f"feature repository {root} does not exist")
    repo = Repository(path=root)
    added = str(folder) not in sys.path
    if added:
        sys.path.insert(0, str(folder))
    try:
        for file in files:
            module = _exec_file(file)
            for value in list(vars(module).values()):
                if isinstance(value, _KINDS):
                    repo._add(value, file)
    finally:
        if added:
            try:
                sys.path.remove(str(folder))
            except ValueError:
                pass
    return repo
