"""The model's NetworkPolicy (issue 18): the group's own pods on every port, the monitoring
namespace on the model port, the allowed peers on the model port, and nothing else."""

from __future__ import annotations

import pytest

from scibox_operator.api.spec import parse
from scibox_operator.render.deployment import CONTAINER_PORT
from scibox_operator.render.network_policy import render_network_policy

MODEL_PORT = [{"protocol": "TCP", "port": CONTAINER_PORT}]


def vd(name="m", **network_policy):
    return parse({"metadata": {"name": name, "namespace": "team", "uid": "u", "generation": 1},
                  "spec": {"model": {"name": "org/model"}, "resources": {"gpus": 1},
                           "networkPolicy": {"enabled": True, **network_policy}}})


def render(v, *, operator="ops", monitoring="monitoring"):
    return render_network_policy(v, operator_namespace=operator, monitoring_namespace=monitoring)


def rules(policy):
    return policy["spec"]["ingress"]


def namespaces_allowed_on_the_model_port(policy):
    peer = rules(policy)[0]["from"][0]
    return peer["namespaceSelector"]["matchExpressions"][0]["values"]


def test_the_groups_own_pods_reach_each_other_on_every_port_and_no_one_else_does():
    policy = render(vd())
    own = policy["spec"]["podSelector"]
    group = [r for r in rules(policy) if "ports" not in r]
    assert group == [{"from": [{"podSelector": own}]}], "all ports, only from the same model's server pods"
    assert own == {"matchLabels": {"app.kubernetes.io/instance": "m", "app.kubernetes.io/component": "server"}}
    assert "namespaceSelector" not in group[0]["from"][0], "a podSelector alone means: this namespace"
    assert all(r["ports"] == MODEL_PORT for r in rules(policy) if r is not group[0])
    assert policy["spec"]["policyTypes"] == ["Ingress"]


def test_the_monitoring_namespace_scrapes_the_model_port_only():
    policy = render(vd())
    monitoring = [r for r in rules(policy) if r["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]]
    assert monitoring == [{"from": monitoring[0]["from"], "ports": MODEL_PORT}]
    assert len(rules(policy)) == 3


def test_without_a_monitoring_namespace_its_rule_goes():
    with_it, without = render(vd(), monitoring="monitoring"), render(vd(), monitoring="")
    assert len(rules(without)) == len(rules(with_it)) - 1
    assert "monitoring" not in str(rules(without))
    assert rules(without) == rules(with_it)[:2]


def test_the_monitoring_namespace_comes_from_the_setting(monkeypatch):
    monkeypatch.setenv("SCIBOX_MONITORING_NAMESPACE", "prom")
    assert "prom" in str(rules(render_network_policy(vd(), operator_namespace="ops"))[2])
    monkeypatch.delenv("SCIBOX_MONITORING_NAMESPACE")
    assert len(rules(render_network_policy(vd(), operator_namespace="ops"))) == 2


def test_shrinking_the_allowed_namespaces_shrinks_the_policy():
    wide = render(vd(allowedNamespaces=["web", "batch", "team"]))
    narrow = render(vd(allowedNamespaces=["web"]))
    assert namespaces_allowed_on_the_model_port(wide) == ["batch", "team", "web"]
    assert namespaces_allowed_on_the_model_port(narrow) == ["web"]
    assert "batch" not in str(narrow)
    default = render(vd())
    assert namespaces_allowed_on_the_model_port(default) == ["team"], "no list: the model's own namespace"


def test_removing_the_pod_labels_removes_the_pod_selector():
    labelled = render(vd(allowedPodLabels={"role": "gateway"}))
    assert rules(labelled)[0]["from"][0]["podSelector"] == {"matchLabels": {"role": "gateway"}}
    assert "podSelector" not in rules(render(vd()))[0]["from"][0]


@pytest.mark.parametrize("operator, peers", [("ops", 2), ("", 1)])
def test_the_operator_is_let_in_when_its_namespace_is_known(operator, peers):
    assert len(rules(render(vd(), operator=operator))[0]["from"]) == peers


def test_disabling_removes_the_policy_and_two_models_do_not_share_a_group():
    off = parse({"metadata": {"name": "m", "namespace": "team", "uid": "u", "generation": 1},
                 "spec": {"model": {"name": "org/model"}, "resources": {"gpus": 1}}})
    assert render(off) is None
    a, b = render(vd("a")), render(vd("b"))
    assert rules(a)[1] != rules(b)[1]
    assert rules(a)[1]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "a"
