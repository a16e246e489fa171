"""The chart on a real API server (issue 8's acceptance).

- `helm template` output and `manifests/install` (kustomize) pass a server-side dry-run;
- `helm install`; then the operator PROCESS runs with nothing but the chart's ServiceAccount token
  (TokenRequest API) and fully reconciles a sample: children, status from its probe (which reads
  the API key Secret), an Event, its leader-election Lease, and deletes when features are turned
  off. Not one request of it is refused (the API server's own 403 count, and its log);
- verbs the operator does not need are denied to that identity;
- `helm upgrade` keeps the CRs and their children; `helm uninstall` leaves the CRD and the CRs.

The chart's own operator pods are kwok pods (no image can run here): they exist and turn Ready on
paper; the real proof of the RBAC is the local process holding the chart identity's token.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.fixtures.operator import OperatorProcess
from tests.operator.kubehelp import condition, get, wait_for

from .conftest import create_namespace, token_kubeconfig, unique
from .helmtool import CHART, KUBE_VERSION, ROOT, helm, set_args

pytestmark = [pytest.mark.cluster, pytest.mark.helm, pytest.mark.slow]

INSTALL_VALUES = {
    "replicaCount": 2,  # leader election on: the Lease Role is part of what is proven
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "grafanaDashboard": {"enabled": True},
    "podDisruptionBudget": {"enabled": True},
    "networkPolicy": {"enabled": True, "egress": {"enabled": True}},
}
LEADER_IDENTITY = "chart-identity-proof"


def kubectl_as(cluster, kubeconfig: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([cluster.kubectl_binary, f"--kubeconfig={kubeconfig}", *args], capture_output=True,
                          text=True, timeout=60, input=input)


def helm_on(cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return helm(*args, kubeconfig=Path(cluster.kubeconfig), check=check)


def sample_docs() -> list[dict]:
    docs = [d for d in yaml.safe_load_all((ROOT / "manifests" / "samples" / "api-key-model.yaml").read_text()) if d]
    for doc in docs:
        if doc["kind"] == "VLLMDeployment":
            # Every child kind the operator can make on this cluster: the NetworkPolicy too.
            doc["spec"]["networkPolicy"] = {"enabled": True}
    return docs


# --- server-side dry runs ----------------------------------------------------------------------


def test_helm_template_output_passes_a_server_side_dry_run(chart_cluster):
    ns = create_namespace(chart_cluster, unique("dry-helm"))
    try:
        rendered = helm("template", "dry", str(CHART), "--namespace", ns, "--kube-version", KUBE_VERSION,
                        "--include-crds", *set_args(INSTALL_VALUES)).stdout
        kinds = {d["kind"] for d in yaml.safe_load_all(rendered) if d}
        assert {"CustomResourceDefinition", "ServiceMonitor", "PrometheusRule", "NetworkPolicy",
                "PodDisruptionBudget", "Role", "ClusterRole"} <= kinds
        proc = chart_cluster.kubectl("apply", "--server-side", "--dry-run=server", "--force-conflicts",
                                     "-f", "-", input=rendered, check=False)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.count("serverside-applied (server dry run)") == len(
            [d for d in yaml.safe_load_all(rendered) if d])
    finally:
        chart_cluster.kubectl("delete", "namespace", ns, "--wait=false")


@pytest.mark.parametrize("path", ["manifests/install", "manifests/install/monitoring"])
def test_kustomize_install_passes_a_server_side_dry_run(chart_cluster, path):
    # A dry-run Namespace is not persisted: the objects in it need the real one.
    create_namespace(chart_cluster, "scibox-system")
    built = chart_cluster.kubectl("kustomize", str(ROOT / path)).stdout
    docs = [d for d in yaml.safe_load_all(built) if d]
    assert docs
    proc = chart_cluster.kubectl("apply", "--server-side", "--dry-run=server", "--force-conflicts", "-f", "-",
                                 input=built, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("(server dry run)") == len(docs)


# --- install, and the operator under the chart's identity --------------------------------------


@pytest.fixture(scope="module")
def release(chart_cluster):
    """The chart installed into a namespace that enforces the `restricted` Pod Security profile."""
    ns = create_namespace(chart_cluster, unique("scibox-op"), {"pod-security.kubernetes.io/enforce": "restricted"})
    name = unique("op")
    helm_on(chart_cluster, "install", name, str(CHART), "--namespace", ns, *set_args(INSTALL_VALUES),
            "--wait", "--timeout", "120s")
    info = {"namespace": ns, "name": name, "service_account": f"{name}-scibox-vllm-operator",
            "installed": True}
    yield info
    if info["installed"]:
        helm_on(chart_cluster, "uninstall", name, "--namespace", ns, "--wait", check=False)
    chart_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture(scope="module")
def identity(chart_cluster, release, tmp_path_factory) -> Path:
    return token_kubeconfig(chart_cluster, release["namespace"], release["service_account"],
                            tmp_path_factory.mktemp("identity") / "kubeconfig")


@pytest.fixture(scope="module")
def chart_operator(chart_cluster, release, identity, tmp_path_factory):
    proc = OperatorProcess(identity, tmp_path_factory.mktemp("chart-operator"), hub_endpoint="http://127.0.0.1:9",
                           extra_env={"SCIBOX_LEADER_ELECTION_NAMESPACE": release["namespace"],
                                      "SCIBOX_OPERATOR_NAMESPACE": release["namespace"],
                                      "POD_NAME": LEADER_IDENTITY})
    proc.audit_from = chart_cluster.audit_offset()  # everything this identity asks from here on
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def reconciled(chart_cluster, release, chart_operator):
    """The api-key sample reconciled by the operator under the chart identity. Yields the
    workload namespace and the objects."""
    ns = create_namespace(chart_cluster, unique("models"))
    for doc in sample_docs():
        chart_cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(doc))
    name = "mistral-7b"

    def settled():
        vd = get(chart_cluster, "vllmd", name, ns)
        ready = condition(vd, "Ready") if vd else None
        return vd if ready and ready["reason"] == "EngineDown" and vd["status"].get("replicas") == 1 else None

    vd = wait_for(settled, timeout=120, what="the sample reconciled and probed")
    children = {kind: get(chart_cluster, kind, name, ns) for kind in
                ("deployment", "service", "servicemonitors.monitoring.coreos.com", "networkpolicy")}
    children["pvc"] = get(chart_cluster, "pvc", None, ns)["items"][0]
    children["job"] = get(chart_cluster, "jobs", None, ns)["items"][0]
    yield {"namespace": ns, "name": name, "vd": vd, "children": children}
    chart_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_chart_pods_pass_the_restricted_pod_security_profile(chart_cluster, release):
    pods = get(chart_cluster, "pods", None, release["namespace"])["items"]
    assert len(pods) == 2, "both replicas admitted in a namespace enforcing `restricted`"
    assert all(p["spec"]["serviceAccountName"] == release["service_account"] for p in pods)


def test_operator_with_only_the_chart_identity_fully_reconciles_a_sample(chart_cluster, release, identity,
                                                                         chart_operator, reconciled):
    ns, name, vd, children = reconciled["namespace"], reconciled["name"], reconciled["vd"], reconciled["children"]
    whoami = json.loads(kubectl_as(chart_cluster, identity, "auth", "whoami", "-o", "json").stdout)
    assert whoami["status"]["userInfo"]["username"] == \
        f"system:serviceaccount:{release['namespace']}:{release['service_account']}"

    # Children: written by server-side apply (create + patch), owned by the VLLMDeployment.
    for kind, child in children.items():
        assert child is not None, kind
        assert child["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "scibox-vllm-operator", kind
        if kind != "pvc":  # the cache claim outlives its model unless cache.deletionPolicy is Delete
            assert child["metadata"]["ownerReferences"][0]["uid"] == vd["metadata"]["uid"], kind
    assert children["job"]["status"].get("succeeded") == 1
    # Status (patch on vllmdeployments/status), with the prober's verdict: it read the API key
    # Secret (get secrets) and reached the kwok pod address, where no server listens.
    assert vd["status"]["phase"] == "Deploying"
    assert condition(vd, "ModelCached")["status"] == "True"
    assert condition(vd, "Ready")["reason"] == "EngineDown"
    # An Event (create events) for the phase changes.
    events = get(chart_cluster, "events", None, ns)["items"]
    assert any(e["involvedObject"].get("name") == name and e.get("source", {}).get("component") ==
               "scibox-vllm-operator" for e in events)
    # Leader election through the namespaced Role.
    lease = get(chart_cluster, "lease", "scibox-vllm-operator", release["namespace"])
    assert lease["spec"]["holderIdentity"] == LEADER_IDENTITY

    # Turning features off makes it delete children (delete on servicemonitors, networkpolicies).
    vd_doc = next(d for d in sample_docs() if d["kind"] == "VLLMDeployment")
    vd_doc["spec"]["monitoring"] = {"serviceMonitor": False}
    vd_doc["spec"]["networkPolicy"] = {"enabled": False}
    chart_cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(vd_doc))
    wait_for(lambda: get(chart_cluster, "servicemonitors.monitoring.coreos.com", name, ns) is None
             and get(chart_cluster, "networkpolicy", name, ns) is None,
             timeout=60, what="ServiceMonitor and NetworkPolicy deleted")
    wait_for(lambda: get(chart_cluster, "vllmd", name, ns)["status"].get("observedGeneration") == 2,
             timeout=60, what="generation 2 observed")

    # Not one request refused, by the API server's own audit log of this identity (the
    # cluster's controllers get 403s of their own, e.g. writing into terminating namespaces).
    user = f"system:serviceaccount:{release['namespace']}:{release['service_account']}"
    audited = chart_cluster.audit_events(user, since=chart_operator.audit_from)
    refs = [(e["verb"], e.get("objectRef") or {}) for e in audited]  # discovery has no objectRef
    answered = {(verb, ref.get("resource"), ref.get("subresource")) for verb, ref in refs}
    assert {("patch", "vllmdeployments", "status"), ("create", "events", None),
            ("watch", "vllmdeployments", None)} <= answered, sorted(map(str, answered))
    assert {verb for verb, resource, _ in answered if resource == "leases"} & {"create", "update"}
    refused = [(e["verb"], e["requestURI"]) for e in audited if e.get("responseStatus", {}).get("code") == 403]
    assert refused == [], f"requests refused while the operator ran: {refused}"
    log = chart_operator.log_path.read_text(errors="replace")
    assert not re.search(r"\b403\b|[Ff]orbidden", log), chart_operator.log_tail()


def test_a_gateways_router_account_is_made_under_the_chart_identity(chart_cluster, release, chart_operator,
                                                                     reconciled):
    """A VLLMGateway's Role grants pods list/watch: the API server lets the chart identity
    create it and bind it only because that identity holds those verbs itself (no escalate, no
    bind). Not one request of the identity is refused meanwhile."""
    ns = reconciled["namespace"]
    since = chart_cluster.audit_offset()
    gw = {"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMGateway", "metadata": {"name": "gw", "namespace": ns},
          "spec": {"policy": "power_of_two"}}
    chart_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(gw))

    def made():
        kids = {kind: get(chart_cluster, kind, "gw-router", ns) for kind in
                ("serviceaccount", "role", "rolebinding", "deployment")}
        body = get(chart_cluster, "vllmgw", "gw", ns)
        return (kids, body) if all(kids.values()) and condition(body, "Ready") else None

    kids, body = wait_for(made, timeout=60, what="the gateway's children and status under the chart identity")
    assert kids["role"]["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}]
    assert kids["rolebinding"]["subjects"] == [{"kind": "ServiceAccount", "name": "gw-router", "namespace": ns}]
    assert get(chart_cluster, "service", "gw", ns) is not None
    assert get(chart_cluster, "servicemonitors.monitoring.coreos.com", "gw", ns) is not None
    assert [m["deployment"] for m in body["status"]["models"]] == [reconciled["name"]]
    user = f"system:serviceaccount:{release['namespace']}:{release['service_account']}"
    audited = chart_cluster.audit_events(user, since=since)
    refused = [(e["verb"], e["requestURI"]) for e in audited if e.get("responseStatus", {}).get("code") == 403]
    assert refused == [], f"requests refused: {refused}"


@pytest.fixture(scope="module")
def chart_lws(chart_cluster):
    """The LeaderWorkerSet controller on the chart cluster, until the module's end: removing its
    CRD under a running operator ends the operator (kopf's watch of it fails with a 404)."""
    from tools.localcluster.lws import LwsController

    lws = LwsController(chart_cluster)
    lws.start(register=True)
    yield lws
    lws.leave()


def test_a_multi_node_model_is_reconciled_and_its_status_written_under_the_chart_identity(
        chart_cluster, release, chart_operator, chart_lws):
    """issue 18: the multi-node path GETs its LeaderWorkerSet on every pass; under the chart's
    ServiceAccount its status is written, and no request of the operator is refused."""
    ns = create_namespace(chart_cluster, unique("multi"))
    since = chart_cluster.audit_offset()
    try:
        chart_cluster.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump({
            "apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment", "metadata": {"name": "huge"},
            # Not on any hub (the operator's is a closed port here): explicit sizes deploy without it.
            # The group's pods mount the cache from two nodes: ReadWriteMany (the local
            # provisioner's hostPath volumes take any mode).
            "spec": {"model": {"name": "scibox/stand-in-405b"}, "cache": {"size": "1Gi", "accessMode": "ReadWriteMany"},
                     "parallelism": {"tensorParallelSize": 8, "pipelineParallelSize": 2}}}))
        group = wait_for(lambda: get(chart_cluster, "leaderworkerset", "huge-group", ns), timeout=120,
                         what="the LeaderWorkerSet")
        assert group["spec"]["leaderWorkerTemplate"]["size"] == 2
        vd = wait_for(lambda: (lambda o: o if (condition(o, "UpToDate") or {}).get("reason") and
                               o["status"].get("gpusPerReplica") == 16 else None)(get(chart_cluster, "vllmd", "huge", ns)),
                      timeout=120, what="the multi-node status written")
        assert vd["status"]["phase"] != "Failed", vd["status"]
        # Ray's ports are closed to all but the group even without the optional policy.
        policy = get(chart_cluster, "networkpolicy", "huge", ns)
        assert policy["spec"]["ingress"][1]["from"][0]["podSelector"]["matchLabels"][
            "app.kubernetes.io/instance"] == "huge"
        user = f"system:serviceaccount:{release['namespace']}:{release['service_account']}"
        audited = chart_cluster.audit_events(user, since=since)
        lws_reads = [e for e in audited if (e.get("objectRef") or {}).get("resource") == "leaderworkersets"
                     and e["verb"] == "get"]
        assert lws_reads, "the group's status was not read from the API"
        refused = [(e["verb"], e["requestURI"]) for e in audited if e.get("responseStatus", {}).get("code") == 403]
        assert refused == [], f"requests refused on the multi-node path: {refused}"
    finally:
        chart_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_leader_election_hands_over_between_two_operators_with_the_chart_identity(
        chart_cluster, release, identity, chart_operator, reconciled, tmp_path):
    """replicaCount 2: the standby, holding the same token, waits; when the leader dies without
    releasing the Lease, the standby takes it over and reconciles (Role: get/update/create)."""
    import time

    ns, name = reconciled["namespace"], reconciled["name"]
    lease_ns = release["namespace"]
    standby = OperatorProcess(identity, tmp_path, hub_endpoint="http://127.0.0.1:9",
                              extra_env={"SCIBOX_LEADER_ELECTION_NAMESPACE": lease_ns,
                                         "SCIBOX_OPERATOR_NAMESPACE": lease_ns, "POD_NAME": "chart-identity-standby"})
    standby.start()
    try:
        time.sleep(6)  # more than one renew period of the standby
        lease = get(chart_cluster, "lease", "scibox-vllm-operator", lease_ns)
        assert lease["spec"]["holderIdentity"] == LEADER_IDENTITY, "the standby must not take a live lease"
        transitions = lease["spec"].get("leaseTransitions", 0)

        chart_operator.kill()  # SIGKILL: no hand-over, the lease has to expire
        killed = time.monotonic()
        lease = wait_for(lambda: (lambda l: l if l["spec"]["holderIdentity"] == "chart-identity-standby" else None)(
            get(chart_cluster, "lease", "scibox-vllm-operator", lease_ns)), timeout=60, what="the standby leading")
        print(f"\nleader takeover after SIGKILL: {time.monotonic() - killed:.1f} s")
        assert lease["spec"]["leaseTransitions"] == transitions + 1

        # The new leader acts: a spec change is observed and applied.
        generation = get(chart_cluster, "vllmd", name, ns)["metadata"]["generation"]
        chart_cluster.kubectl("patch", "vllmd", name, "-n", ns, "--type=merge",
                              "-p", '{"spec": {"engine": {"maxNumSeqs": 9}}}')
        wait_for(lambda: get(chart_cluster, "vllmd", name, ns)["status"].get("observedGeneration") == generation + 1,
                 timeout=60, what="the new leader reconciling")
        log = standby.log_path.read_text(errors="replace")
        assert not re.search(r"\b403\b|[Ff]orbidden", log), standby.log_tail()
    finally:
        standby.stop()
        chart_operator.start()  # back as the leader for the tests that follow


DENIED = [
    # (verb, resource, namespace or None for all namespaces, why the operator never needs it)
    ("list", "secrets", None, "Secrets are read by name"),
    ("watch", "secrets", "default", "Secrets are read by name"),
    ("update", "vllmdeployments.scibox.io", "default", "the spec is the user's"),
    ("patch", "vllmdeployments.scibox.io", "default", "only /status is written"),
    ("delete", "vllmdeployments.scibox.io", "default", "the user deletes models"),
    ("create", "pods", "default", "pods come from Deployments and Jobs"),
    ("get", "pods", "default", "pods are read from the watch cache"),
    ("delete", "persistentvolumeclaims", "default", "cache claims go with their owners (GC)"),
    ("delete", "services", "default", "Services go with their owners (GC)"),
    ("update", "nodes", None, "nodes are only read"),
    ("create", "clusterroles.rbac.authorization.k8s.io", None, "no RBAC writes"),
    ("list", "namespaces", None, "cluster-wide kopf does not observe namespaces"),
    ("create", "leases.coordination.k8s.io", "default", "leases only in the operator's namespace"),
]


@pytest.mark.parametrize("verb, resource, namespace, why", DENIED, ids=[f"{v}-{r.split('.')[0]}" for v, r, _, _ in DENIED])
def test_verbs_the_operator_does_not_need_are_denied(chart_cluster, release, identity, verb, resource, namespace, why):
    scope = ["--all-namespaces"] if namespace is None else ["-n", namespace]
    proc = kubectl_as(chart_cluster, identity, "auth", "can-i", verb, resource, *scope)
    assert proc.stdout.strip() == "no", f"{verb} {resource} should be denied: {why}"


def test_lease_rights_are_limited_to_the_operators_lease(chart_cluster, release, identity):
    ns = release["namespace"]
    def can(*args):
        return kubectl_as(chart_cluster, identity, "auth", "can-i", *args, "-n", ns).stdout.strip()
    assert can("update", "leases.coordination.k8s.io/scibox-vllm-operator") == "yes"
    assert can("update", "leases.coordination.k8s.io/some-other-controller") == "no"
    assert can("delete", "leases.coordination.k8s.io/scibox-vllm-operator") == "no"


def test_a_denied_request_really_is_refused(chart_cluster, release, identity):
    """can-i asks the authorizer; this makes the request itself."""
    proc = kubectl_as(chart_cluster, identity, "get", "secrets", "-n", "kube-system")
    assert proc.returncode != 0 and "Forbidden" in proc.stderr, proc.stderr
    granted = kubectl_as(chart_cluster, identity, "get", "nodes")
    assert granted.returncode == 0, granted.stderr


# --- upgrade and uninstall ---------------------------------------------------------------------


def uids(cluster, reconciled) -> dict[str, str]:
    ns, name = reconciled["namespace"], reconciled["name"]
    out = {"vllmd": get(cluster, "vllmd", name, ns)["metadata"]["uid"],
           "deployment": get(cluster, "deployment", name, ns)["metadata"]["uid"],
           "service": get(cluster, "service", name, ns)["metadata"]["uid"],
           "pvc": get(cluster, "pvc", None, ns)["items"][0]["metadata"]["uid"],
           "crd": get(cluster, "crd", "vllmdeployments.scibox.io")["metadata"]["uid"]}
    return out


def test_helm_upgrade_keeps_crs_and_their_children(chart_cluster, release, reconciled):
    before = uids(chart_cluster, reconciled)
    sa_before = get(chart_cluster, "serviceaccount", release["service_account"], release["namespace"])
    helm_on(chart_cluster, "upgrade", release["name"], str(CHART), "--namespace", release["namespace"],
            *set_args(INSTALL_VALUES), "--set", "operator.probe.periodSeconds=3", "--wait", "--timeout", "120s")
    history = helm_on(chart_cluster, "history", release["name"], "-n", release["namespace"], "-o", "json").stdout
    assert [r["revision"] for r in json.loads(history)][-1] == 2
    dep = get(chart_cluster, "deployment", release["service_account"], release["namespace"])
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SCIBOX_PROBE_PERIOD"] == "3"
    assert uids(chart_cluster, reconciled) == before
    sa_after = get(chart_cluster, "serviceaccount", release["service_account"], release["namespace"])
    assert sa_after["metadata"]["uid"] == sa_before["metadata"]["uid"], "tokens of the running operator stay valid"


def test_helm_uninstall_leaves_the_crd_and_the_crs(chart_cluster, release, reconciled, chart_operator):
    before = uids(chart_cluster, reconciled)
    chart_operator.stop()
    cluster_role = f"{release['namespace']}-{release['service_account']}"
    assert get(chart_cluster, "clusterrole", cluster_role) is not None
    helm_on(chart_cluster, "uninstall", release["name"], "--namespace", release["namespace"], "--wait")
    release["installed"] = False
    assert get(chart_cluster, "clusterrole", cluster_role) is None, "the chart's own objects go"
    assert get(chart_cluster, "deployment", release["service_account"], release["namespace"]) is None
    after = uids(chart_cluster, reconciled)
    assert after == before, "CRD (crds/ is never deleted by helm), CRs and their children stay"
