"""The real LeaderWorkerSet controller (sigs.k8s.io/lws) on the local cluster.

The GPU placement tests run on a private cluster with four 8-GPU nodes, so two groups of two
8-GPU pods fit and a third does not, whatever other sessions do on the shared cluster. One
test uses the session `lws` fixture on the shared cluster with CPU-only pods.
"""

from __future__ import annotations

import base64
import ipaddress
import uuid

import psutil
import pytest
import yaml

from tests.waiting import wait_for as poll
from tools.localcluster import Cluster, NodeShape
from tools.localcluster import lws as lws_mod
from tools.localcluster.lws import (
    ENV_GROUP_SIZE,
    ENV_LEADER_ADDRESS,
    ENV_WORKER_INDEX,
    GROUP_INDEX_LABEL,
    GROUP_KEY_LABEL,
    LEADER_NAME_ANNOTATION,
    NAME_LABEL,
    REVISION_LABEL,
    SIZE_ANNOTATION,
    WORKER_INDEX_LABEL,
    LwsController,
    container_env,
)
from tools.localcluster.nodes import GPU_RESOURCE, H100_LABELS
from tools.localcluster.rest import ApiError

WAIT = 90.0  # generous ceiling for polling; not a performance assertion
LWS_API = "/apis/leaderworkerset.x-k8s.io/v1"


def wait_for(what: str, probe, timeout: float = WAIT):
    return poll(what, probe, timeout)


def leaderworkerset(name: str, size: int, gpus: int = 0, replicas: int = 1) -> dict:
    container = {"name": "vllm", "image": "vllm/vllm-openai:v0.32.0"}
    if gpus:
        container["resources"] = {"limits": {GPU_RESOURCE: str(gpus)}}
    return {
        "apiVersion": lws_mod.API_VERSION, "kind": "LeaderWorkerSet",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "leaderWorkerTemplate": {
            "size": size,
            "workerTemplate": {"metadata": {"labels": {"app": name}},
                               "spec": {"containers": [container]}},
        }},
    }


def lws_path(namespace: str, name: str = "") -> str:
    return f"{LWS_API}/namespaces/{namespace}/leaderworkersets" + (f"/{name}" if name else "")


def member_pods(rest, namespace: str, name: str) -> dict[str, dict]:
    selector = f"{NAME_LABEL}={name}"
    items = rest.get(f"/api/v1/namespaces/{namespace}/pods?labelSelector={selector}")["items"]
    return {p["metadata"]["name"]: p for p in items}


def is_ready(pod: dict) -> bool:
    return pod["status"].get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def available(rest, namespace: str, name: str, ready_replicas: int):
    obj = rest.get(lws_path(namespace, name))
    conditions = {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}
    ok = (conditions.get("Available") == "True"
          and obj["status"].get("readyReplicas", 0) == ready_replicas)
    return obj if ok else None


def scale(rest, namespace: str, name: str, replicas: int) -> None:
    rest.request("PATCH", lws_path(namespace, name), {"spec": {"replicas": replicas}},
                 "application/merge-patch+json")


# ---- pure parts ----------------------------------------------------------------------------
def test_webhook_configurations_follow_upstream_and_point_at_loopback():
    upstream = lws_mod.upstream_webhook_manifests()
    ca = b"-----BEGIN CERTIFICATE-----\nfake\n-----END CERTIFICATE-----\n"
    configs = lws_mod.webhook_configurations(upstream, "https://127.0.0.1:9443", ca)

    upstream_hooks = {h["name"]: h for d in upstream for h in d["webhooks"]}
    hooks = {h["name"]: h for c in configs for h in c["webhooks"]}
    assert set(hooks) == set(upstream_hooks) == {
        "mleaderworkerset.kb.io", "mpod.kb.io", "vleaderworkerset.kb.io", "vpod.kb.io"}
    for name, hook in hooks.items():
        assert hook["clientConfig"]["url"] == (
            "https://127.0.0.1:9443" + upstream_hooks[name]["clientConfig"]["service"]["path"])
        assert "service" not in hook["clientConfig"]
        assert base64.b64decode(hook["clientConfig"]["caBundle"]) == ca
        assert hook["rules"] == upstream_hooks[name]["rules"]
        assert hook["failurePolicy"] == "Fail"
    # Only the Pod hooks are narrowed, to pods claiming LWS membership.
    for name in ("mpod.kb.io", "vpod.kb.io"):
        assert hooks[name]["objectSelector"] == {
            "matchExpressions": [{"key": NAME_LABEL, "operator": "Exists"}]}
    for name in ("mleaderworkerset.kb.io", "vleaderworkerset.kb.io"):
        assert "objectSelector" not in hooks[name]
    assert {c["metadata"]["name"] for c in configs} == {
        lws_mod.MUTATING_NAME, lws_mod.VALIDATING_NAME}
    # The upstream input is left as it was.
    assert all("service" in h["clientConfig"] for d in upstream for h in d["webhooks"])


def test_webhook_configurations_refuse_a_plain_http_url():
    with pytest.raises(ValueError, match="https"):
        lws_mod.webhook_configurations(lws_mod.upstream_webhook_manifests(),
                                       "http://127.0.0.1:9443", b"ca")


def test_controller_config_binds_loopback_and_disables_cert_management(tmp_path):
    config = lws_mod.controller_config(1001, tmp_path, 1002, 1003)
    # It must survive YAML, which is how the controller reads it.
    config = yaml.safe_load(yaml.safe_dump(config))
    assert config["kind"] == "Configuration"
    assert config["apiVersion"] == "config.lws.x-k8s.io/v1alpha1"
    assert config["internalCertManagement"] == {"enable": False}
    assert config["leaderElection"] == {"leaderElect": False}
    assert config["webhook"] == {"host": "127.0.0.1", "port": 1001, "certDir": str(tmp_path)}
    assert config["metrics"]["bindAddress"] == "127.0.0.1:1002"
    assert config["health"]["healthProbeBindAddress"] == "127.0.0.1:1003"


def test_the_crd_comes_from_the_module_at_the_pinned_version():
    crd = lws_mod.crd_manifest()
    assert crd["metadata"]["name"] == lws_mod.CRD_NAME
    assert crd["metadata"]["labels"][lws_mod.VERSION_LABEL] == lws_mod.versions.LWS
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1" and version["served"] and version["storage"]
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"


def test_the_last_live_user_stops_the_controller(tmp_path):
    import os

    controller = LwsController(Cluster(name="unit", state_dir=tmp_path / "unit"))
    users = controller.dir / "users"
    controller._register(started=True)
    # Another live process still uses it: leaving does not stop it.
    (users / str(os.getppid())).write_text("reused\n")
    assert controller._release() is False
    # Only a dead user is left (a crashed session): the next one out stops it.
    controller._register(started=False)
    (users / str(os.getppid())).unlink()
    (users / "999999999").write_text("started\n")
    assert controller._release() is True
    assert not any(users.iterdir())


def test_a_controller_nobody_started_is_left_running(tmp_path):
    # Reused from `python -m tools.localcluster.lws start`: sessions do not stop it.
    controller = LwsController(Cluster(name="unit", state_dir=tmp_path / "unit"))
    controller._register(started=False)
    assert controller._release() is False


# ---- a private cluster with four 8-GPU nodes -----------------------------------------------
@pytest.fixture(scope="module")
def gpu_cluster():
    name = f"lws-{uuid.uuid4().hex[:8]}"
    shapes = [NodeShape(f"gpu-{i}", cpu="96", memory="1Ti", gpus=8, labels=dict(H100_LABELS))
              for i in range(4)]
    shapes.append(NodeShape("cpu-0"))
    handle = Cluster.up(name=name, nodes=shapes)
    assert handle.started
    controller = LwsController(handle)
    try:
        controller.start()
        assert controller.started
        yield handle, controller
    finally:
        controller.stop()
        handle.down()


@pytest.fixture
def gpu_ns(gpu_cluster):
    """A namespace on the private cluster; afterwards deleted and waited for until its pods
    are gone, so the next test finds every GPU free."""
    cluster, _ = gpu_cluster
    rest = cluster.rest
    name = f"t-{uuid.uuid4().hex[:8]}"
    rest.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                       "metadata": {"name": name}})
    wait_for("the default ServiceAccount", lambda: rest.get_or_none(
        f"/api/v1/namespaces/{name}/serviceaccounts/default"))
    yield name
    rest.delete(f"/api/v1/namespaces/{name}")
    wait_for("the namespace's pods to go", lambda: not rest.get(
        f"/api/v1/namespaces/{name}/pods")["items"])


@pytest.mark.cluster
@pytest.mark.slow  # the private cluster's setup, mostly the GC's discovery resync
def test_group_of_two_8_gpu_pods_spans_two_nodes_is_ready_and_deleting_removes_it(
        gpu_cluster, gpu_ns):
    cluster, _ = gpu_cluster
    rest = cluster.rest
    created = rest.create(lws_path(gpu_ns), leaderworkerset("llm", size=2, gpus=8))
    # The defaulting webhook ran (these are not schema defaults).
    template = created["spec"]["leaderWorkerTemplate"]
    assert template["restartPolicy"] == "RecreateGroupOnPodRestart"
    assert created["spec"]["rolloutStrategy"]["type"] == "RollingUpdate"
    assert created["spec"]["networkConfig"]["subdomainPolicy"] == "Shared"

    wait_for("LWS Available with 1 ready group", lambda: available(rest, gpu_ns, "llm", 1))
    pods = member_pods(rest, gpu_ns, "llm")
    assert set(pods) == {"llm-0", "llm-0-1"}
    leader, worker = pods["llm-0"], pods["llm-0-1"]
    assert is_ready(leader) and is_ready(worker)

    # Labels: the leader is worker 0 of group 0; both share the group key and revision.
    for pod, index in ((leader, "0"), (worker, "1")):
        labels = pod["metadata"]["labels"]
        assert labels[NAME_LABEL] == "llm"
        assert labels[GROUP_INDEX_LABEL] == "0"
        assert labels[WORKER_INDEX_LABEL] == index
        assert labels["app"] == "llm"  # the template's own labels are kept
        assert pod["metadata"]["annotations"][SIZE_ANNOTATION] == "2"
        assert pod["spec"]["subdomain"] == "llm"
        env = container_env(pod)
        assert env[ENV_LEADER_ADDRESS] == f"llm-0.llm.{gpu_ns}"
        assert env[ENV_GROUP_SIZE] == "2"
        assert env[ENV_WORKER_INDEX] == index
    assert leader["metadata"]["labels"][GROUP_KEY_LABEL] == worker["metadata"]["labels"][GROUP_KEY_LABEL]
    assert leader["metadata"]["labels"][REVISION_LABEL] == worker["metadata"]["labels"][REVISION_LABEL]
    assert worker["metadata"]["annotations"][LEADER_NAME_ANNOTATION] == "llm-0"
    assert LEADER_NAME_ANNOTATION not in leader["metadata"]["annotations"]

    # Placement: 8 GPUs each on two different 8-GPU nodes.
    nodes = {leader["spec"]["nodeName"], worker["spec"]["nodeName"]}
    assert len(nodes) == 2 and all(n.startswith("gpu-") for n in nodes)
    for pod in (leader, worker):
        assert pod["spec"]["containers"][0]["resources"]["limits"][GPU_RESOURCE] == "8"
        assert ipaddress.ip_address(pod["status"]["podIP"]).is_loopback

    # The objects LWS made: a leader StatefulSet, a worker StatefulSet per group, a headless
    # Service named after the LWS selecting every member.
    sts = {s["metadata"]["name"]: s for s in
           rest.get(f"/apis/apps/v1/namespaces/{gpu_ns}/statefulsets")["items"]}
    assert set(sts) == {"llm", "llm-0"}
    assert sts["llm-0"]["metadata"]["ownerReferences"][0]["name"] == "llm-0"  # the leader pod
    service = rest.get(f"/api/v1/namespaces/{gpu_ns}/services/llm")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {NAME_LABEL: "llm"}

    rest.delete(lws_path(gpu_ns, "llm"))
    wait_for("every member pod to go", lambda: not member_pods(rest, gpu_ns, "llm"))
    wait_for("the StatefulSets to go", lambda: not rest.get(
        f"/apis/apps/v1/namespaces/{gpu_ns}/statefulsets")["items"])


@pytest.mark.cluster
@pytest.mark.slow  # the private cluster's setup, mostly the GC's discovery resync
def test_scaling_adds_groups_until_the_gpus_run_out(gpu_cluster, gpu_ns):
    cluster, _ = gpu_cluster
    rest = cluster.rest
    rest.create(lws_path(gpu_ns), leaderworkerset("llm", size=2, gpus=8))
    wait_for("1 ready group", lambda: available(rest, gpu_ns, "llm", 1))

    scale(rest, gpu_ns, "llm", 2)
    wait_for("2 ready groups", lambda: available(rest, gpu_ns, "llm", 2))
    pods = member_pods(rest, gpu_ns, "llm")
    assert set(pods) == {"llm-0", "llm-0-1", "llm-1", "llm-1-1"}
    assert all(is_ready(p) for p in pods.values())
    assert pods["llm-1"]["metadata"]["labels"][GROUP_INDEX_LABEL] == "1"
    assert pods["llm-1"]["metadata"]["labels"][WORKER_INDEX_LABEL] == "0"
    assert container_env(pods["llm-1-1"])[ENV_LEADER_ADDRESS] == f"llm-1.llm.{gpu_ns}"
    assert len({p["spec"]["nodeName"] for p in pods.values()}) == 4  # all four GPU nodes

    # A third group does not fit: its pods exist but stay Pending for lack of GPUs, and the
    # LWS reports 2 ready groups out of 3, not Available.
    scale(rest, gpu_ns, "llm", 3)

    def third_group_unschedulable():
        pods = member_pods(rest, gpu_ns, "llm")
        third = [pods.get("llm-2"), pods.get("llm-2-1")]
        if not all(third):
            return None
        reasons = [next((c for c in p["status"].get("conditions", [])
                         if c["type"] == "PodScheduled"), {}) for p in third]
        return reasons if all(r.get("reason") == "Unschedulable" for r in reasons) else None

    reasons = wait_for("the third group to be Unschedulable", third_group_unschedulable)
    assert all(GPU_RESOURCE in r["message"] for r in reasons)
    obj = rest.get(lws_path(gpu_ns, "llm"))
    conditions = {c["type"]: c["status"] for c in obj["status"]["conditions"]}
    assert conditions.get("Available") != "True"
    assert obj["status"]["readyReplicas"] == 2

    # Scaling down removes the highest group first, and the LWS is Available again.
    scale(rest, gpu_ns, "llm", 1)
    wait_for("back to 1 group", lambda: set(member_pods(rest, gpu_ns, "llm")) == {"llm-0", "llm-0-1"})
    wait_for("1 ready group", lambda: available(rest, gpu_ns, "llm", 1))


@pytest.mark.cluster
@pytest.mark.slow  # the private cluster's setup, mostly the GC's discovery resync
def test_leader_template_and_a_service_selecting_only_leaders(gpu_cluster, gpu_ns):
    """The vLLM multi-node shape: the leader runs its own command and readiness probe (Ray
    head + API server), workers another (Ray workers); a Service selects leaders only."""
    cluster, _ = gpu_cluster
    rest = cluster.rest
    manifest = leaderworkerset("llm", size=2, gpus=8)
    template = manifest["spec"]["leaderWorkerTemplate"]
    leader_container = dict(template["workerTemplate"]["spec"]["containers"][0],
                            command=["sh", "-c", "ray start --head && exec vllm serve"],
                            ports=[{"name": "http", "containerPort": 8000}],
                            readinessProbe={"httpGet": {"path": "/health", "port": "http"}})
    template["leaderTemplate"] = {"metadata": {"labels": {"app": "llm", "role": "leader"}},
                                  "spec": {"containers": [leader_container]}}
    template["workerTemplate"]["spec"]["containers"][0]["command"] = [
        "sh", "-c", 'exec ray start --address="$LWS_LEADER_ADDRESS:6379" --block']
    rest.create(lws_path(gpu_ns), manifest)
    rest.create(f"/api/v1/namespaces/{gpu_ns}/services", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "llm-api"},
        "spec": {"selector": {NAME_LABEL: "llm", WORKER_INDEX_LABEL: "0"},
                 "ports": [{"name": "http", "port": 8000, "targetPort": "http"}]}})
    wait_for("1 ready group", lambda: available(rest, gpu_ns, "llm", 1))

    pods = member_pods(rest, gpu_ns, "llm")
    leader, worker = pods["llm-0"], pods["llm-0-1"]
    assert leader["spec"]["containers"][0]["command"][-1] == "ray start --head && exec vllm serve"
    assert leader["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/health"
    assert leader["metadata"]["labels"]["role"] == "leader"
    assert "ray start --address" in worker["spec"]["containers"][0]["command"][-1]
    assert "readinessProbe" not in worker["spec"]["containers"][0]
    assert "role" not in worker["metadata"]["labels"]

    # What the Service selects. (Its EndpointSlice stays empty here: EndpointSlice validation
    # refuses the loopback pod IPs this cluster hands out.)
    service = rest.get(f"/api/v1/namespaces/{gpu_ns}/services/llm-api")
    selector = ",".join(f"{k}={v}" for k, v in sorted(service["spec"]["selector"].items()))
    selected = rest.get(f"/api/v1/namespaces/{gpu_ns}/pods?labelSelector={selector}")["items"]
    assert [p["metadata"]["name"] for p in selected] == ["llm-0"]


@pytest.mark.cluster
@pytest.mark.slow  # the private cluster's setup, mostly the GC's discovery resync
def test_validating_webhook_refuses_an_empty_group(gpu_cluster, gpu_ns):
    cluster, _ = gpu_cluster
    with pytest.raises(ApiError) as refused:
        cluster.rest.create(lws_path(gpu_ns), leaderworkerset("bad", size=0))
    assert "size must be equal or greater than 1" in refused.value.body
    assert "vleaderworkerset.kb.io" in refused.value.body


@pytest.mark.cluster
@pytest.mark.slow  # the private cluster's setup, mostly the GC's discovery resync
def test_controller_listens_and_connects_on_loopback_only(gpu_cluster):
    _, controller = gpu_cluster
    proc = psutil.Process(controller.pid)
    conns = proc.net_connections(kind="inet")
    listening = {c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN}
    assert set(controller.state()["ports"].values()) <= listening
    for conn in conns:
        for addr in (conn.laddr, conn.raddr):
            if addr:
                assert ipaddress.ip_address(addr.ip).is_loopback, conn


@pytest.mark.cluster
@pytest.mark.slow  # the private cluster's setup, mostly the GC's discovery resync
def test_stopped_controller_leaves_other_pods_alone_and_starts_again(gpu_cluster, gpu_ns):
    cluster, controller = gpu_cluster
    rest = cluster.rest
    old_pid = controller.pid
    controller.stop()
    assert controller.pid is None
    assert not psutil.pid_exists(old_pid) or str(cluster.state_dir) not in " ".join(
        psutil.Process(old_pid).cmdline())
    assert rest.get_or_none(f"{lws_mod.MUTATING_PATH}/{lws_mod.MUTATING_NAME}") is None
    assert rest.get_or_none(f"{lws_mod.VALIDATING_PATH}/{lws_mod.VALIDATING_NAME}") is None
    # No webhook stands in the way of ordinary pods while the controller is down.
    rest.create(f"/api/v1/namespaces/{gpu_ns}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "plain"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}})

    controller.start()
    assert controller.started and controller.pid != old_pid
    assert controller.ready()
    # A second start finds it ready and changes nothing.
    again = LwsController(cluster)
    again.start()
    assert not again.started and again.pid == controller.pid


# ---- the session fixture on the shared cluster ---------------------------------------------
@pytest.mark.cluster
def test_session_fixture_runs_lws_on_the_shared_cluster(cluster, lws, namespace):
    rest = cluster.rest
    assert lws.ready()
    rest.create(lws_path(namespace), leaderworkerset("cpu-group", size=2))
    wait_for("LWS Available", lambda: available(rest, namespace, "cpu-group", 1))
    pods = member_pods(rest, namespace, "cpu-group")
    assert set(pods) == {"cpu-group-0", "cpu-group-0-1"}
    assert container_env(pods["cpu-group-0-1"])[ENV_LEADER_ADDRESS] == (
        f"cpu-group-0.cpu-group.{namespace}")
    rest.delete(lws_path(namespace, "cpu-group"))
    wait_for("the member pods to go", lambda: not member_pods(rest, namespace, "cpu-group"))
