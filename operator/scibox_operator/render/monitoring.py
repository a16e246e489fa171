"""The Prometheus-Operator ServiceMonitor scraping vLLM's /metrics."""

from __future__ import annotations

from typing import Any

from scibox_operator.api.spec import VLLMDeployment

from .common import SERVER, metadata, selector_labels


def render_service_monitor(vd: VLLMDeployment) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": metadata(vd, vd.name, SERVER),
        "spec": {
            "selector": {"matchLabels": selector_labels(vd, SERVER)},
            "namespaceSelector": {"matchNames": [vd.namespace]},
            "endpoints": [
                {"port": "http", "path": "/metrics", "interval": vd.spec.monitoring.interval,
                 "honorLabels": False}
            ],
        },
    }
