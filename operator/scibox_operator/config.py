"""Every SCIBOX_* setting of the operator process, read once at start-up (Settings.from_env())."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from scibox_operator import release
from scibox_operator.planning.serving_plan import DEFAULT_VLLM_IMAGE

DEFAULT_HUB_ENDPOINT = "https://huggingface.co"


def _flag(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Settings:
    workers: int = 16
    resync_seconds: float = 600.0
    vllm_image: str = DEFAULT_VLLM_IMAGE
    hub_endpoint: str = DEFAULT_HUB_ENDPOINT
    forbid_trust_remote_code: bool = False
    max_backoff: float = 300.0
    # API keys and hub tokens are re-read this often, so a rotated Secret is picked up.
    secret_ttl: float = 60.0
    # The VLLMGateway router image (images/router): SCIBOX_ROUTER_IMAGE, else the release's.
    router_image: str = release.ROUTER_IMAGE
    # Autoscaling with KEDA: the Prometheus its triggers query, and how often (seconds).
    autoscaling_prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    autoscaling_polling_seconds: int = 15
    # May a VLLMDeployment's autoscaling.target.query (raw PromQL) reach that Prometheus? Off by
    # default: KEDA would run any tenant's query against the cluster's metrics, and the HPA's
    # status in the tenant's namespace would show the answer.
    autoscaling_allow_query: bool = False
    # At most this many VLLMDeployments roll at a time when the operator's own rendering (not
    # their spec) changed their pod template, e.g. after an upgrade with a new default image.
    max_operator_rollouts: int = 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            workers=int(env.get("SCIBOX_WORKERS", "16")),
            resync_seconds=float(env.get("SCIBOX_RESYNC_SECONDS", "600")),
            vllm_image=env.get("SCIBOX_VLLM_IMAGE") or DEFAULT_VLLM_IMAGE,
            hub_endpoint=env.get("SCIBOX_HUB_ENDPOINT", DEFAULT_HUB_ENDPOINT),
            forbid_trust_remote_code=_flag(env.get("SCIBOX_FORBID_TRUST_REMOTE_CODE", "")),
            secret_ttl=float(env.get("SCIBOX_SECRET_TTL_SECONDS", "60")),
            router_image=env.get("SCIBOX_ROUTER_IMAGE") or release.ROUTER_IMAGE,
            autoscaling_prometheus_url=env.get("SCIBOX_AUTOSCALING_PROMETHEUS_URL")
            or "http://prometheus-operated.monitoring.svc:9090",
            autoscaling_polling_seconds=int(env.get("SCIBOX_AUTOSCALING_POLLING_SECONDS", "15")),
            autoscaling_allow_query=_flag(env.get("SCIBOX_AUTOSCALING_ALLOW_QUERY", "")),
            max_operator_rollouts=max(1, int(env.get("SCIBOX_MAX_OPERATOR_ROLLOUTS", "1"))),
        )
