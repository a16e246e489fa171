"""The operator's own Prometheus metrics (served on the metrics port by main.py)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("scibox_operator_reconciles_total", "Reconcile passes by result", ["result"])
RECONCILE_SECONDS = Histogram(
    "scibox_operator_reconcile_duration_seconds", "Duration of one reconcile pass",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
APPLIES = Counter("scibox_operator_applies_total", "Server-side applies sent, by child kind", ["kind"])
API_REQUESTS = Counter("scibox_operator_api_requests_total", "Kubernetes API requests sent", ["verb", "code"])
API_ERRORS = Counter("scibox_operator_api_errors_total", "Kubernetes API requests that failed", ["verb", "code"])
PHASE_TRANSITIONS = Counter("scibox_operator_phase_transitions_total", "Status phase changes written", ["phase"])
DEPLOYMENTS_BY_PHASE = Gauge("scibox_operator_vllmdeployments", "VLLMDeployments by phase", ["phase"])
QUEUE_DEPTH = Gauge("scibox_operator_queue_depth", "Keys waiting for a reconcile")
PROBES = Counter("scibox_operator_probes_total", "Server probes by result reason", ["reason"])
PROBE_SECONDS = Histogram(
    "scibox_operator_probe_duration_seconds", "Duration of one server probe",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
DOWNLOAD_SECONDS = Histogram(
    "scibox_operator_model_download_duration_seconds", "Duration of completed model downloads",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600, 7200),
)
DOWNLOAD_BYTES = Counter("scibox_operator_model_download_bytes_total", "Bytes of completed model downloads")
DOWNLOAD_FAILURES = Counter("scibox_operator_model_download_failures_total", "Failed model download Jobs")


def record_request(method: str, path: str, status: int) -> None:
    API_REQUESTS.labels(verb=method, code=str(status)).inc()
    if status >= 400:
        API_ERRORS.labels(verb=method, code=str(status)).inc()
