"""The Service in front of the vLLM server pods (OpenAI API and /metrics on one port)."""

from __future__ import annotations

from typing import Any

from ..spec import VLLMDeployment
from .common import SERVER, metadata, selector_labels


def render_service(vd: VLLMDeployment) -> dict[str, Any]:
    svc = vd.spec.service
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(vd, vd.name, SERVER),
        "spec": {
            "type": svc.type,
            "selector": selector_labels(vd, SERVER),
            "ports": [{"name": "http", "port": svc.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def endpoint_url(vd: VLLMDeployment) -> str:
    return f"http://{vd.name}.{vd.namespace}.svc:{vd.spec.service.port}/v1"
