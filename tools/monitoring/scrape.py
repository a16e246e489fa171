"""monitoring/prometheus.yml, pointed at targets without Kubernetes service discovery.

`with_static_targets` keeps the project's relabelling and replaces each job's
kubernetes_sd_configs by static targets that carry the `__meta_kubernetes_*` labels endpoint
discovery would have attached. Prometheus then applies the real relabel rules, so what a test
(or a laptop Prometheus) scrapes is labelled exactly as in a cluster.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROJECT_CONFIG = ROOT / "monitoring" / "prometheus.yml"
ALERTS = ROOT / "charts" / "scibox-vllm-operator" / "files" / "alerts.yaml"
VLLM_JOB = "scibox-vllm"
OPERATOR_JOB = "scibox-operator"

_INVALID_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")


def meta_label_name(kubernetes_label: str) -> str:
    """Prometheus's name for a Service label in endpoint discovery ('app.kubernetes.io/name' ->
    '__meta_kubernetes_service_label_app_kubernetes_io_name')."""
    return "__meta_kubernetes_service_label_" + _INVALID_LABEL_CHARS.sub("_", kubernetes_label)


@dataclass(frozen=True)
class EndpointTarget:
    """One endpoint as Kubernetes endpoint discovery would report it."""

    address: str  # host:port
    namespace: str
    service: str
    pod: str
    port_name: str
    container: str = ""
    service_labels: Mapping[str, str] = field(default_factory=dict)

    def meta_labels(self) -> dict[str, str]:
        labels = {
            "__meta_kubernetes_namespace": self.namespace,
            "__meta_kubernetes_service_name": self.service,
            "__meta_kubernetes_pod_name": self.pod,
            "__meta_kubernetes_pod_container_name": self.container,
            "__meta_kubernetes_endpoint_port_name": self.port_name,
        }
        labels.update({meta_label_name(k): v for k, v in sorted(self.service_labels.items())})
        return labels


def vllm_target(address: str, *, namespace: str, vllmdeployment: str, pod: str) -> EndpointTarget:
    """The endpoint of a vLLM server Service as the operator renders it (render/service.py)."""
    from scibox_operator.render.common import COMPONENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL, SERVER

    return EndpointTarget(address, namespace=namespace, service=vllmdeployment, pod=pod, port_name="http",
                          container="vllm", service_labels={MANAGED_BY_LABEL: MANAGED_BY, COMPONENT_LABEL: SERVER,
                                                            "app.kubernetes.io/instance": vllmdeployment})


def operator_target(address: str, *, namespace: str, service: str = "scibox-vllm-operator-metrics",
                    pod: str = "scibox-vllm-operator-0") -> EndpointTarget:
    """The endpoint of the chart's operator metrics Service (templates/service.yaml)."""
    return EndpointTarget(address, namespace=namespace, service=service, pod=pod, port_name="metrics",
                          container="operator", service_labels={
                              "app.kubernetes.io/name": "scibox-vllm-operator",
                              "app.kubernetes.io/component": "operator",
                              "app.kubernetes.io/part-of": "scibox"})


def load_project_config(path: Path = PROJECT_CONFIG) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def with_static_targets(config: Mapping[str, Any], targets: Mapping[str, Iterable[EndpointTarget]], *,
                        scrape_interval: str | None = None, rule_files: Iterable[str | Path] | None = None,
                        ) -> dict[str, Any]:
    """A copy of `config` whose jobs scrape `targets` ({job_name: endpoints}) instead of
    discovering them. Jobs without targets are kept with none; unknown job names are an error."""
    out = copy.deepcopy(dict(config))
    jobs = {job["job_name"]: job for job in out.get("scrape_configs") or []}
    unknown = sorted(set(targets) - set(jobs))
    if unknown:
        raise ValueError(f"no scrape job named {unknown} in the config (jobs: {sorted(jobs)})")
    for name, job in jobs.items():
        job.pop("kubernetes_sd_configs", None)
        job["static_configs"] = [{"targets": [t.address], "labels": t.meta_labels()} for t in targets.get(name, ())]
        if scrape_interval:
            job["scrape_interval"] = scrape_interval
    if scrape_interval:
        out.setdefault("global", {}).update(scrape_interval=scrape_interval, evaluation_interval=scrape_interval)
    if rule_files is not None:
        out["rule_files"] = [str(p) for p in rule_files]
    return out
