"""The Service in front of the vLLM server pods (OpenAI API and /metrics on one port)."""

from __future__ import annotations

from typing import Any

from scibox_operator.api.names import LEADER_INDEX_LABEL
from scibox_operator.api.spec import VLLMDeployment

from .common import SERVER, metadata, selector_labels


def render_service(vd: VLLMDeployment, *, multi_node: bool = False) -> dict[str, Any]:
    """Multi-node groups serve the API from their leader only (worker index 0)."""
    svc = vd.spec.service
    selector = selector_labels(vd, SERVER)
    if multi_node:
        selector[LEADER_INDEX_LABEL] = "0"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(vd, vd.name, SERVER),
        "spec": {
            "type": svc.type,
            "selector": selector,
            "ports": [{"name": "http", "port": svc.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def endpoint_url(vd: VLLMDeployment) -> str:
    return f"http://{vd.name}.{vd.namespace}.svc:{vd.spec.service.port}/v1"
