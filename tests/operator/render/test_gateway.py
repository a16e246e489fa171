"""VLLMGateway, the pure parts: spec parsing, the router's children, desired() and status.

The router's command line is checked by the real vllm-router's own argument parser (the wheel
scripts/bootstrap.sh installs), not by string matching alone."""

from __future__ import annotations

import copy
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from scibox_operator.api.gateway import parse_gateway
from scibox_operator.api.names import ROUTER_POLICIES
from scibox_operator.api.spec import InvalidSpec, parse
from scibox_operator.reconcile.diff import needs_apply
from scibox_operator.reconcile.gateway_desired import (
    FrontedModel,
    GatewayObserved,
    gateway_desired,
    gateway_status,
    invalid_gateway_status,
)
from scibox_operator.render.deployment import render_deployment
from scibox_operator.render.gateway import API_KEY_ENV, ROUTER_RULES, router_args
from tools.localcluster.runner import router_binary

from .test_renderers import body as vllmd_body
from .test_renderers import plan_for

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[3]


def gw_body(name="gw", uid="gw-uid", **spec):
    return {"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMGateway",
            "metadata": {"name": name, "namespace": "ns", "uid": uid, "generation": 2}, "spec": spec}


def observed(gw, models=(), *, crd=True, key=None, live=None):
    return GatewayObserved(gateway=gw, models=tuple(models), router_image="router:1", service_monitor_crd=crd,
                           api_key_present=key, live=live or {})


def by_kind(children):
    return {c["kind"]: c for c in children}


def real_parser(args: list[str]) -> dict:
    """The real vllm-router's parse of `args` (its RouterArgs), as JSON."""
    python = Path(router_binary()).parent / "python"
    assert python.exists(), f"{python}: run scripts/bootstrap.sh (requirements/vllm-router.txt)"
    code = ("import dataclasses, json, sys\n"
            "from vllm_router.launch_router import parse_router_args\n"
            "print(json.dumps(dataclasses.asdict(parse_router_args(sys.argv[1:])), default=str))")
    out = subprocess.run([str(python), "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("policy", ROUTER_POLICIES)
def test_the_real_router_parses_the_rendered_command(policy):
    gw = parse_gateway(gw_body(policy=policy, selector={"matchLabels": {"team": "a", "tier": "gold"}},
                               auth={"apiKeySecretRef": {"name": "k"}}))
    args = [a.replace(f"$({API_KEY_ENV})", "sekret") for a in router_args(gw)]
    got = real_parser(args)
    assert got["policy"] == policy
    assert got["enable_igw"] is True and got["service_discovery"] is True
    assert got["selector"] == {"team": "a", "tier": "gold", "app.kubernetes.io/managed-by": "scibox-vllm-operator",
                               "app.kubernetes.io/component": "server"}
    assert got["service_discovery_namespace"] == "ns" and got["service_discovery_port"] == 8000
    assert got["port"] == 8000 and got["prometheus_port"] == 29000 and got["prometheus_host"] == "0.0.0.0"
    assert got["api_key"] == "sekret"


def test_the_crd_policy_enum_is_the_operators_and_the_routers():
    crd = yaml.safe_load((ROOT / "crds" / "scibox.io_vllmgateways.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert tuple(spec["policy"]["enum"]) == ROUTER_POLICIES
    help_text = subprocess.run([router_binary(), "--help"], capture_output=True, text=True, timeout=60).stdout
    offered = help_text.split("--policy {", 1)[1].split("}", 1)[0].split(",")
    assert set(ROUTER_POLICIES) <= set(offered)


def test_children_render_byte_identical_and_only_pods_are_readable():
    spec = {"selector": {"matchLabels": {"b": "2", "a": "1"}}, "policy": "round_robin",
            "tolerations": [{"key": "t", "operator": "Exists"}], "nodeSelector": {"y": "1", "x": "2"}}
    reordered = copy.deepcopy(spec)
    reordered["selector"]["matchLabels"] = {"a": "1", "b": "2"}
    reordered["nodeSelector"] = {"x": "2", "y": "1"}
    outs = [yaml.safe_dump(list(gateway_desired(observed(parse_gateway(gw_body(**s)))).children)) for s in (spec, reordered)]
    assert outs[0] == outs[1]
    kids = by_kind(gateway_desired(observed(parse_gateway(gw_body(**spec)))).children)
    assert set(kids) == {"ServiceAccount", "Role", "RoleBinding", "Deployment", "Service", "ServiceMonitor"}
    assert kids["Role"]["rules"] == ROUTER_RULES == [{"apiGroups": [""], "resources": ["pods"],
                                                       "verbs": ["list", "watch"]}]
    assert kids["Role"]["metadata"]["namespace"] == "ns" and kids["RoleBinding"]["subjects"] == [
        {"kind": "ServiceAccount", "name": "gw-router", "namespace": "ns"}]
    for child in kids.values():
        ref = child["metadata"]["ownerReferences"][0]
        assert ref["kind"] == "VLLMGateway" and ref["uid"] == "gw-uid" and ref["controller"] is True


def test_router_pod_is_locked_down_and_probed():
    dep = by_kind(gateway_desired(observed(parse_gateway(gw_body()))).children)["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["serviceAccountName"] == "gw-router" and pod["automountServiceAccountToken"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                    "readOnlyRootFilesystem": True, "runAsNonRoot": True}
    assert c["command"] == ["vllm-router"] and c["image"] == "router:1"
    assert {p: c[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")} == {
        "startupProbe": "/liveness", "readinessProbe": "/health", "livenessProbe": "/liveness"}
    assert "env" not in c and "--api-key" not in c["args"]


def test_edits_remove_what_they_no_longer_ask_for():
    keyed = parse_gateway(gw_body(auth={"apiKeySecretRef": {"name": "k", "key": "x"}},
                                  tolerations=[{"key": "t", "operator": "Exists"}]))
    kids = by_kind(gateway_desired(observed(keyed, key=True)).children)
    c = kids["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert c["env"] == [{"name": API_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": "k", "key": "x"}}}]
    assert c["args"][-2:] == ["--api-key", f"$({API_KEY_ENV})"]
    plain = by_kind(gateway_desired(observed(parse_gateway(gw_body()), live=kids)).children)
    pc = plain["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert "env" not in pc and "--api-key" not in pc["args"]
    assert "tolerations" not in plain["Deployment"]["spec"]["template"]["spec"]
    # a changed render hash makes the apply happen, and server-side apply drops the fields
    assert needs_apply(plain["Deployment"], kids["Deployment"])
    # same spec again: nothing to write
    assert not needs_apply(kids["Deployment"], kids["Deployment"])
    # monitoring off: the live ServiceMonitor is removed; no CRD: none is rendered, none removed
    off = parse_gateway(gw_body(monitoring={"serviceMonitor": False}))
    want = gateway_desired(observed(off, live={("ServiceMonitor", "gw"): kids["ServiceMonitor"]}))
    assert "ServiceMonitor" not in by_kind(want.children) and want.removals == (("ServiceMonitor", "gw"),)
    want = gateway_desired(observed(parse_gateway(gw_body()), crd=False))
    assert "ServiceMonitor" not in by_kind(want.children) and want.removals == ()


def test_spec_refuses_what_the_router_cannot_select():
    with pytest.raises(InvalidSpec, match="operator's own"):
        parse_gateway(gw_body(selector={"matchLabels": {"app.kubernetes.io/name": "x"}}))
    with pytest.raises(InvalidSpec, match="policy"):
        parse_gateway(gw_body(policy="fastest"))
    with pytest.raises(InvalidSpec, match="metadata.name"):
        parse_gateway({**gw_body(), "metadata": {"name": "Bad_Name", "namespace": "ns"}})


def test_server_pods_carry_their_vllmdeployments_labels_but_never_ours():
    b = vllmd_body()
    b["metadata"]["labels"] = {"team": "a", "app.kubernetes.io/name": "hijack", "scibox.io/x": "y"}
    vd = parse(b)
    labels = render_deployment(vd, plan_for(vd))["spec"]["template"]["metadata"]["labels"]
    assert labels["team"] == "a" and labels["app.kubernetes.io/name"] == "vllm" and "scibox.io/x" not in labels
    b["metadata"]["labels"] = {}
    vd = parse(b)
    assert "team" not in render_deployment(vd, plan_for(vd))["spec"]["template"]["metadata"]["labels"]


def model(name, ready, replicas=1):
    return FrontedModel(deployment=name, model=f"{name}-served", replicas=replicas, ready_workers=ready)


AVAILABLE = {("Deployment", "gw-router"): {"status": {"availableReplicas": 1, "readyReplicas": 1}}}


@pytest.mark.parametrize(("models", "key", "live", "reason", "status"), [
    ((), None, AVAILABLE, "NoMatchingDeployments", "False"),
    ((model("a", 1),), False, AVAILABLE, "ApiKeySecretMissing", "False"),
    ((model("a", 1),), None, {}, "RouterUnavailable", "False"),
    ((model("a", 0),), None, AVAILABLE, "NoReadyWorkers", "False"),
    ((model("a", 1), model("b", 0, replicas=0)), None, AVAILABLE, "Serving", "True"),
])
def test_status_says_why(models, key, live, reason, status):
    auth = {"auth": {"apiKeySecretRef": {"name": "missing"}}} if key is False else {}
    gw = parse_gateway(gw_body(**auth))
    st = gateway_status(observed(gw, models, key=key, live=live), None, now=NOW)
    ready = st["conditions"][0]
    assert (ready["reason"], ready["status"]) == (reason, status), ready
    assert st["endpoint"] == "http://gw.ns.svc:8000/v1"
    assert [m["name"] for m in st["models"]] == [m.model for m in models]
    assert st["servedModels"] == ",".join(m.model for m in models)
    if reason == "Serving":  # a model scaled to zero stays listed, with no ready worker
        assert st["models"][1] == {"name": "b-served", "deployment": "b", "replicas": 0, "readyWorkers": 0}
        assert "no ready worker yet for b-served" in ready["message"]
    if reason == "ApiKeySecretMissing":
        assert "Secret missing" in ready["message"] and st["phase"] == "Failed"
    # the same observation again: the same status, so nothing is written
    assert gateway_status(observed(gw, models, key=key, live=live), st, now=datetime(2027, 1, 1, tzinfo=UTC)) == st


def test_invalid_spec_status():
    st = invalid_gateway_status(4, "spec.policy: bad", None, now=NOW)
    assert st["phase"] == "Failed" and st["conditions"][0]["reason"] == "InvalidSpec"
