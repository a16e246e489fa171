"""The Grafana dashboard for VLLMDeployments and the operator, generated as JSON.

    python -m tools.monitoring.dashboard            # rewrites charts/scibox-vllm-operator/files/dashboard.json
    python -m tools.monitoring.dashboard --check    # exit 1 if the committed file differs

The committed JSON is what ships (chart ConfigMap, manifests/); this module is its source, so
every panel is a PromQL expression written once, with one label selector for all vLLM panels.

Labels the expressions rely on (see monitoring/README.md):
* vLLM series (`vllm:` prefix, as vllm 0.32 exports them) carry `model_name` and `engine` from
  vLLM, and `namespace`, `service`, `pod` from the scrape: the ServiceMonitor the operator renders
  names the job after the Service, and the Service is named after the VLLMDeployment, so
  `service` identifies the VLLMDeployment.
* Operator series carry `vllmdeployment_namespace` / `vllmdeployment` where per-object.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_PATH = ROOT / "charts" / "scibox-vllm-operator" / "files" / "dashboard.json"

UID = "scibox-vllm"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# One VLLMDeployment = one (namespace, service); the model name rides along for the legend.
BY_DEPLOYMENT = "namespace, service, model_name"
LEGEND_DEPLOYMENT = "{{namespace}}/{{service}}"
VLLM = 'namespace=~"$namespace", service=~"$deployment", model_name=~"$model"'
OPERATOR_VD = 'vllmdeployment_namespace=~"$namespace", vllmdeployment=~"$deployment"'
RATE = "$__rate_interval"
QUANTILES = (0.5, 0.95, 0.99)


@dataclass
class Target:
    expr: str
    legend: str


@dataclass
class Panel:
    title: str
    description: str
    targets: list[Target]
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 8
    height: int = 8
    key: bool = False  # drawn by tools/render_dashboard.py
    options: dict[str, Any] = field(default_factory=dict)
    field_config: dict[str, Any] = field(default_factory=dict)


def _quantile_targets(histogram: str, selector: str = "", by: str = "", legend: str = "") -> list[Target]:
    """p50/p95/p99 of a histogram, aggregated over everything but `by` (and le)."""
    matchers = f"{{{selector}}}" if selector else ""
    group = f"{by}, le" if by else "le"
    return [Target(f"histogram_quantile({q}, sum by ({group}) (rate({histogram}_bucket{matchers}[{RATE}])))",
                   f"p{round(q * 100)} {legend}".strip()) for q in QUANTILES]


def vllm_panels() -> list[Panel]:
    def per_deployment(metric: str, agg: str = "sum") -> str:
        return f"{agg} by ({BY_DEPLOYMENT}) ({metric})"

    return [
        Panel("Request rate", "Finished requests per second, by finish reason (stop, length, abort, error).",
              [Target(f"sum by ({BY_DEPLOYMENT}, finished_reason) "
                      f"(rate(vllm:request_success_total{{{VLLM}}}[{RATE}]))",
                      f"{LEGEND_DEPLOYMENT} {{{{finished_reason}}}}")],
              unit="reqps", key=True),
        Panel("Time to first token", "p50/p95/p99 of the time from request arrival to the first output token.",
              _quantile_targets("vllm:time_to_first_token_seconds", VLLM, BY_DEPLOYMENT, LEGEND_DEPLOYMENT),
              unit="s", key=True),
        Panel("Inter-token latency", "p50/p95/p99 of the time between consecutive output tokens.",
              _quantile_targets("vllm:inter_token_latency_seconds", VLLM, BY_DEPLOYMENT, LEGEND_DEPLOYMENT),
              unit="s", key=True),
        Panel("End-to-end request latency", "p50/p95/p99 of the whole request, queueing included.",
              _quantile_targets("vllm:e2e_request_latency_seconds", VLLM, BY_DEPLOYMENT, LEGEND_DEPLOYMENT),
              unit="s", key=True),
        Panel("Generated tokens/s", "Output (generation) and input (prompt) tokens processed per second.",
              [Target(per_deployment(f"rate(vllm:generation_tokens_total{{{VLLM}}}[{RATE}])"),
                      f"generated {LEGEND_DEPLOYMENT}"),
               Target(per_deployment(f"rate(vllm:prompt_tokens_total{{{VLLM}}}[{RATE}])"),
                      f"prompt {LEGEND_DEPLOYMENT}")],
              unit="short", key=True),
        Panel("Running and waiting requests",
              "Requests in the engine's running batch and in its waiting queue (summed over replicas).",
              [Target(per_deployment(f"vllm:num_requests_running{{{VLLM}}}"), f"running {LEGEND_DEPLOYMENT}"),
               Target(per_deployment(f"vllm:num_requests_waiting{{{VLLM}}}"), f"waiting {LEGEND_DEPLOYMENT}")],
              key=True),
        Panel("KV-cache usage", "Fraction of the KV-cache blocks in use, per replica (1 = full: requests "
              "wait or are preempted).",
              [Target(f"max by ({BY_DEPLOYMENT}, pod) (vllm:kv_cache_usage_perc{{{VLLM}}})",
                      f"{LEGEND_DEPLOYMENT} {{{{pod}}}}")],
              unit="percentunit", key=True,
              field_config={"min": 0, "max": 1}),
        Panel("Prefix-cache hit rate", "Share of prompt tokens looked up in the prefix cache that were found "
              "there (hits / queries).",
              [Target(f"{per_deployment(f'rate(vllm:prefix_cache_hits_total{{{VLLM}}}[{RATE}])')} / "
                      f"{per_deployment(f'rate(vllm:prefix_cache_queries_total{{{VLLM}}}[{RATE}])')}",
                      LEGEND_DEPLOYMENT)],
              unit="percentunit", key=True, field_config={"min": 0, "max": 1}),
        Panel("Preemptions", "Requests preempted per second (the KV cache ran out; their work is redone).",
              [Target(per_deployment(f"rate(vllm:num_preemptions_total{{{VLLM}}}[{RATE}])"), LEGEND_DEPLOYMENT)],
              unit="short", key=True),
        Panel("Queue time", "p50/p95/p99 of the time requests wait before the engine schedules them.",
              _quantile_targets("vllm:request_queue_time_seconds", VLLM, BY_DEPLOYMENT, LEGEND_DEPLOYMENT),
              unit="s"),
        Panel("Tokens per request", "p50/p95 of prompt and generated tokens per finished request.",
              [Target(f"histogram_quantile({q}, sum by ({BY_DEPLOYMENT}, le) "
                      f"(rate(vllm:request_{kind}_tokens_bucket{{{VLLM}}}[{RATE}])))",
                      f"p{round(q * 100)} {kind} {LEGEND_DEPLOYMENT}")
               for kind in ("prompt", "generation") for q in (0.5, 0.95)]),
        Panel("Scraped replicas", "vLLM engines exporting metrics (one per replica and engine) in the last scrape.",
              [Target(f"count by ({BY_DEPLOYMENT}) (vllm:num_requests_running{{{VLLM}}})", LEGEND_DEPLOYMENT)]),
    ]


def gateway_panels() -> list[Panel]:
    """vllm-router's own series (a VLLMGateway's ServiceMonitor: `service` is the gateway). It has
    no model label: a worker is a server pod's URL, so a model's requests are its pods' workers."""
    gw = 'namespace=~"$namespace"'
    by_gw = "namespace, service"
    legend = "{{namespace}}/{{service}}"
    return [
        Panel("Gateway requests per worker", "Requests the router forwarded per second, per worker (a server "
              "pod: a model's requests are those of its pods).",
              [Target(f"sum by ({by_gw}, worker) (rate(vllm_router_processed_requests_total{{{gw}}}[{RATE}]))",
                      f"{legend} {{{{worker}}}}")], unit="reqps"),
        Panel("Gateway requests by route", "Requests the router received per second, by API route.",
              [Target(f"sum by ({by_gw}, route) (rate(vllm_router_requests_total{{{gw}}}[{RATE}]))",
                      f"{legend} {{{{route}}}}")], unit="reqps"),
        Panel("Gateway routing latency", "p50/p95/p99 of the router's request handling (routing and "
              "forwarding, the worker's answer included).",
              _quantile_targets("vllm_router_generate_duration_seconds", gw, by_gw, legend), unit="s"),
        Panel("Gateway worker health", "Workers the router considers healthy (1) or not (0), and how many it has.",
              [Target(f"min by ({by_gw}, worker) (vllm_router_worker_health{{{gw}}})", f"{legend} {{{{worker}}}}"),
               Target(f"max by ({by_gw}) (vllm_router_active_workers{{{gw}}})", f"active workers {legend}")]),
    ]


def operator_panels() -> list[Panel]:
    vd_legend = "{{vllmdeployment_namespace}}/{{vllmdeployment}}"
    by_vd = "vllmdeployment_namespace, vllmdeployment"
    return [
        Panel("VLLMDeployments by phase", "How many VLLMDeployments are in each status phase.",
              [Target("max by (phase) (scibox_operator_vllmdeployments) > 0", "{{phase}}")], key=True),
        Panel("Ready / desired replicas", "status.readyReplicas (answering requests) against spec.replicas.",
              [Target(f"max by ({by_vd}) (scibox_operator_vllmdeployment_ready_replicas{{{OPERATOR_VD}}})",
                      f"ready {vd_legend}"),
               Target(f"max by ({by_vd}) (scibox_operator_vllmdeployment_desired_replicas{{{OPERATOR_VD}}})",
                      f"desired {vd_legend}")]),
        Panel("Reconciles", "Reconcile passes per second, by result.",
              [Target(f"sum by (result) (rate(scibox_operator_reconciles_total[{RATE}]))", "{{result}}")],
              unit="ops", key=True),
        Panel("Reconcile duration", "p50/p95/p99 of one reconcile pass.",
              _quantile_targets("scibox_operator_reconcile_duration_seconds"), unit="s", key=True),
        Panel("Kubernetes API requests and errors", "Requests the operator sends, and those that failed, "
              "by verb and status code.",
              [Target(f"sum by (verb) (rate(scibox_operator_api_requests_total[{RATE}]))", "{{verb}}"),
               Target(f"sum by (verb, code) (rate(scibox_operator_api_errors_total[{RATE}]))",
                      "error {{verb}} {{code}}")],
              unit="reqps"),
        Panel("Server probes by result", "The operator's /health and /v1/models probes of vLLM replicas, "
              "by verdict.",
              [Target(f"sum by (reason) (rate(scibox_operator_probes_total[{RATE}]))", "{{reason}}")],
              unit="ops"),
        Panel("Probe latency", "p50/p95/p99 of one server probe.",
              _quantile_targets("scibox_operator_probe_duration_seconds"), unit="s"),
        Panel("Work queue depth", "VLLMDeployments waiting for a reconcile.",
              [Target("max(scibox_operator_queue_depth)", "queued")]),
        Panel("Model downloads", "Downloads finished (completed) and failed (gave up) over the last hour.",
              [Target("sum(increase(scibox_operator_model_download_duration_seconds_count[1h]))", "completed"),
               Target("sum(increase(scibox_operator_model_download_failures_total[1h]))", "failed")]),
        Panel("Model download duration", "p50/p95 of completed downloads over the last 6 hours.",
              [Target(f"histogram_quantile({q}, sum by (le) "
                      "(increase(scibox_operator_model_download_duration_seconds_bucket[6h])))",
                      f"p{round(q * 100)}") for q in (0.5, 0.95)],
              unit="s"),
        Panel("Model download throughput", "Bytes fetched by completed downloads, per second.",
              [Target(f"sum(rate(scibox_operator_model_download_bytes_total[{RATE}]))", "bytes/s")],
              unit="Bps"),
        Panel("Start-up stages (apply -> Ready)", "p50 and p95 over 6 hours of each stage of a rollout's start "
              "(status.startup): planning, download, podCreation, scheduling, containerStart, engineLoad "
              "(container -> /health; warm from the compile cache), firstCompletion, ready (apply -> Ready in total).",
              [Target(f"histogram_quantile({q}, sum by (stage, le) "
                      "(increase(scibox_operator_startup_stage_seconds_bucket[6h])))",
                      f"p{round(q * 100)} {{{{stage}}}}") for q in (0.5, 0.95)],
              unit="s", key=True),
        Panel("Download pod failures", "Failed pod attempts of download Jobs that still exist (the Job "
              "retries up to its backoff limit).",
              [Target("max by (vllmdeployment_namespace, download_job) "
                      "(scibox_operator_model_download_failed_pods{vllmdeployment_namespace=~\"$namespace\"})",
                      "{{vllmdeployment_namespace}}/{{download_job}}")]),
    ]


def _variable(name: str, label: str, query: str, label_name: str) -> dict[str, Any]:
    return {
        "name": name, "label": label, "type": "query", "datasource": DATASOURCE,
        "query": {"query": f"label_values({query}, {label_name})", "refId": f"var-{name}"},
        "definition": f"label_values({query}, {label_name})",
        "refresh": 2, "sort": 1, "multi": True, "includeAll": True, "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "options": [],
    }


def _row(title: str, y: int, panel_id: int) -> dict[str, Any]:
    return {"type": "row", "title": title, "id": panel_id, "collapsed": False, "panels": [],
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}}


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit, **panel.field_config}
    if panel.kind == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                              "spanNulls": False}
    return {
        "type": panel.kind, "title": panel.title, "description": panel.description, "id": panel_id,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": panel.options or {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                                     "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [{"datasource": DATASOURCE, "expr": t.expr, "legendFormat": t.legend,
                     "refId": chr(ord("A") + i), "range": True} for i, t in enumerate(panel.targets)],
    }


def key_panel_titles() -> list[str]:
    """The panels tools/render_dashboard.py draws, in dashboard order."""
    return [p.title for p in vllm_panels() + operator_panels() if p.key]


def build_dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    next_id, y = 1, 0
    for title, group in (("vLLM servers (per VLLMDeployment)", vllm_panels()), ("Operator", operator_panels()),
                         ("Gateways (vllm-router, per VLLMGateway)", gateway_panels())):
        panels.append(_row(title, y, next_id))
        next_id, y, x = next_id + 1, y + 1, 0
        for panel in group:
            if x + panel.width > 24:
                x, y = 0, y + panel.height
            panels.append(_panel_json(panel, next_id, x, y))
            next_id, x = next_id + 1, x + panel.width
        y += group[-1].height
    probe = 'vllm:num_requests_running'
    return {
        "uid": UID,
        "title": "SciBox vLLM",
        "description": "vLLM servers run by the SciBox operator (one series per VLLMDeployment) and the operator itself.",
        "tags": ["scibox", "vllm", "llm"],
        "editable": True, "graphTooltip": 1, "refresh": "30s", "schemaVersion": 39, "version": 1,
        "time": {"from": "now-1h", "to": "now"}, "timezone": "browser",
        "annotations": {"list": []}, "links": [],
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1, "options": []},
            _variable("namespace", "Namespace", probe, "namespace"),
            _variable("deployment", "VLLMDeployment", f'{probe}{{namespace=~"$namespace"}}', "service"),
            _variable("model", "Model", f'{probe}{{namespace=~"$namespace", service=~"$deployment"}}', "model_name"),
        ]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build_dashboard(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed dashboard is out of date")
    parser.add_argument("--output", type=Path, default=DASHBOARD_PATH)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run python -m tools.monitoring.dashboard", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
