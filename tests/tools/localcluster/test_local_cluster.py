"""Acceptance tests of the local cluster: real apiserver, scheduler, controllers, kwok nodes."""

from __future__ import annotations

import ipaddress
import time
import uuid
from pathlib import Path

import psutil
import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.waiting import wait_for as poll
from tools.localcluster import Cluster, NodeShape, versions
from tools.localcluster.provisioner import STORAGE_CLASS

pytestmark = pytest.mark.cluster

WAIT = 60.0  # generous ceiling for polling; not a performance assertion


def wait_for(what: str, probe, timeout: float = WAIT):
    return poll(what, probe, timeout)


def gpu_deployment(name: str, gpus: int) -> client.V1Deployment:
    labels = {"app": name}
    container = client.V1Container(
        name="vllm", image="vllm/vllm-openai:fake",
        resources=client.V1ResourceRequirements(limits={"nvidia.com/gpu": str(gpus)}),
    )
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[container]),
            ),
        ),
    )


def pods_of(core: client.CoreV1Api, namespace: str, app: str) -> list[client.V1Pod]:
    return core.list_namespaced_pod(namespace, label_selector=f"app={app}").items


def test_deployment_of_8_gpus_is_scheduled_on_a_gpu_node_and_becomes_available(kube, namespace):
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    apps.create_namespaced_deployment(namespace, gpu_deployment("llm", 8))

    def available():
        dep = apps.read_namespaced_deployment_status("llm", namespace)
        conds = {c.type: c.status for c in dep.status.conditions or []}
        return conds.get("Available") == "True" and dep.status.ready_replicas == 1

    wait_for("Deployment Available", available)
    (pod,) = pods_of(core, namespace, "llm")
    node = core.read_node(pod.spec.node_name)
    assert node.metadata.labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert node.status.allocatable["nvidia.com/gpu"] == "8"
    assert pod.status.phase == "Running"
    assert ipaddress.ip_address(pod.status.pod_ip).is_loopback
    assert ipaddress.ip_address(pod.status.host_ip).is_loopback


def test_deployment_of_9_gpus_stays_pending_as_unschedulable(kube, namespace):
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    apps.create_namespaced_deployment(namespace, gpu_deployment("too-big", 9))

    def unschedulable():
        for pod in pods_of(core, namespace, "too-big"):
            for cond in pod.status.conditions or []:
                if cond.type == "PodScheduled" and cond.reason == "Unschedulable":
                    return pod, cond
        return None

    pod, cond = wait_for("PodScheduled=False/Unschedulable", unschedulable)
    assert cond.status == "False"
    assert "nvidia.com/gpu" in cond.message
    assert pod.status.phase == "Pending" and not pod.spec.node_name


def test_deleting_an_owner_deletes_its_dependents(kube, namespace):
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    owner = core.create_namespaced_config_map(namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="owner")))
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(
        name="dependent", owner_references=[client.V1OwnerReference(
            api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)])))
    apps.create_namespaced_deployment(namespace, gpu_deployment("gc", 1))
    wait_for("the Deployment's pod", lambda: pods_of(core, namespace, "gc"))

    core.delete_namespaced_config_map("owner", namespace)
    apps.delete_namespaced_deployment("gc", namespace, propagation_policy="Background")

    def gone():
        names = {c.metadata.name for c in core.list_namespaced_config_map(namespace).items}
        replica_sets = apps.list_namespaced_replica_set(namespace).items
        return "dependent" not in names and not replica_sets and not pods_of(core, namespace, "gc")

    wait_for("garbage collection of the dependents", gone)


def test_service_account_needs_a_role_to_list(cluster, kube, namespace):
    core, rbac = client.CoreV1Api(kube), client.RbacAuthorizationV1Api(kube)
    audit_from = cluster.audit_offset()
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(
        metadata=client.V1ObjectMeta(name="reader")))
    token = core.create_namespaced_service_account_token("reader", namespace, client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600))).status.token
    config = client.Configuration()
    config.host = cluster.apiserver_url
    config.ssl_ca_cert = str(cluster.pki_dir / "ca.crt")
    config.api_key = {"authorization": f"Bearer {token}"}
    with client.ApiClient(config) as as_reader:
        reader = client.CoreV1Api(as_reader)
        with pytest.raises(ApiException) as denied:
            reader.list_namespaced_config_map(namespace)
        assert denied.value.status == 403
        assert f"system:serviceaccount:{namespace}:reader" in denied.value.body

        rbac.create_namespaced_role(namespace, client.V1Role(
            metadata=client.V1ObjectMeta(name="cm-reader"),
            rules=[client.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["list"])]))
        rbac.create_namespaced_role_binding(namespace, client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name="cm-reader"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="cm-reader"),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=namespace)]))

        def allowed():
            try:
                return reader.list_namespaced_config_map(namespace) is not None
            except ApiException as exc:
                if exc.status != 403:
                    raise
                return False

        wait_for("the RoleBinding to take effect", allowed)
        # The Role grants configmaps only.
        with pytest.raises(ApiException) as still_denied:
            reader.list_namespaced_secret(namespace)
        assert still_denied.value.status == 403

    # The audit log tells this user's answers apart from everyone else's.
    answers = [(e["objectRef"]["resource"], e["responseStatus"]["code"])
               for e in cluster.audit_events(f"system:serviceaccount:{namespace}:reader", since=audit_from)
               if "objectRef" in e]
    assert answers[0] == ("configmaps", 403) and ("configmaps", 200) in answers
    assert answers[-1] == ("secrets", 403)


def test_pvc_of_the_default_class_binds_to_a_host_path_volume(cluster, kube, namespace):
    core = client.CoreV1Api(kube)
    core.create_namespaced_persistent_volume_claim(namespace, client.V1PersistentVolumeClaim(
        metadata=client.V1ObjectMeta(name="model-cache"),
        spec=client.V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteMany"],
            resources=client.V1VolumeResourceRequirements(requests={"storage": "2Gi"}))))

    def bound():
        pvc = core.read_namespaced_persistent_volume_claim("model-cache", namespace)
        return pvc if pvc.status.phase == "Bound" else None

    pvc = wait_for("the PVC to bind", bound)
    assert pvc.spec.storage_class_name == STORAGE_CLASS  # set by the default-class admission
    pv = core.read_persistent_volume(pvc.spec.volume_name)
    expected = cluster.state_dir / "volumes" / namespace / "model-cache"
    assert pv.spec.host_path.path == str(expected)
    assert expected.is_dir()
    assert pv.spec.access_modes == ["ReadWriteMany"]
    assert pv.spec.claim_ref.uid == pvc.metadata.uid

    core.delete_namespaced_persistent_volume_claim("model-cache", namespace)
    wait_for("the released volume to be deleted", lambda: not expected.exists() and not any(
        v.metadata.name == pv.metadata.name for v in core.list_persistent_volume().items))


def test_job_pod_completes_and_the_job_succeeds(kube, namespace):
    batch, core = client.BatchV1Api(kube), client.CoreV1Api(kube)
    batch.create_namespaced_job(namespace, client.V1Job(
        metadata=client.V1ObjectMeta(name="warmup"),
        spec=client.V1JobSpec(backoff_limit=0, template=client.V1PodTemplateSpec(
            spec=client.V1PodSpec(restart_policy="Never", containers=[
                client.V1Container(name="fetch", image="busybox", command=["true"])])))))

    def complete():
        job = batch.read_namespaced_job_status("warmup", namespace)
        conds = {c.type: c.status for c in job.status.conditions or []}
        return job if conds.get("Complete") == "True" else None

    job = wait_for("Job Complete", complete)
    assert job.status.succeeded == 1
    (pod,) = core.list_namespaced_pod(namespace, label_selector="job-name=warmup").items
    assert pod.status.phase == "Succeeded"


def test_apiserver_metrics_count_requests_by_verb(cluster, kube, namespace):
    core = client.CoreV1Api(kube)
    before = cluster.request_totals().get(("LIST", "configmaps"), 0)
    for _ in range(3):
        core.list_namespaced_config_map(namespace)
    after = cluster.request_totals().get(("LIST", "configmaps"), 0)
    assert after - before >= 3


def test_kubectl_talks_to_the_cluster(cluster):
    out = cluster.kubectl("get", "nodes", "-o", "name").stdout.split()
    assert {"node/gpu-node-0", "node/gpu-node-1", "node/cpu-node-0"} <= set(out)


def test_the_apiserver_reports_its_pinned_release_version(kube):
    # Helm checks a chart's kubeVersion against this; a source build says v0.0.0-master otherwise.
    info = client.VersionApi(kube).get_code()
    assert info.git_version == versions.KUBERNETES
    assert (info.major, info.minor) == tuple(versions.KUBERNETES[1:].split(".")[:2])


def test_cluster_processes_only_use_loopback(cluster):
    pids = {p: pid for p, pid in cluster.processes().items()}
    assert all(pids.values()), pids
    for process, pid in pids.items():
        for conn in psutil.Process(pid).net_connections(kind="inet"):
            for addr in (conn.laddr, conn.raddr):
                if addr:
                    assert ipaddress.ip_address(addr.ip).is_loopback, (process, conn)


# ---- a private cluster: up/down, CRDs, apiserver restarts ---------------------------------
# These change cluster-wide state (CRDs, the apiserver's life), so they run on a cluster of
# their own rather than on the shared one other sessions may be using.

@pytest.fixture(scope="module")
def private_cluster(tmp_path_factory):
    name = f"private-{uuid.uuid4().hex[:8]}"
    shapes = [NodeShape("gpu-a", gpus=2, labels={"zone": "a"}),
              NodeShape("runner-0", gpus=1, real_runner=True)]
    handle = Cluster.up(name=name, nodes=shapes)
    assert handle.started
    yield handle
    handle.down()


def test_service_monitor_is_rejected_before_the_crds_and_accepted_after(private_cluster):
    from kubernetes import config

    with config.new_client_from_config(config_file=str(private_cluster.kubeconfig)) as api:
        custom = client.CustomObjectsApi(api)
        monitor = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
                   "metadata": {"name": "vllm"},
                   "spec": {"selector": {"matchLabels": {"app": "vllm"}},
                            "endpoints": [{"port": "http", "path": "/metrics"}]}}
        args = ("monitoring.coreos.com", "v1", "default", "servicemonitors")
        with pytest.raises(ApiException) as rejected:
            custom.create_namespaced_custom_object(*args, monitor)
        assert rejected.value.status == 404

        names = private_cluster.install_prometheus_crds()
        assert set(names) == {"servicemonitors.monitoring.coreos.com",
                              "podmonitors.monitoring.coreos.com",
                              "prometheusrules.monitoring.coreos.com"}
        created = custom.create_namespaced_custom_object(*args, monitor)
        assert created["metadata"]["uid"]
        # Schema validation is the real one from the CRD: a wrong type is refused.
        bad = dict(monitor, metadata={"name": "bad"}, spec={"endpoints": "not-a-list", "selector": {}})
        with pytest.raises(ApiException) as invalid:
            custom.create_namespaced_custom_object(*args, bad)
        assert invalid.value.status == 422

        private_cluster.uninstall_prometheus_crds()
        with pytest.raises(ApiException):
            custom.create_namespaced_custom_object(*args, monitor)


def test_real_runner_node_is_not_managed_by_kwok(private_cluster):
    nodes = {n["metadata"]["name"]: n for n in private_cluster.rest.get("/api/v1/nodes")["items"]}
    ready = lambda n: any(c["type"] == "Ready" and c["status"] == "True"  # noqa: E731
                          for c in n.get("status", {}).get("conditions", []))
    assert ready(nodes["gpu-a"])
    assert not ready(nodes["runner-0"])  # no kubelet (simulated or real) has claimed it yet


def test_provisioner_survives_an_apiserver_restart(private_cluster):
    old_pid = private_cluster.apiserver_pid
    new_pid = private_cluster.restart_apiserver(graceful=False)  # a crash, the harsher case
    assert new_pid != old_pid and private_cluster.apiserver_pid == new_pid
    rest = private_cluster.rest
    rest.create("/api/v1/namespaces/default/persistentvolumeclaims", {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "after-restart"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    pvc = wait_for("the PVC to bind after the restart", lambda: (lambda p: p if p["status"].get(
        "phase") == "Bound" else None)(rest.get(
            "/api/v1/namespaces/default/persistentvolumeclaims/after-restart")))
    pv = rest.get(f"/api/v1/persistentvolumes/{pvc['spec']['volumeName']}")
    assert pv["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_up_again_is_a_no_op_and_down_leaves_nothing_behind():
    name = f"updown-{uuid.uuid4().hex[:8]}"
    first = Cluster.up(name=name, nodes=[NodeShape("n0")])
    try:
        pids = first.processes()
        again = Cluster.up(name=name)
        assert not again.started and again.processes() == pids
    finally:
        first.down()
    assert not Path(first.state_dir).exists()
    for pid in pids.values():
        assert not psutil.pid_exists(pid) or str(first.state_dir) not in " ".join(
            psutil.Process(pid).cmdline())


def test_up_restarts_a_crashed_component_without_losing_state(private_cluster):
    import os
    import signal

    marker = private_cluster.rest.create("/api/v1/namespaces/default/configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "survives-repair"}})
    old = private_cluster.pid("kube-controller-manager")
    os.kill(old, signal.SIGKILL)
    wait_for("kcm to die", lambda: private_cluster.pid("kube-controller-manager") is None)
    assert not private_cluster.is_up()

    again = Cluster.up(name=private_cluster.name)
    assert not again.started
    new = again.pid("kube-controller-manager")
    assert new and new != old
    kept = again.rest.get("/api/v1/namespaces/default/configmaps/survives-repair")
    assert kept["metadata"]["uid"] == marker["metadata"]["uid"]


@pytest.mark.helm
def test_helm_installs_a_chart_into_the_cluster(cluster, kube, namespace, tmp_path):
    import subprocess

    chart = tmp_path / "hello"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: hello\nversion: 0.1.0\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n")
    subprocess.run(
        [str(cluster.helm_binary), "install", "rel", str(chart), "--namespace", namespace,
         "--kubeconfig", str(cluster.kubeconfig), "--set", "greeting=hi", "--wait"],
        check=True, capture_output=True, text=True, timeout=120,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    cm = client.CoreV1Api(kube).read_namespaced_config_map("rel-cm", namespace)
    assert cm.data == {"greeting": "hi"}


def test_a_terminating_crd_takes_the_finalizer_nudge_and_goes_once_its_finalizers_are_done(cluster):
    # The nudge (crds.delete_and_wait) must be accepted on a CRD already being deleted, and the
    # wait must end when the CRD goes. A finalizer of the test's own keeps it terminating.
    from tools.localcluster import crds

    suffix = uuid.uuid4().hex[:6]
    name = f"nudges{suffix}.test.scibox.io"
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": name, "finalizers": ["test.scibox.io/hold"]},
           "spec": {"group": "test.scibox.io", "scope": "Namespaced",
                    "names": {"plural": f"nudges{suffix}", "singular": f"nudge{suffix}", "kind": f"Nudge{suffix}"},
                    "versions": [{"name": "v1", "served": True, "storage": True,
                                  "schema": {"openAPIV3Schema": {"type": "object"}}}]}}
    path = f"{crds.CRD_PATH}/{name}"
    crds.apply_established(cluster.rest, [crd], time.monotonic() + 60)
    cluster.rest.delete(path)
    crds.nudge_finalizer(cluster.rest, name)
    held = cluster.rest.get(path)
    assert held["metadata"].get("deletionTimestamp") and crds.NUDGE_ANNOTATION in held["metadata"]["annotations"]
    with pytest.raises(TimeoutError, match=name):
        crds.delete_and_wait(cluster.rest, (name,), timeout=2)
    others = [f for f in cluster.rest.get(path)["metadata"]["finalizers"] if f != "test.scibox.io/hold"]
    cluster.rest.request("PATCH", path, body={"metadata": {"finalizers": others}},
                         content_type="application/merge-patch+json")
    crds.delete_and_wait(cluster.rest, (name,), timeout=60)
    assert cluster.rest.get_or_none(path) is None
