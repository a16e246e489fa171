"""The real runner on a real control plane: pods bound to its node run as local processes.

One private cluster (its node `real-0` owned by the runner) for the module; every pod here is a
small `python3 -c` program, so the whole module takes seconds, not minutes.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import signal
import socket
import time
import uuid

import psutil
import pytest

from tests.waiting import wait_for as poll
from tools.localcluster import Cluster
from tools.localcluster.nodes import REAL_RUNNER_TOLERATION, real_runner_node
from tools.localcluster.rest import ApiError, Rest
from tools.localcluster.runner import marked_processes

pytestmark = pytest.mark.cluster

NODE = "real-0"
WAIT = 60.0  # a ceiling for polling, not a performance assertion


def wait_for(what: str, probe, timeout: float = WAIT):
    return poll(what, probe, timeout)


@pytest.fixture(scope="module")
def real_cluster():
    handle = Cluster.up(name=f"runner-{uuid.uuid4().hex[:8]}", nodes=[real_runner_node(NODE, gpus=2)])
    try:
        handle.start_runner(NODE)
        yield handle
    finally:
        handle.down()


@pytest.fixture
def ns(real_cluster):
    name = f"rt-{uuid.uuid4().hex[:6]}"
    rest = real_cluster.rest
    rest.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    wait_for("the default ServiceAccount", lambda: rest.get_or_none(
        f"/api/v1/namespaces/{name}/serviceaccounts/default"))
    yield name
    rest.delete(f"/api/v1/namespaces/{name}")


def python_container(code: str, name: str = "main", **extra) -> dict:
    return {"name": name, "image": "scibox/vllm:test", "command": ["python3", "-c", code], **extra}


def pod_manifest(name: str, containers: list[dict], restart: str = "Never", **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": restart, "tolerations": [REAL_RUNNER_TOLERATION],
                     "terminationGracePeriodSeconds": 5, "containers": containers, **spec}}


def get_pod(cluster, ns, name):
    return cluster.rest.get_or_none(f"/api/v1/namespaces/{ns}/pods/{name}")


def phase_is(cluster, ns, name, *phases):
    pod = get_pod(cluster, ns, name)
    return pod if pod and pod.get("status", {}).get("phase") in phases else None


def is_ready(pod) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (pod or {}).get("status", {}).get("conditions", []))


HTTP_SERVER = ("import http.server, os, pathlib; "
               "pathlib.Path('/data/index.html'.replace('/data', os.environ['DATA'])).write_text('hi'); "
               "os.chdir(os.environ['DATA']); "
               "http.server.ThreadingHTTPServer((os.environ['POD_IP'], 8080), "
               "http.server.SimpleHTTPRequestHandler).serve_forever()")


def test_node_is_ready_with_fake_gpus_and_a_renewed_lease(real_cluster):
    rest = real_cluster.rest
    node = rest.get(f"/api/v1/nodes/{NODE}")
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["reason"] == "KubeletReady"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "2"
    assert node["metadata"]["labels"]["scibox.io/real-runner"] == "true"
    lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{NODE}"
    first = wait_for("the node's lease", lambda: rest.get_or_none(lease_path))["spec"]["renewTime"]
    wait_for("the lease to be renewed", lambda: rest.get(lease_path)["spec"]["renewTime"] != first, timeout=30)


def test_the_runner_is_a_node_identity_limited_by_the_node_authorizer(real_cluster, ns):
    rest = real_cluster.rest
    rest.create(f"/api/v1/namespaces/{ns}/secrets", {"apiVersion": "v1", "kind": "Secret",
                                                     "metadata": {"name": "unrelated"}, "data": {"k": "dg=="}})
    pki = real_cluster.pki_dir
    node_client = Rest(real_cluster.apiserver_url, pki / "ca.crt", pki / f"node-{NODE}.crt", pki / f"node-{NODE}.key")
    with pytest.raises(ApiError) as denied:
        node_client.get(f"/api/v1/namespaces/{ns}/secrets/unrelated")  # no pod of this node uses it
    assert denied.value.status == 403


def test_a_served_pod_gets_a_loopback_ip_turns_ready_and_stops_on_delete(real_cluster, ns):
    container = python_container(HTTP_SERVER, "web", ports=[{"name": "http", "containerPort": 8080}],
                                 env=[{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                                      {"name": "DATA", "value": "/data"}],
                                 readinessProbe={"httpGet": {"path": "/index.html", "port": "http"},
                                                 "periodSeconds": 1},
                                 volumeMounts=[{"name": "data", "mountPath": "/data"}])
    real_cluster.rest.create(f"/api/v1/namespaces/{ns}/pods", pod_manifest(
        "web", [container], restart="Always", volumes=[{"name": "data", "emptyDir": {}}]))
    pod = wait_for("the pod to be Ready", lambda: (lambda p: p if is_ready(p) else None)(get_pod(real_cluster, ns, "web")))
    ip = pod["status"]["podIP"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network("127.200.0.0/16")
    assert pod["status"]["phase"] == "Running" and pod["status"]["hostIP"].startswith("127.")
    status = pod["status"]["containerStatuses"][0]
    assert status["ready"] and status["started"] and "running" in status["state"]
    # A real process, listening on the pod IP only.
    pids = marked_processes(real_cluster.state_dir, NODE, pod["metadata"]["uid"])
    assert pids
    listening = [c.laddr for pid in pids for c in psutil.Process(pid).net_connections("inet") if c.status == "LISTEN"]
    assert [(a.ip, a.port) for a in listening] == [(ip, 8080)]

    real_cluster.rest.delete(f"/api/v1/namespaces/{ns}/pods/web")
    wait_for("the pod object to be finalized", lambda: get_pod(real_cluster, ns, "web") is None)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    with socket.socket() as s:
        s.settimeout(1)
        assert s.connect_ex((ip, 8080)) != 0


def test_job_pods_report_exit_codes_and_termination_messages_for_the_pod_failure_policy(real_cluster, ns):
    code = "import os, sys; open(os.environ['TERMINATION_LOG'], 'w').write('no such model'); sys.exit(3)"
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "dl"}, "spec": {
        "backoffLimit": 4,
        "podFailurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": {
            "containerName": "main", "operator": "In", "values": [3]}}]},
        "template": {"spec": pod_manifest("x", [python_container(code)])["spec"]}}}
    real_cluster.rest.create(f"/apis/batch/v1/namespaces/{ns}/jobs", job)
    failed = wait_for("the Job to fail", lambda: next(
        (c for c in real_cluster.rest.get(f"/apis/batch/v1/namespaces/{ns}/jobs/dl").get("status", {}).get(
            "conditions", []) if c["type"] == "Failed" and c["status"] == "True"), None))
    assert failed["reason"] == "PodFailurePolicy"
    pods = real_cluster.rest.get(f"/api/v1/namespaces/{ns}/pods?labelSelector=job-name%3Ddl")["items"]
    assert len(pods) == 1  # failed at once, no retry
    terminated = pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"], terminated["message"]) == (3, "Error", "no such model")
    assert pods[0]["status"]["phase"] == "Failed"


def test_a_job_writes_into_its_pvc_folder_and_succeeds(real_cluster, ns):
    rest = real_cluster.rest
    rest.create(f"/api/v1/namespaces/{ns}/persistentvolumeclaims", {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "cache"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    code = "import os; open(os.environ['OUT'] + '/weights.txt', 'w').write(os.environ['KEY'])"
    rest.create(f"/api/v1/namespaces/{ns}/secrets", {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tok"},
                                                     "data": {"token": base64.b64encode(b"s3cret").decode()}})
    container = python_container(code, env=[{"name": "OUT", "value": "/models"},
                                            {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "token"}}}],
                                 volumeMounts=[{"name": "cache", "mountPath": "/models"}])
    rest.create(f"/apis/batch/v1/namespaces/{ns}/jobs", {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "w"},
                "spec": {"template": {"spec": pod_manifest("x", [container], volumes=[
                    {"name": "cache", "persistentVolumeClaim": {"claimName": "cache"}}])["spec"]}}})
    wait_for("the Job to complete", lambda: any(
        c["type"] == "Complete" and c["status"] == "True"
        for c in rest.get(f"/apis/batch/v1/namespaces/{ns}/jobs/w").get("status", {}).get("conditions", [])))
    pvc = rest.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/cache")
    pv = rest.get(f"/api/v1/persistentvolumes/{pvc['spec']['volumeName']}")
    written = os.path.join(pv["spec"]["hostPath"]["path"], "weights.txt")
    assert open(written).read() == "s3cret"


def test_a_missing_secret_waits_then_the_container_starts_when_it_appears(real_cluster, ns):
    rest = real_cluster.rest
    container = python_container("import time; time.sleep(300)",
                                 env=[{"name": "K", "valueFrom": {"secretKeyRef": {"name": "late", "key": "k"}}}])
    rest.create(f"/api/v1/namespaces/{ns}/pods", pod_manifest("late", [container]))

    def waiting_reason():
        pod = get_pod(real_cluster, ns, "late")
        state = ((pod or {}).get("status", {}).get("containerStatuses") or [{}])[0].get("state", {})
        return state.get("waiting", {}).get("reason") == "CreateContainerConfigError" and state["waiting"]
    waiting = wait_for("CreateContainerConfigError", waiting_reason)
    assert 'secret "late" not found' in waiting["message"]
    assert get_pod(real_cluster, ns, "late")["status"]["phase"] == "Pending"
    rest.create(f"/api/v1/namespaces/{ns}/secrets", {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "late"},
                                                     "data": {"k": "dg=="}})
    wait_for("the pod to run", lambda: phase_is(real_cluster, ns, "late", "Running"))


def test_a_program_outside_the_image_is_refused_with_a_start_error(real_cluster, ns):
    container = {"name": "sh", "image": "busybox", "command": ["/bin/sh", "-c", "echo hi"]}
    real_cluster.rest.create(f"/api/v1/namespaces/{ns}/pods", pod_manifest("sh", [container]))
    pod = wait_for("the pod to fail", lambda: phase_is(real_cluster, ns, "sh", "Failed"))
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 128 and terminated["reason"] == "StartError"
    assert "runs only" in terminated["message"]


def test_a_crashing_container_is_restarted_with_back_off(real_cluster, ns):
    real_cluster.rest.create(f"/api/v1/namespaces/{ns}/pods", pod_manifest(
        "crash", [python_container("import sys; print('boom'); sys.exit(1)")], restart="Always"))

    def backing_off():
        pod = get_pod(real_cluster, ns, "crash")
        statuses = (pod or {}).get("status", {}).get("containerStatuses") or [{}]
        waiting = statuses[0].get("state", {}).get("waiting", {})
        return waiting.get("reason") == "CrashLoopBackOff" and pod
    pod = wait_for("CrashLoopBackOff", backing_off)
    status = pod["status"]["containerStatuses"][0]
    assert status["lastState"]["terminated"]["exitCode"] == 1
    assert pod["status"]["phase"] == "Running"
    wait_for("a restart", lambda: get_pod(real_cluster, ns, "crash")["status"]["containerStatuses"][0][
        "restartCount"] >= 1, timeout=45)


def test_a_failing_liveness_probe_restarts_the_container(real_cluster, ns):
    # Listens nowhere: the liveness probe fails; the runner kills and restarts it.
    container = python_container("import time; time.sleep(300)", ports=[{"containerPort": 8080}],
                                 livenessProbe={"tcpSocket": {"port": 8080}, "periodSeconds": 1,
                                                "failureThreshold": 2})
    real_cluster.rest.create(f"/api/v1/namespaces/{ns}/pods", pod_manifest("live", [container], restart="Always"))
    pod = wait_for("a liveness restart", lambda: (lambda p: p if p and (p.get("status", {}).get(
        "containerStatuses") or [{}])[0].get("restartCount", 0) >= 1 else None)(get_pod(real_cluster, ns, "live")),
        timeout=45)
    last = pod["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert last["exitCode"] == 128 + signal.SIGTERM  # stopped by the runner, not crashed


def test_stopping_the_runner_stops_its_pods_processes(real_cluster, ns):
    real_cluster.rest.create(f"/api/v1/namespaces/{ns}/pods", pod_manifest(
        "sleeper", [python_container("import time; time.sleep(300)")]))
    wait_for("the pod to run", lambda: phase_is(real_cluster, ns, "sleeper", "Running"))
    pod = get_pod(real_cluster, ns, "sleeper")
    assert marked_processes(real_cluster.state_dir, NODE, pod["metadata"]["uid"])
    real_cluster.stop_runner(NODE)
    try:
        assert not marked_processes(real_cluster.state_dir, NODE)
    finally:
        real_cluster.start_runner(NODE)
    # A new runner takes the node back and runs the pod again (a fresh container).
    try:
        wait_for("the pod to run again", lambda: marked_processes(real_cluster.state_dir, NODE, pod["metadata"]["uid"]))
    except AssertionError as exc:
        os.kill(real_cluster.pid("runner-" + NODE), signal.SIGUSR1)  # its threads' stacks, into its log
        time.sleep(1)
        status = json.dumps((get_pod(real_cluster, ns, "sleeper") or {}).get("status"), indent=1)
        raise AssertionError(f"{exc}\npod status: {status}\nrunner log:\n"
                             f"{real_cluster.log_tail('runner-' + NODE, 80)}") from None
