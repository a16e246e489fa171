"""The real LeaderWorkerSet controller (sigs.k8s.io/lws) for the local cluster.

What runs, and why it is wired this way:
- The CRD is the module's own `config/crd/bases` YAML at the pinned version (server-side
  applied; it is 1.2 MB, too big for a client-side apply's last-applied annotation).
- The controller-manager is the module's `cmd` package built by `build.py`, run as a local
  process spawned into the cluster's state dir (so `Cluster.down` stops it too).
- LWS does not work without its admission webhooks: a LeaderWorkerSet defaulter/validator and
  a Pod defaulter that labels group members and injects LWS_* env. Upstream points the
  apiserver at a Service and lets the controller rotate its own certificate for that Service
  name; here there is no kube-proxy and no pod network, so the webhook server listens on
  127.0.0.1:<free port> with a certificate for IP 127.0.0.1 signed by a CA made here, and the
  webhook configurations use `clientConfig.url` with that CA as caBundle. Internal cert
  management is off (controller config file, `--config`).
- Webhook paths, names and rules come from the module's `config/webhook/manifests.yaml`; the
  Pod hooks get the objectSelector the upstream Helm chart adds, so pods that are not LWS
  members never wait on this webhook (a stopped controller cannot block other tests' pods).
- Metrics and health listen on 127.0.0.1 free ports; leader election is off; the controller
  uses the cluster's admin kubeconfig.
- One controller per cluster, shared by concurrent pytest sessions like the cluster itself:
  users register their PIDs under `<state dir>/lws/users`; the last live user stops it.

CLI: `python -m tools.localcluster.lws [--name NAME] start|stop|status`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import json
import os
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import yaml

from . import build, crds, pki, versions
from .local import DEFAULT_NAME, Cluster, ClusterError, _proc_state, free_port
from .rest import ApiError, Rest

MODULE = build.LWS.module
PROCESS = "lws-controller-manager"
GROUP = "leaderworkerset.x-k8s.io"
API_VERSION = f"{GROUP}/v1"
PLURAL = "leaderworkersets"
CRD_NAME = f"{PLURAL}.{GROUP}"
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
CRD_FILE = f"config/crd/bases/{GROUP}_{PLURAL}.yaml"
WEBHOOK_MANIFESTS_FILE = "config/webhook/manifests.yaml"
# The names the upstream Helm chart gives its webhook configurations.
MUTATING_NAME = "lws-mutating-webhook-configuration"
VALIDATING_NAME = "lws-validating-webhook-configuration"
MUTATING_PATH = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
VALIDATING_PATH = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
# Marks objects this harness installed, with the version they came from.
VERSION_LABEL = "scibox.io/lws-version"

# Label and annotation keys LWS v0.7.0 sets on group pods (api/leaderworkerset/v1).
NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
GROUP_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/group-index"
WORKER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"
GROUP_KEY_LABEL = "leaderworkerset.sigs.k8s.io/group-key"
REVISION_LABEL = "leaderworkerset.sigs.k8s.io/template-revision-hash"
SIZE_ANNOTATION = "leaderworkerset.sigs.k8s.io/size"
LEADER_NAME_ANNOTATION = "leaderworkerset.sigs.k8s.io/leader-name"
ENV_LEADER_ADDRESS = "LWS_LEADER_ADDRESS"
ENV_GROUP_SIZE = "LWS_GROUP_SIZE"
ENV_WORKER_INDEX = "LWS_WORKER_INDEX"

# Where readiness is proven: a server-side dry run of a member pod must come back mutated.
PROBE_NAMESPACE = "default"
PROBE_NAME = "scibox-lws-probe"


class LwsError(ClusterError):
    pass


# ---- the module's files --------------------------------------------------------------------
def module_dir(version: str = versions.LWS) -> Path:
    """The module's source in the Go module cache (downloaded from the proxy if absent)."""
    try:
        return build.module_dir(MODULE, version)
    except RuntimeError as exc:
        raise LwsError(str(exc)) from None


def _load_yaml_docs(path: Path) -> list[dict]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRD is 1.2 MB of YAML
    return [d for d in yaml.load_all(path.read_text(), Loader=loader) if d]


def crd_manifest(version: str = versions.LWS) -> dict:
    path = module_dir(version) / CRD_FILE
    docs = _load_yaml_docs(path)
    if len(docs) != 1 or docs[0].get("kind") != "CustomResourceDefinition":
        raise LwsError(f"{path}: expected exactly one CustomResourceDefinition")
    crd = docs[0]
    crd["metadata"].setdefault("labels", {})[VERSION_LABEL] = version
    return crd


def upstream_webhook_manifests(version: str = versions.LWS) -> list[dict]:
    return _load_yaml_docs(module_dir(version) / WEBHOOK_MANIFESTS_FILE)


# ---- pure builders -------------------------------------------------------------------------
def webhook_configurations(upstream: list[dict], base_url: str, ca_pem: bytes,
                           version: str = versions.LWS) -> list[dict]:
    """The upstream Mutating/ValidatingWebhookConfigurations, pointed at `base_url` (e.g.
    https://127.0.0.1:PORT) instead of an in-cluster Service, trusting `ca_pem`."""
    if not base_url.startswith("https://"):
        raise ValueError(f"webhook base URL must be https: {base_url!r}")
    names = {"MutatingWebhookConfiguration": MUTATING_NAME,
             "ValidatingWebhookConfiguration": VALIDATING_NAME}
    ca_bundle = base64.b64encode(ca_pem).decode()
    result = []
    for doc in upstream:
        kind = doc.get("kind")
        if kind not in names:
            raise LwsError(f"unexpected kind {kind!r} in the upstream webhook manifests")
        config = copy.deepcopy(doc)
        config["metadata"] = {"name": names[kind], "labels": {VERSION_LABEL: version}}
        for hook in config["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": base_url.rstrip("/") + path, "caBundle": ca_bundle}
            if any("pods" in rule.get("resources", ()) for rule in hook["rules"]):
                # As the upstream chart does: only pods that claim LWS membership.
                hook["objectSelector"] = {"matchExpressions": [
                    {"key": NAME_LABEL, "operator": "Exists"}]}
            hook.setdefault("timeoutSeconds", 10)
        result.append(config)
    if sorted(c["kind"] for c in result) != sorted(names):
        raise LwsError("the upstream webhook manifests lack a mutating or validating config")
    return result


def controller_config(webhook_port: int, cert_dir: Path, metrics_port: int,
                      health_port: int) -> dict:
    """The controller-manager's `--config` (api/config/v1alpha1 Configuration)."""
    return {
        "apiVersion": "config.lws.x-k8s.io/v1alpha1",
        "kind": "Configuration",
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics_port}"},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
    }


def probe_pod() -> dict:
    """A would-be leader pod of a 1-pod group: the Pod webhook must label it and inject env."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{PROBE_NAME}-0", "namespace": PROBE_NAMESPACE,
                     "labels": {NAME_LABEL: PROBE_NAME, WORKER_INDEX_LABEL: "0"},
                     "annotations": {SIZE_ANNOTATION: "1"}},
        "spec": {"containers": [{"name": "c", "image": "scibox.invalid/none:0"}]},
    }


def probe_leaderworkerset() -> dict:
    return {
        "apiVersion": API_VERSION, "kind": "LeaderWorkerSet",
        "metadata": {"name": PROBE_NAME, "namespace": PROBE_NAMESPACE},
        "spec": {"replicas": 1, "leaderWorkerTemplate": {"size": 1, "workerTemplate": {
            "spec": {"containers": [{"name": "c", "image": "scibox.invalid/none:0"}]}}}},
    }


def container_env(pod: dict, container: int = 0) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in
            pod["spec"]["containers"][container].get("env", [])}


# ---- CRD -----------------------------------------------------------------------------------
def crd_installed(rest: Rest) -> bool:
    crd = rest.get_or_none(f"{CRD_PATH}/{CRD_NAME}")
    if crd is None:
        return False
    conditions = {c["type"]: c["status"]
                  for c in (crd.get("status") or {}).get("conditions") or []}
    return conditions.get("Established") == "True"


def install_crd(rest: Rest, version: str = versions.LWS, timeout: float = 60.0) -> bool:
    """Install (or update) the LeaderWorkerSet CRD and wait until its API serves. True if it
    was applied now, False if this version was installed already."""
    existing = rest.get_or_none(f"{CRD_PATH}/{CRD_NAME}")
    labels = (existing or {}).get("metadata", {}).get("labels") or {}
    applied = existing is None or labels.get(VERSION_LABEL) != version
    if applied:
        rest.apply(CRD_PATH, CRD_NAME, crd_manifest(version))
    deadline = time.monotonic() + timeout
    while not crd_installed(rest):
        if time.monotonic() > deadline:
            raise TimeoutError(f"CRD {CRD_NAME} not Established after {timeout}s")
        time.sleep(0.2)
    # Established can precede discovery for a moment.
    while True:
        try:
            rest.get(f"/apis/{GROUP}/v1/{PLURAL}?limit=1")
            return applied
        except (ApiError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def uninstall_crd(rest: Rest, timeout: float = 120.0) -> None:
    """Delete the CRD (and with it every LeaderWorkerSet) and wait until it is gone."""
    crds.delete_and_wait(rest, (CRD_NAME,), timeout)


def install_webhooks(rest: Rest, configs: list[dict]) -> None:
    for config in configs:
        path = MUTATING_PATH if config["kind"] == "MutatingWebhookConfiguration" else VALIDATING_PATH
        rest.apply(path, config["metadata"]["name"], config)


def uninstall_webhooks(rest: Rest) -> None:
    rest.delete(f"{MUTATING_PATH}/{MUTATING_NAME}")
    rest.delete(f"{VALIDATING_PATH}/{VALIDATING_NAME}")


# ---- the controller process ----------------------------------------------------------------
class LwsController:
    """The LWS controller-manager of one local cluster. Cheap to construct; state lives in
    `<cluster state dir>/lws`."""

    def __init__(self, cluster: Cluster, version: str = versions.LWS):
        if version != build.LWS.version:
            raise LwsError(f"only the pinned LWS {build.LWS.version} is built, not {version}")
        self.cluster = cluster
        self.version = version
        self.dir = cluster.state_dir / "lws"
        self.started = False  # True when this handle's `start` spawned the process

    @property
    def rest(self) -> Rest:
        return self.cluster.rest

    @property
    def config_file(self) -> Path:
        return self.dir / "config.yaml"

    @property
    def cert_dir(self) -> Path:
        return self.dir / "certs"

    @property
    def log_file(self) -> Path:
        return self.cluster.log_file(PROCESS)

    def state(self) -> dict:
        try:
            return json.loads((self.dir / "state.json").read_text())
        except (OSError, ValueError):
            return {}

    @property
    def pid(self) -> int | None:
        return self.cluster.pid(PROCESS)

    @property
    def webhook_url(self) -> str:
        return f"https://127.0.0.1:{self.state()['ports']['webhook']}"

    # -- health --
    def healthy(self) -> bool:
        """The process runs and answers its /readyz on loopback."""
        ports = self.state().get("ports")
        if self.pid is None or not ports:
            return False
        plain = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with plain.open(f"http://127.0.0.1:{ports['health']}/readyz", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def webhooks_answer(self) -> bool:
        """The apiserver reaches both webhooks: a dry-run LWS is admitted and a dry-run member
        pod comes back labelled and with LWS_* env. Raises ApiError on a webhook refusal."""
        lws = probe_leaderworkerset()
        self.rest.request("POST", f"/apis/{GROUP}/v1/namespaces/{PROBE_NAMESPACE}/{PLURAL}"
                          "?dryRun=All", lws)
        pod = self.rest.request("POST", f"/api/v1/namespaces/{PROBE_NAMESPACE}/pods?dryRun=All",
                                probe_pod())
        return (pod["metadata"]["labels"].get(GROUP_INDEX_LABEL) == "0"
                and ENV_LEADER_ADDRESS in container_env(pod))

    def ready(self) -> bool:
        if not self.healthy():
            return False
        try:
            return self.webhooks_answer()
        except (ApiError, OSError, KeyError):
            return False

    # -- lifecycle --
    def start(self, register: bool = False, timeout: float = 120.0,
              await_gc: bool = True) -> None:
        """Install the CRD and run the controller with its webhooks, unless a ready one runs
        already (then `started` is False). `register` records this process as a user.
        `await_gc`: after a fresh CRD install, wait until the garbage collector handles
        LeaderWorkerSets (see `await_garbage_collector`)."""
        with self.cluster._lock():
            if not self.cluster.is_up():
                raise LwsError(f"cluster {self.cluster.name} is not up")
            crd_is_new = install_crd(self.rest, self.version)
            if self.ready():
                self.started = False
            else:
                self._stop_locked()
                try:
                    self._start_locked(timeout)
                except BaseException:
                    self._stop_locked()
                    raise
                self.started = True
            if crd_is_new and await_gc:
                t0 = time.monotonic()
                self.await_garbage_collector(timeout)
                self._record_timing("gc_aware", time.monotonic() - t0)
            if register:
                self._register(started=self.started)

    def _start_locked(self, timeout: float) -> None:
        t0 = time.monotonic()
        binary = build.binary(PROCESS)
        timings = {"binary": time.monotonic() - t0}
        self.dir.mkdir(parents=True, exist_ok=True)
        ports = {p: free_port() for p in ("webhook", "metrics", "health")}
        if len(set(ports.values())) != len(ports):
            raise LwsError(f"port picking collided: {ports}")
        ca = pki.CertificateAuthority.create("scibox-lws-webhook-ca")
        serving = ca.issue("lws-webhook", client=False, server_names=("127.0.0.1",))
        # controller-runtime's webhook server reads tls.crt/tls.key from certDir.
        serving.write(self.cert_dir, "tls")
        (self.cert_dir / "ca.crt").write_bytes(ca.cert_pem)
        self.config_file.write_text(yaml.safe_dump(
            controller_config(ports["webhook"], self.cert_dir, ports["metrics"], ports["health"]),
            sort_keys=False))
        (self.dir / "state.json").write_text(json.dumps(
            {"version": self.version, "ports": ports, "started_at": time.time()}, indent=1))

        # The config path names the state dir, which is how Cluster.pid recognises the PID.
        self.cluster._spawn(PROCESS, [
            str(binary), f"--config={self.config_file}",
            f"--kubeconfig={self.cluster.kubeconfig}", "--zap-log-level=info",
        ])
        self.cluster._wait(f"{PROCESS} /readyz", PROCESS, self.healthy, timeout)
        timings["healthy"] = time.monotonic() - t0
        install_webhooks(self.rest, webhook_configurations(
            upstream_webhook_manifests(self.version), f"https://127.0.0.1:{ports['webhook']}",
            ca.cert_pem, self.version))
        self.cluster._wait("the LWS webhooks to answer the apiserver", PROCESS,
                           self.webhooks_answer, timeout)
        timings["ready"] = time.monotonic() - t0
        for what, seconds in timings.items():
            self._record_timing(what, seconds)

    def _record_timing(self, what: str, seconds: float) -> None:
        state = self.state()
        state.setdefault("timings_s", {})[what] = round(seconds, 2)
        (self.dir / "state.json").write_text(json.dumps(state, indent=1))

    def await_garbage_collector(self, timeout: float = 120.0) -> None:
        """Wait until kube-controller-manager's garbage collector acts on LeaderWorkerSets.

        It learns of new resource types only at its periodic discovery resync (every 30 s in
        kcm), so right after the CRD is installed, deleting a LeaderWorkerSet leaves its
        StatefulSets and pods behind for up to that long. The probe: a ConfigMap owned by a
        LeaderWorkerSet that does not exist, which the collector deletes once it can map the
        kind. A probe it could not map is retried with exponential back-off (tens of seconds
        soon), so each attempt is a fresh ConfigMap rather than a wait on the first.
        """
        rest = self.rest
        cm_path = f"/api/v1/namespaces/{PROBE_NAMESPACE}/configmaps"
        label = "scibox.io/lws-gc-probe"
        deadline = time.monotonic() + timeout
        try:
            for attempt in range(1_000_000):
                name = f"{PROBE_NAME}-gc-{os.getpid()}-{attempt}"
                rest.create(cm_path, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
                    "name": name, "labels": {label: "true"}, "ownerReferences": [{
                        "apiVersion": API_VERSION, "kind": "LeaderWorkerSet",
                        "name": f"{PROBE_NAME}-absent", "uid": str(uuid.uuid4())}]}})
                attempt_deadline = time.monotonic() + 2.0
                while time.monotonic() < attempt_deadline:
                    if rest.get_or_none(f"{cm_path}/{name}") is None:
                        return
                    time.sleep(0.1)
                if time.monotonic() > deadline:
                    raise self.cluster._fail("kube-controller-manager", (
                        f"the garbage collector did not act on LeaderWorkerSets in {timeout:.0f}s"))
        finally:
            rest.request("DELETE", f"{cm_path}?labelSelector={label}%3Dtrue")

    def stop(self, uninstall: bool = False) -> None:
        """Remove the webhook configurations, stop the process; `uninstall` also deletes the
        CRD (and so every LeaderWorkerSet)."""
        with self.cluster._lock():
            self._stop_locked()
            if uninstall and self.cluster.is_up():
                uninstall_crd(self.rest)

    def _stop_locked(self) -> None:
        # Webhooks first: with failurePolicy Fail they would refuse LWS member pods and
        # LeaderWorkerSets while nothing listens.
        if self.cluster.is_up():
            uninstall_webhooks(self.rest)
        self.cluster._stop(PROCESS)

    def leave(self) -> bool:
        """Unregister this process; when no live user remains and a registered session
        started the controller, stop it and uninstall the CRD. True if it was stopped."""
        with self.cluster._lock():
            if not self._release():
                return False
            self._stop_locked()
            if self.cluster.is_up():
                uninstall_crd(self.rest)
            return True

    # -- users (same scheme as the cluster's) --
    def _register(self, started: bool) -> None:
        users = self.dir / "users"
        users.mkdir(parents=True, exist_ok=True)
        (users / str(os.getpid())).write_text("started\n" if started else "reused\n")

    def _release(self) -> bool:
        users = self.dir / "users"
        me = users / str(os.getpid())
        started_by_session = me.is_file() and me.read_text().startswith("started")
        me.unlink(missing_ok=True)
        live = False
        for entry in users.glob("*") if users.is_dir() else []:
            if entry.name.isdigit() and _proc_state(int(entry.name)) not in (None, "Z", "X"):
                live = True
            else:
                started_by_session |= entry.read_text().startswith("started")
                entry.unlink(missing_ok=True)
        return not live and started_by_session

    def status(self) -> dict:
        return {
            "cluster": self.cluster.name,
            "version": self.version,
            "pid": self.pid,
            "healthy": self.healthy(),
            "crd_installed": self.cluster.is_up() and crd_installed(self.rest),
            "ports": self.state().get("ports"),
            "timings_s": self.state().get("timings_s"),
            "log": str(self.log_file),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.localcluster.lws", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default=DEFAULT_NAME, help="cluster name")
    parser.add_argument("command", choices=("start", "stop", "status"),
                        help="start: install the CRD and run the controller (no-op if ready); "
                             "stop: stop it and uninstall the CRD")
    args = parser.parse_args(argv)
    controller = LwsController(Cluster(name=args.name))
    try:
        if args.command == "start":
            started = time.monotonic()
            controller.start()
            verb = "started" if controller.started else "already running"
            print(f"LWS controller {verb} in {time.monotonic() - started:.1f}s "
                  f"(pid {controller.pid}, log {controller.log_file})", file=sys.stderr)
        elif args.command == "stop":
            controller.stop(uninstall=True)
        else:
            status = controller.status()
            print(json.dumps(status, indent=1))
            return 0 if status["healthy"] else 3
    except (ClusterError, TimeoutError, ApiError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
