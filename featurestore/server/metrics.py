"""Prometheus metrics of the feature server, on a registry of its own (``/metrics``).

* ``featurestore_server_requests_total{endpoint, service, code}``: requests answered, by HTTP status;
* ``featurestore_server_request_seconds{endpoint, service}``: time from the request's arrival to its
  answer (histogram, 0.25 ms to 10 s);
* ``featurestore_server_errors_total{endpoint, service, error}``: answers of 4xx and 5xx by error code;
* ``featurestore_server_rows_served_total{service}`` and ``featurestore_server_feature_values_served_total
  {service}``: entity rows, and (row, feature) values, of the ``/get-online-features`` answers.

``service`` is the feature service read, ``-`` where a request names no service (a feature list, the
other endpoints) and ``unknown`` for a name the repository does not have (so a client cannot grow the
label set).  With ``multiprocess_dir`` (several worker processes on one port, prometheus_client's
multiprocess mode), ``/metrics`` adds up every process's values.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "ServerMetrics"]

BUCKETS = (0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05,
           0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class ServerMetrics:
    """The server's metrics; ``observe`` records one answered request."""

    def __init__(self, services: set[str], multiprocess_dir: str | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess_dir = multiprocess_dir
        self.services = services
        self._series: dict[tuple, tuple] = {}
        self._served: dict[str, tuple] = {}
        self.requests = Counter("featurestore_server_requests", "Requests answered, by endpoint, service and status",
                                ["endpoint", "service", "code"], registry=self.registry)
        self.latency = Histogram("featurestore_server_request_seconds", "Seconds from a request's arrival to its "
                                 "answer", ["endpoint", "service"], buckets=BUCKETS, registry=self.registry)
        self.errors = Counter("featurestore_server_errors", "Answers of 4xx and 5xx, by error code",
                              ["endpoint", "service", "error"], registry=self.registry)
        self.rows = Counter("featurestore_server_rows_served", "Entity rows answered by /get-online-features",
                            ["service"], registry=self.registry)
        self.values = Counter("featurestore_server_feature_values_served", "(entity row, feature) values answered "
                              "by /get-online-features", ["service"], registry=self.registry)

    def service_label(self, name: object) -> str:
        if name is None:
            return "-"
        return name if name in self.services else "unknown"

    def observe(self, endpoint: str, service: str, status: int, seconds: float, error: str | None) -> None:
        key = (endpoint, service, status)
        series = self._series.get(key)
        if series is None:  # labels are few (endpoints x known services x statuses): looked up once each
            series = self._series[key] = (self.requests.labels(endpoint, service, str(status)),
                                          self.latency.labels(endpoint, service))
        series[0].inc()
        series[1].observe(seconds)
        if error is not None:
            self.errors.labels(endpoint, service, error).inc()

    def served(self, service: str, rows: int, features: int) -> None:
        series = self._served.get(service)
        if series is None:
            series = self._served[service] = (self.rows.labels(service), self.values.labels(service))
        series[0].inc(rows)
        series[1].inc(rows * features)

    def exposition(self) -> bytes:
        """The text format of every metric (of every worker process in multiprocess mode)."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
        return generate_latest(registry)
