"""The chart against the operator's own code: every kind it watches and writes is granted, and
what its renderers expect of the operator's pods (labels, environment) is what the chart sets.
A new child kind in the operator fails here before it fails on a cluster."""

from __future__ import annotations

import ast
import re

import pytest

from .helmtool import ROOT, find, template
from .test_chart_render import env_of, rules_by_resource

pytestmark = pytest.mark.helm

WRITE = {"list", "watch", "create", "patch"}


def _group(api_version_group: str) -> str:
    return api_version_group or ""


def test_every_child_kind_the_operator_renders_is_granted():
    from scibox_operator import handlers as main

    rules = rules_by_resource(find(template(), "ClusterRole"))
    for kind, (group, _version, plural) in main.CHILD_RESOURCES.items():
        granted = rules.get((_group(group), plural), set())
        assert WRITE <= granted, f"{kind}: the operator lists, watches and applies it; granted only {granted}"


def test_every_resource_kopf_watches_may_be_listed_and_watched():
    import kopf

    from scibox_operator import handlers as main  # noqa: F401  (registers the handlers

    # kopf keeps event handlers in its default registry; `_watching` is where on.event ones live.
    handlers = kopf.get_default_registry()._watching.get_all_handlers()
    watched = {(h.selector.group or "", h.selector.plural or h.selector.any_name) for h in handlers}
    assert ("scibox.io", "vllmdeployments") in watched and len(watched) >= 8, watched
    rules = rules_by_resource(find(template(), "ClusterRole"))
    for group, plural in sorted(watched):
        assert {"list", "watch"} <= rules.get((group, plural), set()), f"kopf watches {group}/{plural}"


def test_every_kind_the_controller_deletes_may_be_deleted():
    from scibox_operator import handlers as main
    from scibox_operator.reconcile.desired import REMOVABLE_KINDS

    rules = rules_by_resource(find(template(), "ClusterRole"))
    for kind in sorted(REMOVABLE_KINDS):
        group, _version, plural = main.CHILD_RESOURCES[kind]
        assert "delete" in rules[(_group(group), plural)], f"the controller deletes {kind}"
    for kind in sorted(set(main.CHILD_RESOURCES) - set(REMOVABLE_KINDS)):
        group, _version, plural = main.CHILD_RESOURCES[kind]
        assert "delete" not in rules[(_group(group), plural)], f"{kind} is never deleted by the operator"


def test_model_network_policies_let_the_charts_operator_pods_in():
    from scibox_operator.api.spec import parse
    from scibox_operator.render.network_policy import render_network_policy

    vd = parse({"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment",
                "metadata": {"name": "m", "namespace": "team", "uid": "u", "generation": 1},
                "spec": {"model": {"name": "org/model"}, "resources": {"gpus": 1},
                         "networkPolicy": {"enabled": True}}})
    docs = template(namespace="ops")
    env = env_of(docs)
    assert env["SCIBOX_OPERATOR_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    policy = render_network_policy(vd, operator_namespace="ops")
    operator_peer = policy["spec"]["ingress"][0]["from"][-1]
    pod_labels = find(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert operator_peer["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert operator_peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ops"}


def test_pod_labels_are_not_the_operators_child_labels():
    """The operator watches objects labelled managed-by=scibox-vllm-operator: its own
    Deployment must not look like one of its children."""
    from scibox_operator.render.common import MANAGED_BY, MANAGED_BY_LABEL

    for doc in template():
        assert doc["metadata"].get("labels", {}).get(MANAGED_BY_LABEL) != MANAGED_BY, doc["kind"]


def test_every_setting_the_chart_sets_is_read_by_the_operator():
    package = ROOT / "operator" / "scibox_operator"
    read = set()
    for path in package.rglob("*.py"):
        read |= set(re.findall(r'"(SCIBOX_[A-Z_]+|POD_NAME)"', path.read_text()))
    env = env_of(template({"replicaCount": 2, "operator": {"vllmImage": "x/y:1",
                                                            "probe": {"allowedCIDRs": ["10.0.0.0/8"]}}}))
    unread = {name for name in env if name.startswith("SCIBOX_") or name == "POD_NAME"} - read
    assert not unread, f"the chart sets variables the operator never reads: {sorted(unread)}"


def read_kinds(source: str) -> set[str]:
    """Kinds the reconcile GETs by name: `client.get("Kind", ...)`, and the LeaderWorkerSet that
    `_read_fresh` reads on each pass of a multi-node object (its only caller)."""
    from scibox_operator.runtime.kube import KINDS
    from scibox_operator.runtime.store import CHILD_KINDS

    read: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        first = node.args[0] if node.args else None
        literal = first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None
        if node.func.attr == "get" and literal in KINDS:
            read.add(literal)
        elif node.func.attr == "get" and node.args and isinstance(first, ast.Name) and first.id == "kind":
            read |= set(CHILD_KINDS)  # the look-up of a child's name before it is created
        elif node.func.attr == "_read_fresh":
            read.add("LeaderWorkerSet")
    return read


def test_every_kind_the_controller_gets_by_name_may_be_read():
    """issue 18: the chart lacked get on leaderworkersets, so multi-node status was never written
    under the chart's ServiceAccount."""
    from scibox_operator import handlers as main
    from scibox_operator.runtime.kube import KINDS

    package = ROOT / "operator" / "scibox_operator"
    read = set()
    for module in ("reconcile/reconciler.py", "reconcile/apply.py", "runtime/secrets.py", "runtime/sync.py"):
        read |= read_kinds((package / module).read_text())
    assert {"Secret", "LeaderWorkerSet", "Service", "PersistentVolumeClaim"} <= read, f"the scan is stale: {read}"
    rules = rules_by_resource(find(template(), "ClusterRole"))
    for kind in sorted(read):
        k = KINDS[kind]
        group = k.api_version.rpartition("/")[0]
        assert "get" in rules.get((group, k.plural), set()), f"the controller GETs {kind}"
    assert main.CHILD_RESOURCES["LeaderWorkerSet"][2] == KINDS["LeaderWorkerSet"].plural


def test_the_owner_chain_kinds_the_operator_watches_are_granted():
    from scibox_operator import handlers as main

    rules = rules_by_resource(find(template(), "ClusterRole"))
    for kind, ((group, _version, plural), _labels) in main.OWNER_CHAIN_RESOURCES.items():
        assert {"list", "watch"} <= rules.get((group, plural), set()), kind
        assert not {"create", "patch", "delete"} & rules[(group, plural)], f"{kind} is only read"
