"""Issue 9's acceptance: a real Prometheus, configured with the project's scrape config, scrapes a
real vLLM server and the real operator while requests flow; every dashboard panel and every
alert expression is evaluated through Prometheus's HTTP API, and the key panels are drawn.

The vLLM target is labelled as the endpoint of a VLLMDeployment created in the local cluster
(same name, served model name "tiny"), so the dashboard's variables resolve as in production.
The PNG lands in out/dashboard.png (gitignored) for a person to look at.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.fixtures.prometheus import PrometheusError, PrometheusServer
from tools.monitoring.dashboard import key_panel_titles
from tools.monitoring.queries import (
    alert_rules,
    finite_values,
    load_alerts,
    load_dashboard,
    panel_queries,
    substitute,
    variable_queries,
)
from tools.monitoring.scrape import (
    ALERTS,
    OPERATOR_JOB,
    VLLM_JOB,
    load_project_config,
    operator_target,
    vllm_target,
    with_static_targets,
)

from .load import send_completions

pytestmark = [pytest.mark.prometheus, pytest.mark.vllm, pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PNG = ROOT / "out" / "dashboard.png"
VD_NAME = "tiny-llama"
OPERATOR_NAMESPACE = "scibox-system"
OPERATOR_SERVICE = "scibox-vllm-operator-metrics"
# Concurrency ramp: the panels show the load rising in steps.
RAMP = ((2, 60), (4, 120), (8, 240))
RATE_INTERVAL = "1m"


@dataclass
class Scraped:
    prom: PrometheusServer
    namespace: str
    variables: dict[str, str]
    requests_sent: int
    load_started: float
    load_ended: float


def wait_until(predicate, *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except PrometheusError as exc:  # a query error is a test failure, not something to wait out
            raise AssertionError(str(exc)) from exc
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def total(prom: PrometheusServer, expr: str) -> float:
    return sum(finite_values(prom.query(expr)))


@pytest.fixture(scope="module")
def scraped(vllm_server, operator, cluster, prometheus_factory) -> Scraped:
    namespace = f"t-monitoring-{uuid.uuid4().hex[:6]}"
    config = with_static_targets(load_project_config(), {
        VLLM_JOB: [vllm_target(f"{vllm_server.host}:{vllm_server.port}", namespace=namespace,
                               vllmdeployment=VD_NAME, pod=f"{VD_NAME}-0")],
        OPERATOR_JOB: [operator_target(f"127.0.0.1:{operator.metrics_port}", namespace=OPERATOR_NAMESPACE,
                                       service=OPERATOR_SERVICE)],
    }, scrape_interval="1s", rule_files=[ALERTS])
    prom = prometheus_factory("monitoring", config)
    prom.wait_for_targets_up({VD_NAME, OPERATOR_SERVICE})

    # A VLLMDeployment for the operator to reconcile while Prometheus watches, named like the
    # target the real vLLM server stands in for; rescaled at each load step so reconciles go on.
    cluster.kubectl("create", "namespace", namespace)
    vd = {"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment", "metadata": {"name": VD_NAME},
          "spec": {"model": {"name": "scibox/tiny-llama", "servedModelName": vllm_server.served_model_name},
                   "resources": {"gpus": 1}, "cache": {"size": "1Gi"}}}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(vd))

    selector = f'{{namespace="{namespace}", service="{VD_NAME}"}}'
    before = total(prom, f"sum(vllm:request_success_total{selector})")
    started = time.time()
    sent = 0
    for step, (concurrency, count) in enumerate(RAMP):
        cluster.kubectl("patch", "vllmdeployment", VD_NAME, "-n", namespace, "--type=merge",
                        "-p", json.dumps({"spec": {"replicas": 1 + step % 2}}))
        result = send_completions(vllm_server.base_url, vllm_server.served_model_name, count=count,
                                  concurrency=concurrency)
        assert result.succeeded == count
        sent += count
        time.sleep(2)  # a couple of scrapes per step
    ended = time.time()
    # Done when Prometheus has scraped the last request and the operator has reconciled ours.
    wait_until(lambda: total(prom, f"sum(vllm:request_success_total{selector})") >= before + sent,
               timeout=60, what="Prometheus to scrape every finished request")
    wait_until(lambda: total(prom, 'sum(scibox_operator_reconciles_total)') > 0,
               timeout=90, what="the operator's reconciles in Prometheus")
    variables = {"namespace": namespace, "deployment": VD_NAME, "model": vllm_server.served_model_name,
                 "__rate_interval": RATE_INTERVAL, "__interval": "1s", "datasource": "prometheus"}
    yield Scraped(prom, namespace, variables, sent, started, ended)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_targets_carry_the_labels_a_service_monitor_gives(scraped):
    up = {s["metric"]["job"]: s["metric"] for s in scraped.prom.query("up == 1")}
    assert up[VD_NAME] | {"instance": ""} == {
        "__name__": "up", "job": VD_NAME, "namespace": scraped.namespace, "service": VD_NAME,
        "pod": f"{VD_NAME}-0", "container": "vllm", "endpoint": "http", "instance": ""}
    assert up[OPERATOR_SERVICE]["namespace"] == OPERATOR_NAMESPACE
    assert up[OPERATOR_SERVICE]["endpoint"] == "metrics"


def test_dashboard_variables_resolve_to_the_vllmdeployment(scraped):
    found = {}
    for name, (selector, label) in variable_queries(load_dashboard()).items():
        expr = f"group by ({label}) ({substitute(selector, scraped.variables)})"
        found[name] = {s["metric"].get(label) for s in scraped.prom.query(expr)}
    assert scraped.namespace in found["namespace"]
    assert found["deployment"] == {VD_NAME}
    assert found["model"] == {scraped.variables["model"]}


@pytest.mark.parametrize("selection", ["one VLLMDeployment", "All"])
def test_every_panel_expression_evaluates_and_every_vllm_panel_has_data(scraped, selection):
    variables = dict(scraped.variables)
    if selection == "All":
        variables.update(namespace=".*", deployment=".*", model=".*")
    errors, empty = [], []
    queries = panel_queries(load_dashboard())
    for query in queries:
        expr = substitute(query.expr, variables)
        try:
            result = scraped.prom.query(expr)
        except PrometheusError as exc:
            errors.append(f"{query.panel}/{query.ref_id}: {exc}")
            continue
        if "vllm:" in query.expr and not result:
            empty.append(f"{query.panel}/{query.ref_id}: {expr}")
    assert len(queries) >= 40
    assert not errors, "\n".join(errors)
    assert not empty, "vLLM panels without data:\n" + "\n".join(empty)


def panel_values(scraped: Scraped, panel: str) -> dict[str, list[float]]:
    """refId -> finite values of one panel's queries, for the selected VLLMDeployment."""
    out = {}
    for query in panel_queries(load_dashboard()):
        if query.panel == panel:
            out[query.ref_id] = finite_values(scraped.prom.query(substitute(query.expr, scraped.variables)))
    return out


def test_vllm_panels_show_the_requests_that_were_sent(scraped):
    rate = panel_values(scraped, "Request rate")["A"]
    assert sum(rate) > 0, "finished requests per second"
    tokens = panel_values(scraped, "Generated tokens/s")
    assert tokens["A"] and tokens["A"][0] > 0 and tokens["B"][0] > 0, "generated and prompt tokens/s"
    for panel in ("Time to first token", "Inter-token latency", "End-to-end request latency"):
        p50, p95, p99 = (panel_values(scraped, panel)[ref] for ref in "ABC")
        assert len(p50) == len(p95) == len(p99) == 1, panel
        assert 0 < p50[0] <= p95[0] <= p99[0], (panel, p50, p95, p99)
    hit_rate = panel_values(scraped, "Prefix-cache hit rate")["A"]
    assert hit_rate and 0 < hit_rate[0] <= 1, "repeated prompts share a cached 128-token block"
    kv = panel_values(scraped, "KV-cache usage")["A"]
    assert kv and all(0 <= v <= 1 for v in kv)


def test_operator_panels_show_the_operator_at_work(scraped):
    reconciles = panel_values(scraped, "Reconciles")["A"]
    assert reconciles is not None and scraped.prom.query('sum by (result) (scibox_operator_reconciles_total)')
    api = scraped.prom.query("sum(scibox_operator_api_requests_total)")
    assert finite_values(api) and finite_values(api)[0] > 0


def test_operator_exports_the_state_of_the_vllmdeployment(scraped):
    selector = f'{{vllmdeployment_namespace="{scraped.namespace}", vllmdeployment="{VD_NAME}"}}'
    desired = wait_until(lambda: finite_values(scraped.prom.query(
        f"scibox_operator_vllmdeployment_desired_replicas{selector}")), timeout=30, what="desired replicas")
    assert desired == [1.0]
    phases = wait_until(lambda: scraped.prom.query(f"scibox_operator_vllmdeployment_phase{selector} == 1"),
                        timeout=30, what="the phase series")
    assert len(phases) == 1
    by_phase = finite_values(scraped.prom.query("sum(scibox_operator_vllmdeployments)"))
    assert by_phase and by_phase[0] >= 1


def test_every_alert_expression_evaluates(scraped):
    errors = []
    for rule in alert_rules(load_alerts()):
        try:
            scraped.prom.query(rule.expr)
        except PrometheusError as exc:
            errors.append(f"{rule.name}: {exc}")
    assert not errors, "\n".join(errors)
    # The operator is scraped, so the alert for its absence has nothing to say.
    absent = next(r for r in alert_rules(load_alerts()) if r.name == "SciBoxOperatorAbsent")
    assert scraped.prom.query(absent.expr) == []


def test_prometheus_loaded_and_evaluates_every_alert_rule(scraped):
    names = {r.name for r in alert_rules(load_alerts())}

    def evaluated():
        rules = [r for g in scraped.prom.rules() for r in g["rules"]]
        done = [r for r in rules if r.get("lastEvaluation", "").startswith(("1", "2")) and
                not r["lastEvaluation"].startswith("0001")]
        return rules if len(done) == len(rules) else None

    rules = wait_until(evaluated, timeout=30, what="every rule evaluated once")
    assert {r["name"] for r in rules} == names
    unhealthy = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not unhealthy
    # The server keeps up with the load, so its alerts are not even pending. (The operator's
    # alerts about the test VLLMDeployment may be: in the simulated cluster no pod answers probes.)
    server_alerts = {"VLLMWaitingQueueGrowing", "VLLMKVCacheNearlyFull"}
    active = [(r["name"], a["state"]) for r in rules if r["name"] in server_alerts for a in r.get("alerts", [])]
    assert not active


def test_render_dashboard_png(scraped):
    minutes = max(1.0, (time.time() - scraped.load_started) / 60 + 0.5)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "render_dashboard.py"), "--prometheus", scraped.prom.url,
         "--out", str(PNG), "--minutes", f"{minutes:.2f}", "--step", "1", "--rate-interval", "10s",
         "--var", f"namespace={scraped.namespace}", "--var", f"deployment={VD_NAME}"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert PNG.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and PNG.stat().st_size > 50_000
    assert set(summary["panels"]) == set(key_panel_titles())
    for title, queries in summary["panels"].items():
        if any("vllm:" in q["expr"] for q in queries):
            assert all(q["series"] > 0 for q in queries), title
    rate = summary["panels"]["Request rate"]
    assert any(math.isfinite(q.get("last", math.nan)) for q in rate)
