"""Pure parts of the observability work: dashboard source, queries, scrape config, alert files.

No server here; the real Prometheus, vLLM and operator are in test_prometheus.py. promtool (from
Debian's prometheus package) checks the rule and config files, and runs the alert unit tests.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tools.monitoring import dashboard as dashboard_source
from tools.monitoring.queries import (
    UnresolvedVariable,
    alert_rules,
    format_legend,
    load_alerts,
    load_dashboard,
    panel_queries,
    regex_value,
    substitute,
    variable_queries,
)
from tools.monitoring.scrape import (
    ALERTS,
    OPERATOR_JOB,
    VLLM_JOB,
    load_project_config,
    meta_label_name,
    operator_target,
    vllm_target,
    with_static_targets,
)

ROOT = Path(__file__).resolve().parents[2]
VLLM_NAMES = ROOT / "tests" / "fixtures" / "vllm_metric_names.txt"
ALL = {"namespace": ".*", "deployment": ".*", "model": ".*", "__rate_interval": "1m"}


def vllm_families() -> dict[str, str]:
    families = {}
    for line in VLLM_NAMES.read_text().splitlines():
        if line and not line.startswith("#"):
            name, kind = line.split()
            families[name] = kind
    return families


def names_in(exprs: list[str], prefix: str) -> set[str]:
    return {m for e in exprs for m in re.findall(rf"\b{re.escape(prefix)}[A-Za-z0-9_:]+", e)}


def series_family(name: str, families: dict[str, str]) -> str | None:
    """The metric family a series name belongs to (histograms export _bucket/_sum/_count)."""
    if name in families:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and families.get(base) == "histogram":
            return base
    return None


# --- the dashboard --------------------------------------------------------------------------


def test_committed_dashboard_is_generated_from_its_source():
    assert dashboard_source.main(["--check"]) == 0, "run: python -m tools.monitoring.dashboard"


def test_dashboard_json_is_deterministic():
    assert dashboard_source.render() == dashboard_source.render()


def test_panels_have_unique_ids_and_fit_the_grid():
    board = load_dashboard()
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            refs = [t["refId"] for t in panel["targets"]]
            assert refs and len(refs) == len(set(refs)), panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}"


def test_dashboard_covers_what_the_issue_asks_for():
    titles = {q.panel for q in panel_queries(load_dashboard())}
    for wanted in ("Request rate", "Time to first token", "Inter-token latency", "End-to-end request latency",
                   "Generated tokens/s", "Running and waiting requests", "KV-cache usage", "Prefix-cache hit rate",
                   "Preemptions", "VLLMDeployments by phase", "Reconciles", "Reconcile duration",
                   "Kubernetes API requests and errors", "Server probes by result", "Probe latency",
                   "Model download duration", "Model download throughput"):
        assert wanted in titles
    latency = [q for q in panel_queries(load_dashboard()) if q.panel == "End-to-end request latency"]
    assert [re.match(r"histogram_quantile\(([\d.]+)", q.expr).group(1) for q in latency] == ["0.5", "0.95", "0.99"]


def test_every_vllm_metric_the_dashboard_and_alerts_use_is_one_vllm_exports():
    families = vllm_families()
    exprs = [q.expr for q in panel_queries(load_dashboard())] + [r.expr for r in alert_rules(load_alerts())]
    exprs += [sel for sel, _ in variable_queries(load_dashboard()).values()]
    used = names_in(exprs, "vllm:")
    assert used, "the dashboard queries vLLM"
    unknown = sorted(n for n in used if series_family(n, families) is None)
    assert not unknown, f"not exported by vllm 0.32 (tests/fixtures/vllm_metric_names.txt): {unknown}"


def test_every_operator_metric_used_is_defined_by_the_operator():
    from prometheus_client import CollectorRegistry

    from scibox_operator import metrics

    registry = CollectorRegistry()
    metrics.register_state_collector(_Store(), _Queue(), registry=registry)
    families = {fam.name: fam.type for fam in metrics.REGISTRY.collect() if fam.name.startswith("scibox_")}
    families.update({fam.name: fam.type for fam in registry.collect()})
    # prometheus_client strips _total from counter family names; series carry it.
    families.update({f"{n}_total": t for n, t in list(families.items()) if t == "counter"})
    exprs = [q.expr for q in panel_queries(load_dashboard())] + [r.expr for r in alert_rules(load_alerts())]
    used = names_in(exprs, "scibox_operator_")
    assert {"scibox_operator_reconciles_total", "scibox_operator_vllmdeployment_ready_replicas"} <= used
    unknown = sorted(n for n in used if series_family(n, families) is None)
    assert not unknown, f"not defined in scibox_operator/metrics.py: {unknown}"


def test_vllm_panels_select_by_the_three_dashboard_variables():
    for query in panel_queries(load_dashboard()):
        if "vllm:" in query.expr:
            for var in ("$namespace", "$deployment", "$model"):
                assert var in query.expr, (query.panel, var)


def test_variables_chain_namespace_then_deployment_then_model():
    variables = variable_queries(load_dashboard())
    assert variables["namespace"] == ("vllm:num_requests_running", "namespace")
    assert variables["deployment"][1] == "service" and "$namespace" in variables["deployment"][0]
    assert variables["model"][1] == "model_name" and "$deployment" in variables["model"][0]


# --- query helpers --------------------------------------------------------------------------


def test_substitute_fills_both_variable_forms_and_leaves_promql_backrefs():
    expr = 'label_replace(rate(x{ns=~"$namespace", d=~"${deployment}"}[$__rate_interval]), "a", "$1", "b", "(.*)")'
    out = substitute(expr, {**ALL, "namespace": "ml"})
    assert out == 'label_replace(rate(x{ns=~"ml", d=~".*"}[1m]), "a", "$1", "b", "(.*)")'


def test_substitute_refuses_unknown_variables():
    with pytest.raises(UnresolvedVariable, match="cluster"):
        substitute('up{cluster="$cluster"}', ALL)


def test_every_panel_expression_resolves_with_the_dashboard_variables():
    for query in panel_queries(load_dashboard()):
        assert "$" not in substitute(query.expr, ALL).replace('"$1"', "")


def test_regex_value_for_multi_value_variables():
    assert regex_value(["b"]) == "b"
    assert regex_value(["b", "a.x", "b"]) == r"(a\.x|b)"


def test_legend_format():
    assert format_legend("p95 {{namespace}}/{{ service }}", {"namespace": "ml", "service": "llama"}) == "p95 ml/llama"
    assert format_legend("", {"b": "2", "a": "1"}) == '{a="1", b="2"}'


# --- scrape config --------------------------------------------------------------------------


def test_meta_label_names_follow_prometheus_sanitising():
    assert meta_label_name("app.kubernetes.io/managed-by") == "__meta_kubernetes_service_label_app_kubernetes_io_managed_by"


def test_static_targets_replace_discovery_and_keep_relabelling():
    project = load_project_config()
    config = with_static_targets(project, {VLLM_JOB: [vllm_target("127.0.0.1:8000", namespace="ml",
                                                                  vllmdeployment="llama", pod="llama-0")]},
                                 scrape_interval="1s", rule_files=[ALERTS])
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert "kubernetes_sd_configs" not in jobs[VLLM_JOB] and "kubernetes_sd_configs" not in jobs[OPERATOR_JOB]
    assert jobs[VLLM_JOB]["relabel_configs"] == {j["job_name"]: j for j in project["scrape_configs"]}[VLLM_JOB]["relabel_configs"]
    labels = jobs[VLLM_JOB]["static_configs"][0]["labels"]
    assert labels["__meta_kubernetes_service_name"] == "llama"
    assert labels[meta_label_name("app.kubernetes.io/component")] == "server"
    assert jobs[OPERATOR_JOB]["static_configs"] == []
    assert config["global"]["scrape_interval"] == "1s" and config["rule_files"] == [str(ALERTS)]
    assert "kubernetes_sd_configs" in {j["job_name"]: j for j in project["scrape_configs"]}[VLLM_JOB], "a copy"


def test_static_targets_refuse_unknown_jobs():
    with pytest.raises(ValueError, match="no-such-job"):
        with_static_targets(load_project_config(), {"no-such-job": []})


# --- promtool (the real checker from Debian's prometheus package) --------------------------


def promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        pytest.fail("no promtool: apt-get install prometheus (scripts/bootstrap.sh does)")
    return path


@pytest.mark.prometheus
def test_alert_rules_pass_promtool_check():
    proc = subprocess.run([promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alert_rules(load_alerts()))} rules found" in proc.stdout


@pytest.mark.prometheus
def test_alerts_fire_on_their_situation_and_not_on_look_alikes():
    proc = subprocess.run([promtool(), "test", "rules", str(ROOT / "monitoring" / "alerts_test.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.prometheus
def test_every_alert_has_a_unit_test():
    tested = set(re.findall(r"alertname: (\w+)", (ROOT / "monitoring" / "alerts_test.yaml").read_text()))
    assert {r.name for r in alert_rules(load_alerts())} <= tested


@pytest.mark.prometheus
def test_project_scrape_config_passes_promtool_check(tmp_path):
    # Debian builds Prometheus without Kubernetes discovery ("field kubernetes_sd_configs not
    # found"), so promtool checks everything else: the discovery blocks are swapped for empty
    # static ones. As documented, the alerts file sits next to the config under the name it uses.
    project = load_project_config()
    for job in project["scrape_configs"]:
        assert job["kubernetes_sd_configs"] == [{"role": "endpoints"}], job["job_name"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(with_static_targets(project, {})))
    shutil.copy(ALERTS, tmp_path / "scibox-alerts.yaml")
    proc = subprocess.run([promtool(), "check", "config", str(tmp_path / "prometheus.yml")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout and "rules found" in proc.stdout


@pytest.mark.prometheus
def test_static_test_config_passes_promtool_check(tmp_path):
    config = with_static_targets(load_project_config(), {
        VLLM_JOB: [vllm_target("127.0.0.1:8000", namespace="ml", vllmdeployment="llama", pod="llama-0")],
        OPERATOR_JOB: [operator_target("127.0.0.1:8080", namespace="scibox-system")],
    }, scrape_interval="1s", rule_files=[ALERTS])
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    proc = subprocess.run([promtool(), "check", "config", str(tmp_path / "prometheus.yml")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alert_file_is_a_plain_rule_file_the_chart_can_embed():
    doc = load_alerts()
    assert set(doc) == {"groups"}, "the chart embeds the file as PrometheusRule.spec verbatim"
    rules = alert_rules(doc)
    names = [r.name for r in rules]
    assert len(names) == len(set(names))
    assert all(r.severity in ("warning", "critical") for r in rules)
    for wanted in ("VLLMDeploymentNoReadyReplicas", "VLLMWaitingQueueGrowing", "VLLMKVCacheNearlyFull",
                   "SciBoxModelDownloadFailing", "SciBoxOperatorReconcileErrors"):
        assert wanted in names


class _Store:
    vllmds: dict = {}
    children: dict = {}
    pods: dict = {}


class _Queue:
    def depth(self) -> int:
        return 0

