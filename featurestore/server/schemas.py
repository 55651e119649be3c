"""The request and response shapes, as pydantic models for ``/openapi.json`` and ``/docs``.

The endpoints parse bodies themselves (``feast.py``, ``writes.py``: one orjson pass, errors naming
the field); these models describe the same shapes for readers and client generators."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = ["ErrorBody", "GetOnlineFeaturesRequest", "GetOnlineFeaturesResponse", "MaterializeRequest",
           "PushRequest", "PushResponse", "body_schema"]


class GetOnlineFeaturesRequest(BaseModel):
    """Feast's request, with ``request_data`` and ``at`` added."""

    feature_service: str | None = Field(None, description="a feature service: read its features",
                                        examples=["fraud_detection"])
    features: list[str] | None = Field(None, description="or these features, as 'view:feature'",
                                       examples=[["customer_stats:spend_1h"]])
    entities: dict[str, list[Any]] = Field(description="join key -> one value per entity row (request-data "
                                           "fields of on-demand views may stand here too, as Feast sends them)",
                                           examples=[{"customer_id": ["C00001", "C00002"]}])
    request_data: dict[str, list[Any]] | None = Field(None, description="request-data field -> one value per row",
                                                      examples=[{"current_amount": [250.0, 12.5]}])
    at: int | str | None = Field(None, description="evaluate as of this time: epoch ms or ISO-8601 (default now)")
    full_feature_names: bool = Field(False, description="name features 'view__feature'")


class Metadata(BaseModel):
    feature_names: list[str] = Field(description="the join keys, then the features in request order")


class FeatureVector(BaseModel):
    values: list[Any] = Field(description="one value per entity row")
    statuses: list[Literal["PRESENT", "NOT_FOUND", "OUTSIDE_MAX_AGE"]]
    event_timestamps: list[str] = Field(description="RFC 3339, UTC; 1970-01-01T00:00:00Z when there is none")


class GetOnlineFeaturesResponse(BaseModel):
    """Feast's response: one result per name of ``metadata.feature_names``, in that order."""

    metadata: Metadata
    results: list[FeatureVector]


class PushRequest(BaseModel):
    push_source_name: str | None = Field(None, description="the event source (Feast's name of the field)")
    source: str | None = Field(None, description="or the event source, by this name")
    df: dict[str, list[Any]] | None = Field(None, description="events as columns (Feast's shape)")
    rows: list[dict[str, Any]] | None = Field(None, description="or events as objects")
    to: Literal["online", "offline", "online_and_offline"] = "online"


class Refusal(BaseModel):
    row: Any
    reason: str
    detail: str


class PushResponse(BaseModel):
    rows: int
    online_records: int
    offline_rows: int
    skipped_existing: int
    refused: list[Refusal]


class MaterializeRequest(BaseModel):
    start_ts: int | str | None = Field(None, description="first event time: epoch ms or ISO-8601 (or 'start')")
    end_ts: int | str | None = Field(None, description="last event time (or 'end')")
    feature_views: list[str] | None = Field(None, description="only these views (or 'views'; default all applied)")


class ErrorDetail(BaseModel):
    code: str = Field(description="a stable word: malformed_body, unknown_name, missing_join_key, wrong_key_type, "
                                  "invalid_input, too_many_entities, body_too_large, unauthorized, read_only, "
                                  "worker_running, store_unavailable, not_found, internal ...")
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


def body_schema(model: type[BaseModel]) -> dict:
    """``openapi_extra`` of an endpoint whose JSON body has ``model``'s shape."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}
