"""The one typed model of a VLLMGateway (one OpenAI endpoint for many VLLMDeployments), parsed
once at the edge like api/spec.py does for VLLMDeployments.

The CRD (crds/scibox.io_vllmgateways.yaml) already refuses an unknown policy, a bad service
type or port; this model repeats its defaults so that every caller sees the same values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from scibox_operator.api.names import API_VERSION, GATEWAY_KIND, OPERATOR_LABEL_PREFIXES
from scibox_operator.api.spec import Auth, InvalidSpec, Monitoring, ServiceSpec, Toleration, _describe, _Model

Policy = Literal["cache_aware", "power_of_two", "consistent_hash", "round_robin", "random"]

_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class GatewaySelector(_Model):
    match_labels: dict[str, str] = {}

    @field_validator("match_labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        bad = sorted(k for k, val in v.items() if len(k) > 253 or not _LABEL_KEY.match(k)
                     or not _LABEL_VALUE.match(val))
        if bad:
            raise ValueError(f"matchLabels must be Kubernetes label keys and values: {bad[:3]}")
        ours = sorted(k for k in v if k.startswith(OPERATOR_LABEL_PREFIXES))
        if ours:
            raise ValueError(f"matchLabels keys under {', '.join(OPERATOR_LABEL_PREFIXES)} are the operator's own and "
                             f"are not copied onto server pods; use labels of your own: {ours[:3]}")
        return dict(sorted(v.items()))


class GatewayResources(_Model):
    cpu: str = Field(default="500m", pattern=r"^[0-9]+(\.[0-9]+)?m?$")
    memory: str = Field(default="512Mi", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti|K|M|G|T)?$")


class VLLMGatewaySpec(_Model):
    selector: GatewaySelector = GatewaySelector()
    policy: Policy = "cache_aware"
    replicas: int = Field(default=1, ge=0, le=16)
    image: str | None = Field(default=None, min_length=1, max_length=512)
    # the same shapes as a VLLMDeployment's service, auth and monitoring blocks
    service: ServiceSpec = ServiceSpec()
    auth: Auth = Auth()
    monitoring: Monitoring = Monitoring()
    resources: GatewayResources = GatewayResources()
    node_selector: dict[str, str] = {}
    tolerations: tuple[Toleration, ...] = ()

    @field_validator("node_selector")
    @classmethod
    def _node_labels(cls, v: dict[str, str]) -> dict[str, str]:
        bad = sorted(k for k in v if len(k) > 253 or not _LABEL_KEY.match(k))
        if bad:
            raise ValueError(f"nodeSelector keys must be Kubernetes label keys ([prefix/]name): {bad[:3]}")
        return dict(sorted(v.items()))


@dataclass(frozen=True)
class VLLMGateway:
    name: str
    namespace: str
    uid: str
    generation: int
    spec: VLLMGatewaySpec

    @property
    def owner_reference(self) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": GATEWAY_KIND, "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}


def parse_gateway(body: Mapping[str, Any]) -> VLLMGateway:
    """Parse a VLLMGateway object (as read from the API) or raise InvalidSpec."""
    meta = body.get("metadata") or {}
    name = meta.get("name", "")
    # The router's Service and Deployment take this name (plus a suffix): a DNS-1035 label.
    if name and (len(name) > 56 or not _NAME.fullmatch(name)):
        raise InvalidSpec(f"metadata.name {name!r} cannot name the gateway's Service: use at most 56 lower case "
                          "letters, digits and '-', starting with a letter and ending with a letter or digit")
    try:
        spec = VLLMGatewaySpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        raise InvalidSpec(_describe(exc)) from None
    return VLLMGateway(name=name, namespace=meta.get("namespace", ""), uid=meta.get("uid", ""),
                       generation=int(meta.get("generation") or 0), spec=spec)
