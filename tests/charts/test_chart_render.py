"""The chart rendered by the real helm, without a cluster: lint, schema, RBAC shape, options,
and the generated manifests/install never drifting from the chart."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from .helmtool import CHART, ROOT, HelmError, find, helm, template, template_text

pytestmark = pytest.mark.helm

ALL_ON = {
    "replicaCount": 2,
    "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
    "prometheusRule": {"enabled": True},
    "grafanaDashboard": {"enabled": True, "namespace": "monitoring", "annotations": {"grafana_folder": "LLM"}},
    "networkPolicy": {"enabled": True, "egress": {"enabled": True, "apiServerCIDRs": ["10.0.0.1/32"]}},
    "podDisruptionBudget": {"enabled": True},
    "security": {"forbidTrustRemoteCode": True},
    "operator": {"vllmImage": "registry.local/vllm:0.32.0", "probe": {"allowedCIDRs": ["10.0.0.0/8", "192.168.0.0/16"]}},
}


def env_of(docs: list[dict]) -> dict[str, str]:
    container = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def rules_by_resource(cluster_role: dict) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in cluster_role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


# --- lint and schema --------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, ALL_ON], ids=["defaults", "everything-on"])
def test_helm_lint_strict_is_clean(values, tmp_path):
    args = ["lint", "--strict", str(CHART), "--kube-version", "1.35.4"]
    if values:
        f = tmp_path / "values.yaml"
        f.write_text(yaml.safe_dump(values))
        args += ["--values", str(f)]
    proc = helm(*args, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("values, message", [
    ({"replicaCount": "two"}, "replicaCount"),
    ({"operatr": {}}, "additional properties 'operatr' not allowed"),
    ({"operator": {"probe": {"mode": "always"}}}, "/operator/probe/mode"),
    ({"operator": {"hubEndpoint": "huggingface.co"}}, "/operator/hubEndpoint"),
    ({"operator": {"probe": {"allowedCIDRs": ["10.0.0.0"]}}}, "allowedCIDRs"),
    ({"security": {"forbidTrustRemoteCode": "yes"}}, "forbidTrustRemoteCode"),
    ({"image": {"digest": "latest"}}, "/image/digest"),
    ({"metrics": {"port": 70000}}, "/metrics/port"),
    ({"podDisruptionBudget": {"enabled": True}}, "would block every eviction"),
    ({"serviceMonitor": {"enabled": True}, "metrics": {"service": {"enabled": False}}}, "needs metrics.service.enabled"),
    ({"serviceAccount": {"create": False}}, "serviceAccount.name is required"),
    ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0"),
    ({"security": {"hubEndpoints": ["https://u@huggingface.co"]}}, "/security/hubEndpoints/0"),
    ({"security": {"imagePrefixes": ["a b"]}}, "/security/imagePrefixes/0"),
    ({"operator": {"monitoringNamespace": "Mon"}}, "/operator/monitoringNamespace"),
])
def test_bad_values_are_refused_with_a_clear_message(values, message):
    with pytest.raises(HelmError) as err:
        template(values)
    assert message in err.value.stderr


def test_clusters_older_than_the_crds_validation_rules_are_refused():
    with pytest.raises(HelmError) as err:
        template_text(extra=("--kube-version", "1.27.9"))
    assert "kubeVersion" in err.value.stderr and ">=1.29.0-0" in err.value.stderr
    assert template_text(extra=("--kube-version", "1.29.0"))


# --- the operator Deployment -----------------------------------------------------------------


def test_defaults_run_one_operator_without_leader_election():
    docs = template()
    dep = find(docs, "Deployment")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}, "two single operators must never overlap"
    env = env_of(docs)
    assert "SCIBOX_LEADER_ELECTION_NAMESPACE" not in env
    assert find(docs, "Role") is None and find(docs, "RoleBinding") is None
    assert find(docs, "PodDisruptionBudget") is None
    assert find(docs, "ServiceMonitor") is None and find(docs, "PrometheusRule") is None
    assert env["SCIBOX_FORBID_TRUST_REMOTE_CODE"] == "false"
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}, "the Lease holder identity"


def test_pod_runs_the_operator_cli_with_kopf_health_and_metrics_ports():
    dep = find(template(), "Deployment")
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"][:4] == ["python", "-m", "scibox_operator.cli", "run"]
    assert "--liveness=http://0.0.0.0:8081/healthz" in container["command"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}, "kopf's /healthz and the metrics must not share a port"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert env_of(template())["SCIBOX_METRICS_PORT"] == "8080"
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["image"] == "ghcr.io/scibox/vllm-operator:0.1.0", "the tag defaults to appVersion"


def test_two_replicas_turn_on_leader_election_with_a_lease_role_limited_to_its_lease():
    docs = template({"replicaCount": 2}, namespace="ops")
    env = env_of(docs)
    assert env["SCIBOX_LEADER_ELECTION_NAMESPACE"] == "ops"
    dep = find(docs, "Deployment")
    assert "strategy" not in dep["spec"], "rolling update: the standby holds on while the new pod starts"
    anti = dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"] == \
        "kubernetes.io/hostname"
    role = find(docs, "Role")
    assert role["metadata"]["namespace"] == "ops"
    named = [r for r in role["rules"] if r.get("resourceNames")]
    unnamed = [r for r in role["rules"] if not r.get("resourceNames")]
    assert named == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                      "resourceNames": ["scibox-vllm-operator"], "verbs": ["get", "update"]}]
    assert unnamed == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]}]
    binding = find(docs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rel-scibox-vllm-operator", "namespace": "ops"}]


def test_leader_election_can_be_forced_on_for_one_replica():
    docs = template({"leaderElection": {"enabled": True}})
    assert "SCIBOX_LEADER_ELECTION_NAMESPACE" in env_of(docs) and find(docs, "Role") is not None


def test_operator_settings_reach_the_environment():
    env = env_of(template(ALL_ON))
    assert env["SCIBOX_FORBID_TRUST_REMOTE_CODE"] == "true"
    assert env["SCIBOX_VLLM_IMAGE"] == "registry.local/vllm:0.32.0"
    assert env["SCIBOX_PROBE_ALLOWED_CIDRS"] == "10.0.0.0/8,192.168.0.0/16"
    assert env["SCIBOX_PROBE"] == "pod-ip" and env["SCIBOX_PROBE_PERIOD"] == "10"
    assert env["SCIBOX_HUB_ENDPOINT"] == "https://huggingface.co"
    custom = env_of(template({"operator": {"probe": {"mode": "off", "periodSeconds": 3},
                                           "extraEnv": [{"name": "SCIBOX_PROBE_CONCURRENCY", "value": "4"}]}}))
    assert custom["SCIBOX_PROBE"] == "off" and custom["SCIBOX_PROBE_PERIOD"] == "3"
    assert custom["SCIBOX_PROBE_CONCURRENCY"] == "4"
    assert custom["SCIBOX_PROBE_TIMEOUT"] == "5", "--set of one key keeps its siblings' defaults"


def test_image_digest_wins_over_tag():
    digest = "sha256:" + "ab" * 32
    dep = find(template({"image": {"tag": "9.9", "digest": digest}}), "Deployment")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == f"ghcr.io/scibox/vllm-operator@{digest}"


# --- RBAC ---------------------------------------------------------------------------------------


def test_cluster_role_is_least_privilege():
    docs = template()
    role = find(docs, "ClusterRole")
    rules = rules_by_resource(role)
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        assert not rule.get("nonResourceURLs"), rule
    assert rules[("", "secrets")] == {"get"}, "Secrets are read by name, never listed or watched"
    assert rules[("scibox.io", "vllmdeployments")] == {"list", "watch"}, "the spec belongs to the user"
    assert rules[("scibox.io", "vllmdeployments/status")] == {"patch"}
    assert rules[("", "pods")] == {"list", "watch"} and rules[("", "nodes")] == {"list", "watch"}
    assert rules[("scibox.io", "vllmgateways")] == {"list", "watch"}
    assert rules[("scibox.io", "vllmgateways/status")] == {"patch"}
    assert rules[("", "serviceaccounts")] == rules[("rbac.authorization.k8s.io", "roles")] == \
        rules[("rbac.authorization.k8s.io", "rolebindings")] == {"get", "create", "patch"}
    assert rules[("", "events")] == {"create"}
    # get: a child's name is looked up before it is created (someone else's object is never taken)
    assert rules[("", "services")] == rules[("", "persistentvolumeclaims")] == {"get", "list", "watch", "create",
                                                                               "patch"}
    assert ("", "namespaces") not in rules, "cluster-wide kopf does not observe namespaces"
    assert ("coordination.k8s.io", "leases") not in rules, "leases only through the namespaced Role"
    assert not any(verb in {"escalate", "bind", "impersonate", "deletecollection"}
                   for verbs in rules.values() for verb in verbs)
    binding = find(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == find(docs, "ServiceAccount")["metadata"]["name"]


def test_the_operator_holds_everything_a_gateways_router_role_grants():
    """Without escalate/bind, the API server lets the operator create a Role (and bind it) only
    with rules it holds itself, in that namespace: every verb of the router's Role must be in
    the operator's own rules, in the cluster-wide and in the namespaced install."""
    from scibox_operator.render.gateway import ROUTER_RULES

    for docs, kind in ((template(), "ClusterRole"), (template({"watchNamespaces": ["team-a"]}), "Role")):
        rules = rules_by_resource(next(d for d in docs if d["kind"] == kind
                                       and any("pods" in r["resources"] for r in d["rules"])))
        for rule in ROUTER_RULES:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    assert set(rule["verbs"]) <= rules.get((group, resource), set()), (kind, group, resource)


def test_multi_node_reads_and_the_probes_owner_chain_are_granted():
    """The multi-node path GETs its LeaderWorkerSet on every pass; the prober reads the
    ReplicaSets and StatefulSets between a pod and its VLLMDeployment (issue 18)."""
    rules = rules_by_resource(find(template(), "ClusterRole"))
    assert "get" in rules[("leaderworkerset.x-k8s.io", "leaderworkersets")]
    assert rules[("apps", "replicasets")] == rules[("apps", "statefulsets")] == {"list", "watch"}


def rules_of(docs: list[dict], kind: str) -> dict[str, dict[tuple[str, str], set[str]]]:
    """namespace (or '' for a ClusterRole) -> its rules, for every object of `kind`."""
    return {d["metadata"].get("namespace", ""): rules_by_resource(d) for d in docs if d["kind"] == kind}


def test_a_namespaced_install_reads_secrets_only_in_its_namespaces():
    docs = template({"watchNamespaces": ["team-a", "team-b"]}, namespace="ops")
    cluster = rules_by_resource(find(docs, "ClusterRole"))
    assert ("", "secrets") not in cluster, "no cluster-wide Secret read"
    assert set(cluster) == {("", "nodes"), ("storage.k8s.io", "storageclasses"),
                            ("apiextensions.k8s.io", "customresourcedefinitions")}
    roles = rules_of(docs, "Role")
    assert set(roles) == {"team-a", "team-b"}
    assert all(r[("", "secrets")] == {"get"} for r in roles.values())
    bindings = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "RoleBinding"}
    for namespace, binding in bindings.items():
        role = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["namespace"] == namespace)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": role["metadata"]["name"]}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rel-scibox-vllm-operator",
                                        "namespace": "ops"}]
    command = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["command"]
    assert [c for c in command if c.startswith("--namespace")] == ["--namespace=team-a", "--namespace=team-b"]


def test_namespaced_and_cluster_wide_installs_grant_the_same_rules_in_total():
    """A namespaced install moves rules into Roles; it must not lose one (the operator would
    meet a 403) nor add one."""
    wide = rules_by_resource(find(template(), "ClusterRole"))
    docs = template({"watchNamespaces": ["team-a"]})
    split = rules_by_resource(find(docs, "ClusterRole"))
    for key, verbs in rules_of(docs, "Role")["team-a"].items():
        assert key not in split, f"{key} granted twice"
        split[key] = verbs
    assert split == wide
    assert not [c for c in find(template(), "Deployment")["spec"]["template"]["spec"]["containers"][0]["command"]
                if c.startswith("--namespace")], "cluster-wide: no --namespace"


def test_allowlists_and_the_monitoring_namespace_reach_the_environment():
    env = env_of(template({"security": {"hubEndpoints": ["https://huggingface.co", "http://mirror.local:8080"],
                                        "imagePrefixes": ["ghcr.io/scibox/", "registry.local"]},
                           "operator": {"monitoringNamespace": "monitoring"}}))
    assert env["SCIBOX_ALLOWED_HUB_ENDPOINTS"] == "https://huggingface.co,http://mirror.local:8080"
    assert env["SCIBOX_ALLOWED_IMAGE_PREFIXES"] == "ghcr.io/scibox/,registry.local"
    assert env["SCIBOX_MONITORING_NAMESPACE"] == "monitoring"
    defaults = env_of(template())
    assert not {"SCIBOX_ALLOWED_HUB_ENDPOINTS", "SCIBOX_ALLOWED_IMAGE_PREFIXES",
                "SCIBOX_MONITORING_NAMESPACE"} & set(defaults), "defaults: only operator.hubEndpoint, any image"


def test_the_charts_allowlist_is_the_one_the_operator_accepts():
    """Values the schema admits build an AdminPolicy; what it refuses the operator would too."""
    from scibox_operator.reconcile.policy import AdminPolicy, PolicyError

    env = env_of(template({"security": {"hubEndpoints": ["https://huggingface.co", "http://[::1]:8080/"]}}))
    settings = type("S", (), {"hub_endpoint": env["SCIBOX_HUB_ENDPOINT"], "vllm_image": "ghcr.io/scibox/vllm:1",
                              "forbid_trust_remote_code": False})()
    assert AdminPolicy.from_settings(settings, env).endpoint_allowed("http://[::1]:8080")
    with pytest.raises(HelmError) as err:
        template({"security": {"hubEndpoints": ["https://huggingface.co/models"]}})
    assert "hubEndpoints" in err.value.stderr
    with pytest.raises(PolicyError):
        AdminPolicy.from_settings(settings, {"SCIBOX_ALLOWED_HUB_ENDPOINTS": "https://huggingface.co/models"})


def test_cluster_scoped_names_differ_between_namespaces():
    a = find(template(namespace="team-a"), "ClusterRole")["metadata"]["name"]
    b = find(template(namespace="team-b"), "ClusterRole")["metadata"]["name"]
    assert a != b


def test_rbac_off_renders_no_roles_and_an_existing_service_account_is_used():
    docs = template({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "ops-sa"}})
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                                                  "ServiceAccount")]
    assert find(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops-sa"


# --- options ----------------------------------------------------------------------------------


def test_everything_on_renders_each_optional_object():
    docs = template(ALL_ON, namespace="ops")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service",
                            "Deployment", "ServiceMonitor", "PrometheusRule", "ConfigMap", "NetworkPolicy",
                            "PodDisruptionBudget"])
    sm = find(docs, "ServiceMonitor")
    svc = find(docs, "Service")
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"] == "metrics"
    assert sm["spec"]["selector"]["matchLabels"].items() <= \
        find(docs, "Deployment")["spec"]["template"]["metadata"]["labels"].items()
    pdb = find(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"] == find(docs, "Deployment")["spec"]["selector"]


def test_dashboard_config_map_carries_the_dashboard_json_for_the_grafana_sidecar():
    source = CHART / "files" / "dashboard.json"
    if not source.is_file():
        pytest.skip("files/dashboard.json not written yet (owned by the monitoring work)")
    cm = find(template(ALL_ON, namespace="ops"), "ConfigMap")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "LLM"}
    (key, text), = cm["data"].items()
    assert key.endswith(".json")
    assert json.loads(text) == json.loads(source.read_text())


def test_prometheus_rule_carries_the_alert_rules():
    source = CHART / "files" / "alerts.yaml"
    if not source.is_file():
        pytest.skip("files/alerts.yaml not written yet (owned by the monitoring work)")
    rule = find(template(ALL_ON), "PrometheusRule")
    expected = yaml.safe_load(source.read_text())
    expected_groups = expected["groups"] if "groups" in expected else expected["spec"]["groups"]
    assert rule["spec"]["groups"] == expected_groups
    assert all(r.get("alert") or r.get("record") for g in rule["spec"]["groups"] for r in g["rules"])


def test_network_policy_admits_metrics_and_limits_egress_to_what_the_operator_reaches():
    policy = find(template(ALL_ON), "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]
    egress = policy["spec"]["egress"]
    ports = [sorted(p["port"] for p in rule["ports"]) for rule in egress]
    assert ports == [[53, 53], [443, 6443], [8000], [443]]
    assert egress[1]["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    servers = egress[2]["to"][0]["podSelector"]["matchLabels"]
    assert servers == {"app.kubernetes.io/managed-by": "scibox-vllm-operator", "app.kubernetes.io/component": "server"}
    ingress_only = find(template({"networkPolicy": {"enabled": True}}), "NetworkPolicy")
    assert ingress_only["spec"]["policyTypes"] == ["Ingress"] and "egress" not in ingress_only["spec"]


def test_rendering_is_deterministic():
    assert template_text(ALL_ON) == template_text(ALL_ON)


# --- one source of truth ----------------------------------------------------------------------


def test_chart_crds_are_the_crds_of_record():
    ours = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    record = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    assert ours == record, "run: python tools/render_manifests.py"


def test_manifests_install_is_generated_from_the_chart():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "render_manifests.py"), "--check"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_drift_check_notices_a_hand_edit(monkeypatch):
    from tools import render_manifests

    rendered = render_manifests.render(render_manifests.helm_binary())
    operator_yaml = render_manifests.INSTALL / "operator.yaml"
    edited = dict(rendered)
    edited[operator_yaml] = rendered[operator_yaml].replace("verbs: [get]", "verbs: [get, list]")
    assert edited[operator_yaml] != rendered[operator_yaml]
    # Compare the edited "rendering" with the disk: exactly the edited file is reported.
    problems = render_manifests.differences(edited)
    assert len(problems) == 1 and problems[0].startswith("manifests/install/operator.yaml: differs")
    assert "+    verbs: [get, list]" in problems[0]


def test_install_kustomization_lists_every_generated_file():
    kustomization = yaml.safe_load((ROOT / "manifests" / "install" / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {str(p.relative_to(ROOT / "manifests" / "install")) for p in (ROOT / "manifests" / "install").glob("**/*.yaml")
               if p.parent.name != "monitoring" and p.name != "kustomization.yaml"}
    assert listed == on_disk
    docs = [d for d in yaml.safe_load_all((ROOT / "manifests" / "install" / "operator.yaml").read_text()) if d]
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] not in ("ClusterRole", "ClusterRoleBinding")} \
        == {"scibox-system"}


def test_packaged_chart_renders_the_same_as_the_source(tmp_path):
    helm("package", str(CHART), "--destination", str(tmp_path))
    (package,) = tmp_path.glob("scibox-vllm-operator-*.tgz")
    import tarfile

    with tarfile.open(package) as tar:
        names = set(tar.getnames())
    assert {"scibox-vllm-operator/crds/scibox.io_vllmdeployments.yaml", "scibox-vllm-operator/values.schema.json",
            "scibox-vllm-operator/files/alerts.yaml", "scibox-vllm-operator/files/dashboard.json"} <= names
    from_package = helm("template", "rel", str(package), "--namespace", "ns", "--kube-version", "1.35.4",
                        "--set", "prometheusRule.enabled=true", "--set", "grafanaDashboard.enabled=true").stdout
    from_source = template_text({"prometheusRule": {"enabled": True}, "grafanaDashboard": {"enabled": True}})
    assert from_package == from_source
