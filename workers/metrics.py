"""Prometheus metrics and the container probes (/metrics, /healthz, /readyz)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class WorkerMetrics:
    """The worker's metrics on a registry of its own (several workers may share a process in tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter("featurestore_events_total", "Events applied to feature state", ["topic"], registry=r)
        self.dead_letters = Counter("featurestore_dead_letters_total", "Events sent to the dead-letter topic",
                                    ["reason"], registry=r)
        self.dead_letters_refused = Counter(
            "featurestore_dead_letters_refused_total", "Dead letters the dead-letter topic refused (kept in the "
            "offline store's rejects table with the error)", ["reason"], registry=r)
        self.dead_letters_truncated = Counter(
            "featurestore_dead_letters_truncated_total", "Dead letters sent with their value cut to the source's "
            "max_message_bytes (header truncated=true; the whole record is in the rejects table)", registry=r)
        self.isolations = Counter(
            "featurestore_batches_isolated_total", "Batches whose processing raised an unexpected error and were "
            "split to dead-letter the records that raise (reason processing_error)", ["error"], registry=r)
        self.topic_resets = Counter(
            "featurestore_topic_resets_total", "Assigned partitions whose broker no longer holds the last record this "
            "group applied (topic recreated, broker emptied)", ["topic", "partition"], registry=r)
        self.batch_seconds = Histogram("featurestore_batch_seconds", "Time to process and commit one micro-batch",
                                       registry=r, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.lag = Gauge("featurestore_consumer_lag", "End offset minus next offset to consume",
                         ["topic", "partition"], registry=r)
        self.freshness = Gauge("featurestore_freshness_seconds", "Now minus the newest event time applied, per view",
                               ["view"], registry=r)
        self.retries = Counter("featurestore_retries_total", "Batch attempts that failed and were retried",
                               ["error"], registry=r)
        self.fenced = Counter("featurestore_fenced_commits_total",
                              "Commits refused because another worker advanced the offsets", registry=r)
        self.state_conflicts = Counter("featurestore_state_conflicts_total",
                                       "Commits refused because another writer changed a cached state since it was "
                                       "loaded (the batch is applied again on the stored states)", registry=r)
        self.spread = Counter("featurestore_entities_on_new_partitions_total",
                              "Entities whose events came from a Kafka partition other than the one(s) their "
                              "state held events of (events not keyed by the entity key, or partitions added)",
                              ["source"], registry=r)
        self.from_log = Counter("featurestore_states_from_event_log_total",
                                "Entities absent from the online store (hash expired or deleted) whose states were "
                                "rebuilt from the event log, per source (a retried batch counts again)", ["source"],
                                registry=r)
        self.ready = False
        self.alive = True


class ProbeServer:
    """A tiny HTTP server in a daemon thread, on the loopback address unless ``host`` says otherwise
    (``"0.0.0.0"``: every interface, for a scraper or a probe from outside the host or container)."""

    def __init__(self, metrics: WorkerMetrics, host: str = "127.0.0.1", port: int = 9108):
        metrics_ref = metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                if self.path.startswith("/metrics"):
                    body, ctype, code = generate_latest(metrics_ref.registry), CONTENT_TYPE_LATEST, 200
                elif self.path.startswith("/healthz"):
                    ok = metrics_ref.alive
                    body, ctype, code = (b"ok" if ok else b"stopping"), "text/plain", 200 if ok else 503
                elif self.path.startswith("/readyz"):
                    ok = metrics_ref.ready
                    body, ctype, code = (b"ready" if ok else b"not ready"), "text/plain", 200 if ok else 503
                else:
                    body, ctype, code = b"not found", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # keep probes out of the logs
                return

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.host, self.port = self.server.server_address[:2]
        self.thread = threading.Thread(target=self.server.serve_forever, name="probes", daemon=True)

    def start(self) -> "ProbeServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
