"""A real kubelet for one node of the local cluster: the pods bound to it run as local processes.

kwok only pretends to run pods. A node labelled `scibox.io/real-runner=true` is left alone by
kwok; this runner owns it instead:

* the node: registers it if missing (as `system:node:<name>`, with fake `nvidia.com/gpu`
  capacity so the scheduler places GPU pods on it), sets it Ready and renews its Lease in
  kube-node-lease, like a kubelet;
* its pods: list-watches `spec.nodeName=<node>`, runs every container as a process group of
  its own, probes it, and writes pod status (phase, podIP, containerStatuses with exit codes and
  termination messages, Ready from the pod's own probes) back to the API server; a deleted pod's
  processes get SIGTERM, SIGKILL after the grace period, then the pod is finalized
  (DELETE with gracePeriodSeconds=0).

It talks to the API server with a node identity (CN `system:node:<name>`, group
`system:nodes`), so the real Node authorizer and NodeRestriction admission decide what it may
read: only the Secrets, PVCs and PVs of pods bound to this node.

How a container maps onto this host (a pod's filesystem view is emulated by rewriting paths):
* the image is the SciBox vLLM image built from `images/vllm`: `/opt/scibox/<file>` is
  `images/vllm/<file>` of this repository; `python3`/`python` is the venv's interpreter (its bin
  directory leads PATH); any other executable is refused (StartError, exit code 128);
* volume mounts: a PVC is its bound PV's hostPath (the local-path provisioner's folders), an
  emptyDir a per-pod folder (medium Memory: under /dev/shm), a hostPath itself, Secret and
  ConfigMap volumes folders holding their keys. Any argument, `--flag=value` or environment
  value that names a path under a mount path is rewritten to the host folder; `/tmp` as a
  mount also becomes TMPDIR, through a short symlink under /tmp/scibox-runner (vLLM puts its
  ZMQ unix sockets there, and a socket path may not exceed 107 bytes). Host paths of PVs and
  hostPath volumes must lie inside the cluster's state dir;
* env: value, valueFrom (secretKeyRef, configMapKeyRef, fieldRef), envFrom and `$(VAR)`
  references resolve as in Kubernetes; TERMINATION_LOG names the container's termination-log
  file (the `/dev/termination-log` of a real pod, read back into the terminated state).

Explicit adaptations, because this host is a CPU box on loopback (each one is needed, nothing
else is changed):
1. pod IPs come from 127.200.0.0/16 (kwok uses 127.100.0.0/16); a vLLM server's `--host`
   (0.0.0.0 in the rendered Deployment, or absent, which also means every interface) becomes
   the pod IP, so nothing listens beyond loopback, and VLLM_HOST_IP is the pod IP (vLLM would
   otherwise find "its" address by routing towards 8.8.8.8);
2. a vLLM server also gets the offline and CPU settings measured in
   /work/shared/ENVIRONMENT-FACTS.md: HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1,
   VLLM_CPU_KVCACHE_SPACE=1 (the CPU build sizes its KV cache from this, not from
   --gpu-memory-utilization), VLLM_NO_USAGE_STATS / VLLM_DO_NOT_TRACK / DO_NOT_TRACK=1;
   `--dtype` and `--max-model-len` come from the VLLMDeployment spec, not from here;
3. egress guard: proxies are dropped from the environment, HF_ENDPOINT defaults to a closed
   loopback port (huggingface_hub would otherwise default to huggingface.co), and a container
   whose arguments or environment hold a URL outside 127.0.0.0/8 is refused (StartError).
Not emulated: image pulls, user ids and securityContext, resource limits, `kubectl logs/exec`
(logs are files under <state>/runner/<node>/logs/).

Stopping the runner (SIGTERM) stops its pods' processes: it is the node. After a crash,
`kill_leftovers` (also run by the next runner and by `Cluster.down`) finds every process a
runner started by the marker variables in its environment.

Run: python -m tools.localcluster.runner --state-dir DIR --node NAME [--gpus 2]
     (or `Cluster.start_runner(node)`).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tools.localcluster.vllm_cpu import SERVER_ENV

from .nodes import GPU_RESOURCE, H100_LABELS, NodeShape
from .rest import ApiError, Rest

REPO_ROOT = Path(__file__).resolve().parents[2]
POD_CIDR = "127.200.0.0/16"
DEFAULT_NODE_IP = "127.0.1.200"
# What the image holds, mapped to this checkout.
IMAGE_PATHS = {"/opt/scibox": REPO_ROOT / "images" / "vllm"}
IMAGE_ENV = {  # the ENV lines of images/vllm/Dockerfile that matter outside a container
    "PYTHONUNBUFFERED": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
    "DO_NOT_TRACK": "1",
}
PYTHON_NAMES = ("python3", "python")
# The SciBox router image (images/router) holds one executable, vLLM's router: here the
# `vllm-router` of the virtualenv scripts/bootstrap.sh installs it in (requirements/vllm-router.txt).
ROUTER_NAMES = ("vllm-router",)
ROUTER_BIN_ENV = "SCIBOX_ROUTER_BIN"
DEFAULT_ROUTER_BIN = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scibox" / "router-venv" / "bin" / "vllm-router"
# Where a pod's service-account volume is mounted; a container that has it reaches the API
# server through a kubeconfig the runner writes (its in-cluster address is not emulated).
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
VLLM_SERVER_MODULES = ("vllm.entrypoints.openai.api_server",)
# What vLLM's CPU build needs here, as for the test servers; the pod's own IP replaces 127.0.0.1.
VLLM_CPU_ENV = {k: v for k, v in SERVER_ENV.items() if k != "VLLM_HOST_IP"}
CLOSED_HUB_ENDPOINT = "http://127.0.0.1:9"  # discard port: nothing listens, nothing leaves
TERMINATION_LOG_PATH = "/dev/termination-log"
TERMINATION_MESSAGE_MAX = 4096
FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES = 80, 2048
MARK_STATE, MARK_NODE, MARK_POD = "SCIBOX_RUNNER_STATE", "SCIBOX_RUNNER_NODE", "SCIBOX_RUNNER_POD_UID"
LEASE_SECONDS = 40
LEASE_RENEW_SECONDS = 10.0
NODE_STATUS_SECONDS = 60.0
BACKOFF_START_S, BACKOFF_MAX_S = 10.0, 300.0
START_ERROR_EXIT = 128
TICK_S = 0.5
SHORT_TMP_ROOT = Path("/tmp/scibox-runner")
SHM_ROOT = Path("/dev/shm")  # emptyDir medium: Memory
SHM_OWNER_FILE = ".scibox-state-dir"


class StartError(Exception):
    """The container cannot start as written (kubelet: terminated, reason StartError)."""


class ConfigError(Exception):
    """A referenced Secret/ConfigMap/key is missing (kubelet: CreateContainerConfigError);
    retried, it may appear later."""


class MountError(Exception):
    """A volume cannot be set up yet, or at all (kubelet: ContainerCreating + FailedMount)."""


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---- pure helpers (unit-tested) -------------------------------------------------------------

def allocate_ip(in_use: set[str], cidr: str = POD_CIDR) -> str:
    """The lowest free host address of `cidr` (skipping .0.0 and .0.1)."""
    net = ipaddress.ip_network(cidr)
    if not net.is_loopback:
        raise ValueError(f"pod CIDR {cidr} is not inside 127.0.0.0/8")
    for offset in range(2, net.num_addresses - 1):
        ip = str(net.network_address + offset)
        if ip not in in_use:
            return ip
    raise RuntimeError(f"no free pod IP left in {cidr}")


def listening_addresses() -> set[str]:
    """IPv4 addresses some process of this host listens on (psutil; empty when unreadable)."""
    try:
        import psutil

        return {c.laddr.ip for c in psutil.net_connections("inet4") if c.status == psutil.CONN_LISTEN and c.laddr}
    except (ImportError, OSError, RuntimeError):
        return set()


def map_path(value: str, mounts: list[tuple[str, str]]) -> str | None:
    """The host path for a container path, by the longest mount path that contains it; None
    when no mount contains it. `mounts` holds (container path, host path) pairs."""
    best: tuple[str, str] | None = None
    for inside, host in mounts:
        inside = inside.rstrip("/") or "/"
        if value == inside or value.startswith(inside + "/"):
            if best is None or len(inside) > len(best[0]):
                best = (inside, host)
    if best is None:
        return None
    return best[1] + value[len(best[0]):]


def rewrite_value(value: str, mounts: list[tuple[str, str]]) -> str:
    """Rewrite an argument or env value: a whole path, or the value of `--flag=path`."""
    if value.startswith("/"):
        mapped = map_path(value, mounts)
        return value if mapped is None else mapped
    if value.startswith("-") and "=" in value:
        flag, _, rest = value.partition("=")
        if rest.startswith("/"):
            mapped = map_path(rest, mounts)
            if mapped is not None:
                return f"{flag}={mapped}"
    return value


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand_references(value: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: a known variable is replaced, an unknown reference stays
    as written, `$$` escapes a dollar."""
    def sub(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)
    return _VAR_REF.sub(sub, value)


def field_value(pod: dict, path: str, pod_ip: str, host_ip: str) -> str:
    meta, spec = pod.get("metadata", {}), pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return simple[path]
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return (meta.get(match.group(1)) or {}).get(match.group(2), "")
    raise ConfigError(f"unsupported fieldRef {path!r}")


def resolve_env(container: dict, pod: dict, *, pod_ip: str, host_ip: str,
                secret: Callable[[str], dict[str, str] | None],
                config_map: Callable[[str], dict[str, str] | None]) -> dict[str, str]:
    """The container's own environment (envFrom, then env in order, with `$(VAR)` expansion).
    `secret(name)` / `config_map(name)` return the decoded data, or None if absent."""
    env: dict[str, str] = {}

    def source(kind: str, name: str, optional: bool) -> dict[str, str] | None:
        data = (secret if kind == "secret" else config_map)(name)
        if data is None and not optional:
            raise ConfigError(f'{kind} "{name}" not found')
        return data

    for item in container.get("envFrom") or []:
        prefix = item.get("prefix", "")
        for kind, key in (("secret", "secretRef"), ("configmap", "configMapRef")):
            if key in item:
                ref = item[key]
                data = source(kind, ref["name"], bool(ref.get("optional")))
                for k, v in sorted((data or {}).items()):
                    env[prefix + k] = v
    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" not in item:
            env[name] = expand_references(item.get("value", ""), env)
            continue
        ref = item["valueFrom"]
        if "secretKeyRef" in ref or "configMapKeyRef" in ref:
            kind = "secret" if "secretKeyRef" in ref else "configmap"
            key_ref = ref.get("secretKeyRef") or ref.get("configMapKeyRef")
            optional = bool(key_ref.get("optional"))
            data = source(kind, key_ref["name"], optional)
            if data is None:
                continue
            if key_ref["key"] not in data:
                if optional:
                    continue
                raise ConfigError(f'couldn\'t find key {key_ref["key"]} in {kind} '
                                  f'{pod["metadata"]["namespace"]}/{key_ref["name"]}')
            env[name] = data[key_ref["key"]]
        elif "fieldRef" in ref:
            env[name] = field_value(pod, ref["fieldRef"]["fieldPath"], pod_ip, host_ip)
        else:
            raise ConfigError(f"env {name}: unsupported valueFrom {sorted(ref)}")
    return env


def router_binary() -> str:
    return os.environ.get(ROUTER_BIN_ENV) or str(DEFAULT_ROUTER_BIN)


def resolve_executable(command0: str, python: str) -> str:
    """Where the image's executable lives on this host; StartError for anything else."""
    if command0 in PYTHON_NAMES or command0 in (f"/usr/bin/{p}" for p in PYTHON_NAMES):
        return python
    if command0 in ROUTER_NAMES or command0 in (f"/usr/local/bin/{r}" for r in ROUTER_NAMES):
        binary = router_binary()
        if not Path(binary).is_file():
            raise StartError(f'exec: "{command0}": {binary} does not exist (scripts/bootstrap.sh installs '
                             "requirements/vllm-router.txt; or set SCIBOX_ROUTER_BIN)")
        return binary
    mapped = map_path(command0, [(k, str(v)) for k, v in IMAGE_PATHS.items()])
    if mapped is not None:
        if not Path(mapped).is_file():
            raise StartError(f'exec: "{command0}": no such file in the image '
                             f"({mapped} does not exist)")
        return mapped
    raise StartError(f'exec: "{command0}": the real runner runs only '
                     f"{', '.join(sorted(IMAGE_PATHS))}/* and {'/'.join(PYTHON_NAMES)} "
                     f"(the SciBox vLLM image) and {'/'.join(ROUTER_NAMES)} (the SciBox router image)")


def is_router(argv: list[str]) -> bool:
    return bool(argv) and Path(argv[0]).name in ROUTER_NAMES


def is_vllm_server(argv: list[str]) -> bool:
    return any(argv[i] == "-m" and argv[i + 1] in VLLM_SERVER_MODULES for i in range(len(argv) - 1))


def set_flag(argv: list[str], flag: str, value: str) -> list[str]:
    """argv with every `flag=X` / `flag X` set to `value`, or `flag=value` appended."""
    out, found, i = [], False, 0
    while i < len(argv):
        arg = argv[i]
        if arg == flag and i + 1 < len(argv):
            out += [flag, value]
            found, i = True, i + 2
            continue
        if arg.startswith(flag + "="):
            out.append(f"{flag}={value}")
            found = True
        else:
            out.append(arg)
        i += 1
    return out if found else out + [f"{flag}={value}"]


def adapt_for_this_host(argv: list[str], env: dict[str, str], pod_ip: str) -> tuple[list[str], dict[str, str]]:
    """The runner's explicit adaptations (module docstring, items 1-3)."""
    env = dict(env)
    if is_vllm_server(argv):
        argv = set_flag(argv, "--host", pod_ip)
        env.update(VLLM_CPU_ENV)
        env["VLLM_HOST_IP"] = pod_ip
    if is_router(argv):  # vllm-router binds its API and its metrics to the pod IP only
        argv = set_flag(set_flag(argv, "--host", pod_ip), "--prometheus-host", pod_ip)
    env.setdefault("HF_ENDPOINT", CLOSED_HUB_ENDPOINT)
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    for key in [k for k in env if k.lower() in ("http_proxy", "https_proxy", "all_proxy")]:
        del env[key]
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.0/8,localhost"
    return argv, env


_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"]+")


def egress_violations(argv: list[str], env: dict[str, str]) -> list[str]:
    """URLs in arguments or environment whose host is not a loopback address."""
    bad = []
    for where, text in [("argument", a) for a in argv] + [(f"env {k}", v) for k, v in env.items()]:
        for url in _URL.findall(text):
            host = urllib.parse.urlsplit(url).hostname or ""
            try:
                loopback = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = host == "localhost"
            if not loopback:
                bad.append(f"{where}: {url}")
    return bad


def host_command(container: dict, pod: dict, *, pod_ip: str, host_ip: str, mounts: list[tuple[str, str]],
                 python: str, scratch: str, termination_file: str,
                 secret: Callable[[str], dict[str, str] | None],
                 config_map: Callable[[str], dict[str, str] | None],
                 markers: dict[str, str] | None = None,
                 short_tmp: str | None = None) -> tuple[list[str], dict[str, str], str]:
    """How one container runs here: (argv, environment, working directory). Pure but for the
    `secret`/`config_map` lookups. `mounts` pairs container paths with host folders; `scratch`
    stands for the container's own root filesystem (HOME and the working directory when the
    pod sets neither). `short_tmp`, a short alias (symlink) of the /tmp mount's folder, is the
    TMPDIR: vLLM makes its ZMQ unix sockets there, and a socket path may not exceed 107 bytes,
    which the state dir's deep folders would."""
    own = resolve_env(container, pod, pod_ip=pod_ip, host_ip=host_ip, secret=secret, config_map=config_map)
    argv = [expand_references(a, own) for a in (container.get("command") or []) + (container.get("args") or [])]
    if not argv:
        raise StartError("the container sets no command: the image's entrypoint is not emulated")
    env = {
        "PATH": os.pathsep.join([str(Path(python).parent), "/usr/local/sbin", "/usr/local/bin",
                                 "/usr/sbin", "/usr/bin", "/sbin", "/bin"]),
        "HOSTNAME": pod["metadata"]["name"],
        "LANG": "C.UTF-8",
        "HOME": "/",
        **IMAGE_ENV,
        # The image's VLLM_PYTHON=python3, i.e. the venv's interpreter here.
        "VLLM_PYTHON": python,
    }
    env.update(own)
    argv, env = adapt_for_this_host(argv, env, pod_ip)
    env = {k: rewrite_value(v, mounts) for k, v in env.items()}
    if env.get("HOME") == "/":
        env["HOME"] = scratch
    tmp = map_path("/tmp", mounts)
    if tmp is not None:
        env.setdefault("TMPDIR", short_tmp or tmp)
    env["TERMINATION_LOG"] = termination_file
    env.update(markers or {})
    argv = [resolve_executable(argv[0], python)] + [rewrite_value(a, mounts) for a in argv[1:]]
    violations = egress_violations(argv, env)
    if violations:
        raise StartError("refused: traffic would leave 127.0.0.0/8 (" + "; ".join(violations) + ")")
    workdir = container.get("workingDir")
    cwd = rewrite_value(workdir, mounts) if workdir else scratch
    if workdir and cwd == workdir:
        raise StartError(f"workingDir {workdir} is not inside a mount or the image")
    return argv, env, cwd


def termination_message(written: str, log_tail: str, exit_code: int, policy: str) -> str:
    """What kubelet puts in `state.terminated.message`."""
    message = written[:TERMINATION_MESSAGE_MAX]
    if not message.strip() and exit_code != 0 and policy == "FallbackToLogsOnError":
        lines = log_tail.splitlines()[-FALLBACK_LOG_LINES:]
        message = "\n".join(lines)[-FALLBACK_LOG_BYTES:]
    return message


def exit_reason(exit_code: int) -> str:
    return "Completed" if exit_code == 0 else "Error"


def returncode_to_exit_code(returncode: int) -> int:
    """Popen gives -N for a signal; a container runtime reports 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def resolve_port(port: Any, container: dict) -> int:
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"probe port {port!r} names no port of container {container.get('name')}")


def pod_phase(restart_policy: str, states: list[dict]) -> str:
    """Phase from container states, as kubelet's getPhase computes it for pods without init
    containers. Each state is {"running"|"waiting"|"terminated": ...}; a waiting container that
    ran before carries "lastTerminated" (its last exit code, or None if it never ran)."""
    running = waiting = stopped = succeeded = 0
    for state in states:
        if "running" in state:
            running += 1
        elif "terminated" in state:
            stopped += 1
            succeeded += state["terminated"].get("exitCode") == 0
        elif state.get("lastTerminated") is not None:
            stopped += 1
            succeeded += state["lastTerminated"] == 0
        else:
            waiting += 1
    if waiting or not states:
        return "Pending"
    if running:
        return "Running"
    if restart_policy == "Always":
        return "Running"  # about to be restarted
    if stopped == succeeded:
        return "Succeeded"
    return "Failed" if restart_policy == "Never" else "Running"


def condition(type_: str, status: bool, previous: dict | None, reason: str = "", message: str = "") -> dict:
    value = "True" if status else "False"
    same = previous is not None and previous.get("status") == value
    out = {"type": type_, "status": value,
           "lastTransitionTime": previous.get("lastTransitionTime") if same else now_rfc3339(),
           "lastProbeTime": None}
    if reason:
        out["reason"] = reason
    if message:
        out["message"] = message
    return out


# ---- processes ------------------------------------------------------------------------------

def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    out = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            out[key.decode(errors="replace")] = value.decode(errors="replace")
    return out


def marked_processes(state_dir: Path, node: str | None = None, pod_uid: str | None = None) -> list[int]:
    """PIDs of live processes a runner of this state dir started (its pods' processes and
    their children), found by the marker variables in their environment."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        env = _environ(int(entry.name))
        if env.get(MARK_STATE) != str(state_dir):
            continue
        if node is not None and env.get(MARK_NODE) != node:
            continue
        if pod_uid is not None and env.get(MARK_POD) != pod_uid:
            continue
        pids.append(int(entry.name))
    return sorted(pids)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def kill_marked(state_dir: Path, node: str | None = None, pod_uid: str | None = None,
                grace: float = 0.0) -> list[int]:
    """SIGTERM (when `grace` > 0), then SIGKILL every marked process; returns the PIDs seen."""
    pids = marked_processes(state_dir, node, pod_uid)
    if grace > 0:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
    for pid in marked_processes(state_dir, node, pod_uid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return pids


def kill_leftovers(state_dir: Path, node: str | None = None) -> list[int]:
    """Every process a (crashed) runner of this state dir left behind, killed at once; and its
    pods' folders outside the state dir (memory emptyDirs, short TMPDIR links) removed."""
    state_dir = Path(state_dir).resolve()
    pids = kill_marked(state_dir, node)
    prefix = str(state_dir / "runner" / node) if node else str(state_dir)
    for link in SHORT_TMP_ROOT.glob("*") if SHORT_TMP_ROOT.is_dir() else []:
        with contextlib.suppress(OSError):
            if link.is_symlink() and (os.readlink(link) + "/").startswith(prefix + "/"):
                link.unlink()
    if node is None:  # memory volumes record the state dir only, not the node
        for shm in SHM_ROOT.glob("scibox-runner-*"):
            with contextlib.suppress(OSError):
                if (shm / SHM_OWNER_FILE).read_text() == str(state_dir):
                    shutil.rmtree(shm, ignore_errors=True)
    return pids


@dataclass
class Probe:
    """One probe of one container, with kubelet's counters."""

    spec: dict
    kind: str  # startup, readiness, liveness
    successes: int = 0
    failures: int = 0
    next_at: float = 0.0
    last_message: str = ""

    def reset(self, started_at: float) -> None:
        self.successes = self.failures = 0
        self.next_at = started_at + float(self.spec.get("initialDelaySeconds", 0))

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds", 10))

    @property
    def timeout(self) -> float:
        return float(self.spec.get("timeoutSeconds", 1))

    @property
    def failure_threshold(self) -> int:
        return int(self.spec.get("failureThreshold", 3))

    @property
    def success_threshold(self) -> int:
        return int(self.spec.get("successThreshold", 1))


@dataclass
class Container:
    spec: dict
    restart_count: int = 0
    process: subprocess.Popen | None = None
    started_at: str | None = None
    started_mono: float = 0.0
    terminated: dict | None = None  # the last terminated state
    last_terminated: dict | None = None
    waiting: tuple[str, str] | None = ("ContainerCreating", "")
    restart_at: float | None = None  # backoff: restart not before this monotonic time
    backoff: float = BACKOFF_START_S
    started: bool = False  # startup probe passed (or none)
    ready: bool = False
    probes: dict[str, Probe] = field(default_factory=dict)
    kill_reason: str | None = None  # why the runner stopped it (liveness, startup, deletion)

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def state(self) -> dict:
        if self.running:
            return {"running": {"startedAt": self.started_at}}
        if self.waiting is not None:
            reason, message = self.waiting
            return {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        if self.terminated is not None:
            return {"terminated": self.terminated}
        return {"waiting": {"reason": "ContainerCreating"}}


class PodWorker:
    """Runs one pod's containers (in a thread of its own) and keeps its status in the API server.

    Not a Thread subclass on purpose: Thread's private methods (`_delete`, `_stop`, ...) would
    be overridden by same-named ones here, and Thread calls `_delete` when the thread ends."""

    def __init__(self, runner: Runner, pod: dict):
        meta = pod["metadata"]
        self.thread = threading.Thread(target=self.run, name=f"pod-{meta['namespace']}/{meta['name']}",
                                       daemon=True)
        self.runner = runner
        self.pod = pod
        self.uid = meta["uid"]
        self.key = f"{meta['namespace']}_{meta['name']}_{self.uid}"
        self.dir = runner.pods_dir / self.key
        self.ip = runner.claim_ip(self.uid)
        self.containers = [Container(c) for c in pod["spec"].get("containers", [])]
        self.restart_policy = pod["spec"].get("restartPolicy", "Always")
        self.mounts: dict[str, list[tuple[str, str]]] | None = None
        self.start_time = now_rfc3339()
        self.delete_requested = threading.Event()
        self.gone = threading.Event()  # the pod left the API: stop at once, write nothing
        self.lock = threading.Lock()
        # Held while containers change state: the worker's own steps and a runner shutdown
        # (another thread) must not both record the same exit.
        self.proc_lock = threading.RLock()
        self.last_status: dict | None = None
        self.finished = False
        self.pod_message = ""

    def start(self) -> None:
        self.thread.start()

    # --- called from the informer thread ------------------------------------------------------
    def update(self, pod: dict) -> None:
        with self.lock:
            self.pod = pod
        if pod["metadata"].get("deletionTimestamp") and not self.delete_requested.is_set():
            log(f"{self.key}: deletion requested (deletionTimestamp {pod['metadata']['deletionTimestamp']}, "
                f"grace {pod['metadata'].get('deletionGracePeriodSeconds')}s)")
            self.delete_requested.set()

    # --- the worker ----------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001 - a bug in one pod must not take the node down
            log(f"{self.key}: worker crashed: {type(exc).__name__}: {exc}")
            self._stop_all(grace=0, reason="RunnerError")
        finally:
            self.runner.worker_done(self)

    def _run(self) -> None:
        if self.pod["spec"].get("initContainers"):
            self._fail_pod("init containers are not supported by the real runner")
        while not self.gone.is_set():
            if self.delete_requested.is_set():
                self._finish_deletion()
                return
            if not self.finished:
                with self.proc_lock:
                    self._step()
            self._sync_status()
            self.gone.wait(TICK_S)
        self._stop_all(grace=0, reason="PodGone")
        self._cleanup()

    def _fail_pod(self, message: str) -> None:
        self.pod_message = message
        for c in self.containers:
            c.waiting = None
            c.terminated = {"exitCode": START_ERROR_EXIT, "reason": "StartError", "message": message,
                            "startedAt": None, "finishedAt": now_rfc3339()}
        self.finished = True

    def _step(self) -> None:
        if self.mounts is None:
            try:
                self.mounts = self._set_up_volumes()
            except MountError as exc:
                for c in self.containers:
                    c.waiting = ("ContainerCreating", f"volume not ready: {exc}")
                return
        for c in self.containers:
            self._step_container(c)
        states = [c.state() for c in self.containers]
        phase = pod_phase(self.restart_policy, states)
        if phase in ("Succeeded", "Failed") and not any(c.running for c in self.containers):
            self.finished = True

    def _step_container(self, c: Container) -> None:
        now = time.monotonic()
        if c.process is not None and c.process.poll() is not None:
            self._record_exit(c)
        if c.running:
            self._run_probes(c, now)
            return
        if c.terminated is not None and c.restart_at is None:
            if not self._should_restart(c):
                return
            c.restart_at = now + c.backoff
            c.waiting = ("CrashLoopBackOff", f"back-off {c.backoff:.0f}s restarting failed container="
                                             f"{c.name} pod={self.pod['metadata']['name']}")
            c.backoff = min(c.backoff * 2, BACKOFF_MAX_S)
        if c.restart_at is not None and now < c.restart_at:
            return
        self._start(c)

    def _should_restart(self, c: Container) -> bool:
        if self.restart_policy == "Always":
            return True
        if self.restart_policy == "OnFailure":
            return c.terminated.get("exitCode") != 0
        return False

    def _record_exit(self, c: Container) -> None:
        if c.process is None:
            return
        code = returncode_to_exit_code(c.process.returncode)
        log_text = self._log_tail(c)
        term_file = self._termination_file(c)
        try:
            written = term_file.read_text(errors="replace")
        except OSError:
            written = ""
        policy = c.spec.get("terminationMessagePolicy", "File")
        message = termination_message(written, log_text, code, policy)
        c.last_terminated = c.terminated
        c.terminated = {"exitCode": code, "reason": exit_reason(code), "startedAt": c.started_at,
                        "finishedAt": now_rfc3339(), "containerID": self._container_id(c)}
        if message:
            c.terminated["message"] = message
        if c.process.returncode < 0:
            c.terminated["signal"] = -c.process.returncode
        # The rest of its group (engine workers and their children) goes with the main process.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(c.process.pid, signal.SIGKILL)
        c.process = None
        c.ready = c.started = False
        if not any(x.running for x in self.containers):
            kill_marked(self.runner.state_dir, self.runner.node, self.uid)
        if c.kill_reason is None:
            log(f"{self.key}/{c.name}: exited with {code}")
        c.kill_reason = None

    def _termination_file(self, c: Container) -> Path:
        return self.dir / "termination" / c.name

    def _log_path(self, c: Container) -> Path:
        return self.runner.logs_dir / f"{self.key}_{c.name}.log"

    def _log_tail(self, c: Container, limit: int = 65536) -> str:
        try:
            with open(self._log_path(c), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - limit))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _container_id(self, c: Container) -> str:
        return f"scibox-runner://{self.uid[:8]}-{c.name}-{c.restart_count}"

    # --- volumes ----------------------------------------------------------------------------
    def _set_up_volumes(self) -> dict[str, list[tuple[str, str]]]:
        """Per container: (mount path, host path) pairs, image paths and the termination log."""
        pod = self.pod
        ns = pod["metadata"]["namespace"]
        volumes: dict[str, str] = {}
        for vol in pod["spec"].get("volumes") or []:
            volumes[vol["name"]] = self._volume_host_path(vol, ns)
        out: dict[str, list[tuple[str, str]]] = {}
        for c in self.containers:
            term = self._termination_file(c)
            term.parent.mkdir(parents=True, exist_ok=True)
            term.write_text("")
            pairs = [(k, str(v)) for k, v in IMAGE_PATHS.items()]
            pairs.append((c.spec.get("terminationMessagePath", TERMINATION_LOG_PATH), str(term)))
            for m in c.spec.get("volumeMounts") or []:
                if m["name"] not in volumes:
                    raise MountError(f"volume {m['name']!r} is not in the pod spec")
                host = volumes[m["name"]]
                if m.get("subPath"):
                    host = str(Path(host) / m["subPath"])
                    Path(host).mkdir(parents=True, exist_ok=True)
                pairs.append((m["mountPath"], host))
            out[c.name] = pairs
        return out

    def _volume_host_path(self, vol: dict, ns: str) -> str:
        name = vol["name"]
        if "emptyDir" in vol:
            if (vol["emptyDir"] or {}).get("medium") == "Memory":
                root = SHM_ROOT / f"scibox-runner-{self.uid}"
                root.mkdir(parents=True, exist_ok=True)
                (root / SHM_OWNER_FILE).write_text(str(self.runner.state_dir))  # for kill_leftovers
                path = root / name
            else:
                path = self.dir / "volumes" / name
            path.mkdir(parents=True, exist_ok=True)
            return str(path)
        if "persistentVolumeClaim" in vol:
            claim = vol["persistentVolumeClaim"]["claimName"]
            pvc = self.runner.read(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}")
            if pvc is None:
                raise MountError(f'persistentvolumeclaim "{claim}" not found')
            pv_name = (pvc.get("spec") or {}).get("volumeName")
            if not pv_name or (pvc.get("status") or {}).get("phase") != "Bound":
                raise MountError(f'persistentvolumeclaim "{claim}" is not bound')
            pv = self.runner.read(f"/api/v1/persistentvolumes/{pv_name}")
            if pv is None:
                raise MountError(f'persistentvolume "{pv_name}" not found')
            host_path = ((pv.get("spec") or {}).get("hostPath") or {}).get("path")
            if not host_path:
                raise MountError(f"persistentvolume {pv_name} is not a hostPath volume")
            return self._inside_state_dir(host_path, create=True)
        if "hostPath" in vol:
            create = vol["hostPath"].get("type") in ("DirectoryOrCreate",)
            return self._inside_state_dir(vol["hostPath"]["path"], create=create)
        for kind in ("secret", "configMap"):
            if kind in vol:
                ref = vol[kind]
                ref_name = ref.get("secretName") if kind == "secret" else ref.get("name")
                data = (self.runner.secret_data if kind == "secret" else self.runner.config_map_data)(ns, ref_name)
                if data is None:
                    if ref.get("optional"):
                        data = {}
                    else:
                        raise MountError(f'{kind.lower()} "{ref_name}" not found')
                path = self.dir / "volumes" / name
                path.mkdir(parents=True, exist_ok=True)
                items = ref.get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    if item["key"] in data:
                        target = path / item["path"]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_text(data[item["key"]])
                return str(path)
        if "projected" in vol:
            path = self.dir / "volumes" / name
            path.mkdir(parents=True, exist_ok=True)
            for src in vol["projected"].get("sources") or []:
                for rel, text in self._projected_files(src, ns).items():
                    target = path / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(text)
            return str(path)
        raise MountError(f"volume {name}: type {sorted(set(vol) - {'name'})} is not supported by the real runner")

    def _projected_files(self, src: dict, ns: str) -> dict[str, str]:
        """Files of one projected source: what the service-account volume
        (kube-api-access-*) holds, or any Secret/ConfigMap/downward API projection."""
        if "serviceAccountToken" in src:
            sat = src["serviceAccountToken"]
            sa = self.pod["spec"].get("serviceAccountName") or "default"
            spec: dict[str, Any] = {"expirationSeconds": int(sat.get("expirationSeconds", 3607)),
                                    "boundObjectRef": {"kind": "Pod", "apiVersion": "v1",
                                                       "name": self.pod["metadata"]["name"], "uid": self.uid}}
            if sat.get("audience"):
                spec["audiences"] = [sat["audience"]]
            try:
                token = self.runner.rest.create(f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token",
                                                {"apiVersion": "authentication.k8s.io/v1",
                                                 "kind": "TokenRequest", "spec": spec})
            except ApiError as exc:
                raise MountError(f"service account token for {sa}: {exc}") from None
            return {sat["path"]: token["status"]["token"]}
        for kind, key in (("secret", "secret"), ("configmap", "configMap")):
            if key in src:
                ref = src[key]
                reader = self.runner.secret_data if kind == "secret" else self.runner.config_map_data
                data = reader(ns, ref["name"])
                if data is None:
                    if ref.get("optional"):
                        return {}
                    raise MountError(f'{kind} "{ref["name"]}" not found')
                items = ref.get("items") or [{"key": k, "path": k} for k in data]
                return {i["path"]: data[i["key"]] for i in items if i["key"] in data}
        if "downwardAPI" in src:
            out = {}
            for item in src["downwardAPI"].get("items") or []:
                if "fieldRef" not in item:
                    raise MountError(f"downwardAPI item {item.get('path')}: only fieldRef is supported")
                try:
                    out[item["path"]] = field_value(self.pod, item["fieldRef"]["fieldPath"], self.ip,
                                                    self.runner.node_ip)
                except ConfigError as exc:
                    raise MountError(str(exc)) from None
            return out
        raise MountError(f"projected source {sorted(src)} is not supported by the real runner")

    def _inside_state_dir(self, path: str, create: bool) -> str:
        resolved = Path(path).resolve()
        root = self.runner.state_dir.resolve()
        if resolved != root and root not in resolved.parents:
            raise MountError(f"host path {path} is outside the cluster state dir {root}; refused")
        if create:
            resolved.mkdir(parents=True, exist_ok=True)
        elif not resolved.exists():
            raise MountError(f"host path {path} does not exist")
        return str(resolved)

    # --- starting ----------------------------------------------------------------------------
    def command_for(self, c: Container) -> tuple[list[str], dict[str, str], str]:
        """argv, environment and working directory of a container on this host."""
        assert self.mounts is not None
        ns = self.pod["metadata"]["namespace"]
        scratch = self.dir / "scratch" / c.name
        scratch.mkdir(parents=True, exist_ok=True)
        argv, env, cwd = host_command(
            c.spec, self.pod, pod_ip=self.ip, host_ip=self.runner.node_ip, mounts=self.mounts[c.name],
            python=self.runner.python, scratch=str(scratch), termination_file=str(self._termination_file(c)),
            secret=lambda n: self.runner.secret_data(ns, n), config_map=lambda n: self.runner.config_map_data(ns, n),
            markers={MARK_STATE: str(self.runner.state_dir), MARK_NODE: self.runner.node, MARK_POD: self.uid},
            short_tmp=self._short_tmp(c))
        sa_dir = map_path(SERVICE_ACCOUNT_DIR, self.mounts[c.name])
        if sa_dir is not None and "KUBECONFIG" not in env:
            env["KUBECONFIG"] = self._in_cluster_kubeconfig(scratch, sa_dir, ns)
        return argv, env, cwd

    def _in_cluster_kubeconfig(self, scratch: Path, sa_dir: str, ns: str) -> str:
        """What a pod's in-cluster config is (the API server's address, the mounted CA and token)
        as a kubeconfig file: clients read it (client-go, kube-rs) before looking for
        KUBERNETES_SERVICE_HOST, which the runner does not emulate."""
        path = scratch / "in-cluster.kubeconfig"
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "in-cluster",
            "clusters": [{"name": "in-cluster", "cluster": {"server": self.runner.rest.server,
                                                            "certificate-authority": f"{sa_dir}/ca.crt"}}],
            "users": [{"name": "pod", "user": {"tokenFile": f"{sa_dir}/token"}}],
            "contexts": [{"name": "in-cluster", "context": {"cluster": "in-cluster", "user": "pod", "namespace": ns}}],
        }
        path.write_text(json.dumps(config, indent=1))
        return str(path)

    def _short_tmp(self, c: Container) -> str | None:
        """A short symlink to the folder of the container's /tmp mount (see host_command)."""
        target = map_path("/tmp", self.mounts[c.name]) if self.mounts else None
        if target is None:
            return None
        index = self.containers.index(c) if c in self.containers else 0
        link = SHORT_TMP_ROOT / f"{self.uid[:13]}-{index}"
        SHORT_TMP_ROOT.mkdir(parents=True, exist_ok=True)
        if not (link.is_symlink() and os.readlink(link) == target):
            link.unlink(missing_ok=True)
            link.symlink_to(target, target_is_directory=True)
        return str(link)

    def _start(self, c: Container) -> None:
        c.restart_at = None
        try:
            argv, env, cwd = self.command_for(c)
        except ConfigError as exc:
            c.waiting = ("CreateContainerConfigError", str(exc))
            c.restart_at = time.monotonic() + 2.0  # kubelet retries; the Secret may appear
            return
        except StartError as exc:
            if c.terminated is not None:
                c.last_terminated = c.terminated
            c.waiting = None
            c.terminated = {"exitCode": START_ERROR_EXIT, "reason": "StartError", "message": str(exc),
                            "startedAt": None, "finishedAt": now_rfc3339()}
            log(f"{self.key}/{c.name}: {exc}")
            return
        if c.terminated is not None:
            c.restart_count += 1
        log_path = self._log_path(c)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        (self.dir / "cmd").mkdir(parents=True, exist_ok=True)
        (self.dir / "cmd" / f"{c.name}.json").write_text(json.dumps(
            {"argv": argv, "cwd": cwd, "env": {k: ("<hidden>" if "KEY" in k or "TOKEN" in k else v)
                                               for k, v in sorted(env.items())}}, indent=1))
        with open(log_path, "ab") as out:
            out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} start {c.name} "
                      f"(restart {c.restart_count}) on {self.ip}\n".encode())
            out.flush()
            try:
                c.process = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                             stdout=out, stderr=subprocess.STDOUT,
                                             start_new_session=True)
            except OSError as exc:
                c.waiting = None
                c.terminated = {"exitCode": START_ERROR_EXIT, "reason": "StartError",
                                "message": f"exec {argv[0]}: {exc}", "startedAt": None,
                                "finishedAt": now_rfc3339()}
                return
        c.started_at = now_rfc3339()
        c.started_mono = time.monotonic()
        c.waiting = None
        c.ready = False
        c.probes = {kind: Probe(c.spec[f"{kind}Probe"], kind) for kind in ("startup", "readiness", "liveness")
                    if c.spec.get(f"{kind}Probe")}
        for probe in c.probes.values():
            probe.reset(c.started_mono)
        c.started = "startup" not in c.probes
        log(f"{self.key}/{c.name}: started pid {c.process.pid} on {self.ip}: {' '.join(argv[:6])} ...")

    # --- probes -----------------------------------------------------------------------------
    def _run_probes(self, c: Container, now: float) -> None:
        if "startup" in c.probes and not c.started:
            probe = c.probes["startup"]
            if now >= probe.next_at:
                if self._probe_once(c, probe):
                    c.started = True
                    for other in ("readiness", "liveness"):
                        if other in c.probes:
                            c.probes[other].reset(now)
                elif probe.failures >= probe.failure_threshold:
                    self._kill_for_restart(c, f"Startup probe failed: {probe.last_message}")
            return
        if "liveness" in c.probes:
            probe = c.probes["liveness"]
            if now >= probe.next_at and not self._probe_once(c, probe) \
                    and probe.failures >= probe.failure_threshold:
                self._kill_for_restart(c, f"Liveness probe failed: {probe.last_message}")
                return
        if "readiness" in c.probes:
            probe = c.probes["readiness"]
            if now >= probe.next_at:
                ok = self._probe_once(c, probe)
                if ok and probe.successes >= probe.success_threshold:
                    c.ready = True
                elif not ok and probe.failures >= probe.failure_threshold:
                    c.ready = False
        else:
            c.ready = c.started

    def _probe_once(self, c: Container, probe: Probe) -> bool:
        probe.next_at = time.monotonic() + probe.period
        try:
            ok, message = self._probe_call(c, probe)
        except Exception as exc:  # noqa: BLE001 - any failure is a failed probe
            ok, message = False, f"{type(exc).__name__}: {exc}"
        probe.last_message = message
        if ok:
            probe.successes += 1
            probe.failures = 0
        else:
            probe.failures += 1
            probe.successes = 0
        return ok

    def _probe_call(self, c: Container, probe: Probe) -> tuple[bool, str]:
        spec = probe.spec
        if "httpGet" in spec:
            get = spec["httpGet"]
            host = get.get("host") or self.ip
            if not ipaddress.ip_address(host).is_loopback:
                return False, f"probe host {host} is outside 127.0.0.0/8; not probed"
            port = resolve_port(get.get("port", 80), c.spec)
            scheme = get.get("scheme", "HTTP").lower()
            url = f"{scheme}://{host}:{port}{get.get('path', '/')}"
            request = urllib.request.Request(url, headers={h["name"]: h["value"] for h in get.get("httpHeaders") or []})
            handlers: list[Any] = [urllib.request.ProxyHandler({})]
            if scheme == "https":
                insecure = ssl.create_default_context()
                insecure.check_hostname = False
                insecure.verify_mode = ssl.CERT_NONE  # as kubelet: probes do not verify certificates
                handlers.append(urllib.request.HTTPSHandler(context=insecure))
            try:
                with urllib.request.build_opener(*handlers).open(request, timeout=probe.timeout) as resp:
                    return 200 <= resp.status < 400, f"HTTP probe {url}: {resp.status}"
            except urllib.error.HTTPError as exc:
                return 200 <= exc.code < 400, f"HTTP probe failed with statuscode: {exc.code}"
            except (OSError, ValueError) as exc:
                return False, f'Get "{url}": {exc}'
        if "tcpSocket" in spec:
            host = spec["tcpSocket"].get("host") or self.ip
            port = resolve_port(spec["tcpSocket"]["port"], c.spec)
            with socket.create_connection((host, port), timeout=probe.timeout):
                return True, ""
        if "exec" in spec:
            argv, env, cwd = self.command_for(Container(dict(c.spec, command=spec["exec"]["command"], args=[])))
            done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, timeout=probe.timeout)
            return done.returncode == 0, done.stdout.decode(errors="replace")[-512:]
        return False, f"unsupported probe {sorted(spec)}"

    def _kill_for_restart(self, c: Container, why: str) -> None:
        log(f"{self.key}/{c.name}: {why}; restarting")
        self.runner.event(self.pod, "Warning", "Unhealthy", why)
        c.kill_reason = why
        self._stop_container(c, self._grace())

    # --- stopping ---------------------------------------------------------------------------
    def _grace(self) -> float:
        meta = self.pod["metadata"]
        if meta.get("deletionGracePeriodSeconds") is not None:
            return float(meta["deletionGracePeriodSeconds"])
        return float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))

    def _stop_container(self, c: Container, grace: float) -> None:
        with self.proc_lock:
            self._stop_container_locked(c, grace)

    def _stop_container_locked(self, c: Container, grace: float) -> None:
        if c.process is None:
            return
        if c.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(c.process.pid, signal.SIGTERM)
            try:
                c.process.wait(timeout=max(grace, 0.0))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(c.process.pid, signal.SIGKILL)
                c.process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(c.process.pid, signal.SIGKILL)  # what is left of its group
        self._record_exit(c)

    def _stop_all(self, grace: float, reason: str) -> None:
        for c in self.containers:
            if c.running:
                c.kill_reason = reason
        threads = [threading.Thread(target=self._stop_container, args=(c, grace)) for c in self.containers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # Anything that escaped its process group (a daemon that called setsid) goes too.
        kill_marked(self.runner.state_dir, self.runner.node, self.uid, grace=min(grace, 5.0))

    def _finish_deletion(self) -> None:
        grace = self._grace()
        running = any(c.running for c in self.containers)
        if running:
            self.runner.event(self.pod, "Normal", "Killing", "Stopping container(s)")
        if running:
            log(f"{self.key}: stopping for the pod's deletion, grace {grace:.0f}s")
        self._stop_all(grace, "PodDeleted")
        for c in self.containers:
            if c.terminated is None:
                c.waiting = None
                c.terminated = {"exitCode": 137, "reason": "ContainerStatusUnknown",
                                "message": "the pod was deleted before the container started",
                                "startedAt": None, "finishedAt": now_rfc3339()}
            c.waiting = None
            c.restart_at = None
        self.finished = True
        self._sync_status(final=True)
        meta = self.pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        with contextlib.suppress(ApiError, OSError):
            self.runner.rest.request("DELETE", path, {"apiVersion": "v1", "kind": "DeleteOptions",
                                                      "gracePeriodSeconds": 0,
                                                      "preconditions": {"uid": self.uid}})
        self._cleanup()

    def _cleanup(self) -> None:
        for link in SHORT_TMP_ROOT.glob(f"{self.uid[:13]}-*"):
            link.unlink(missing_ok=True)
        shutil.rmtree(self.dir / "volumes", ignore_errors=True)
        shutil.rmtree(self.dir / "scratch", ignore_errors=True)
        shutil.rmtree(SHM_ROOT / f"scibox-runner-{self.uid}", ignore_errors=True)

    # --- status -----------------------------------------------------------------------------
    def status(self, final: bool = False) -> dict:
        with self.lock:
            pod = self.pod
        previous = {c["type"]: c for c in (pod.get("status") or {}).get("conditions") or []}
        statuses = []
        for c in self.containers:
            state = c.state()
            last = c.last_terminated if "terminated" in state else c.terminated
            entry = {
                "name": c.name, "image": c.spec.get("image", ""),
                "imageID": f"scibox-runner://{c.spec.get('image', '')}",
                "ready": bool(c.ready and c.running), "started": bool(c.started and c.running),
                "restartCount": c.restart_count, "state": state,
                "lastState": {"terminated": last} if last else {},
            }
            if c.running or c.terminated:
                entry["containerID"] = self._container_id(c)
            statuses.append(entry)
        phase = pod_phase(self.restart_policy, [
            dict(s["state"], lastTerminated=s["lastState"]["terminated"].get("exitCode"))
            if s["lastState"] else s["state"] for s in statuses])
        if final and phase not in ("Succeeded", "Failed"):
            phase = "Succeeded" if all(
                s["state"].get("terminated", {}).get("exitCode") == 0 for s in statuses) else "Failed"
        all_ready = all(s["ready"] for s in statuses) and phase == "Running"
        volumes_ready = self.mounts is not None
        terminal = phase in ("Succeeded", "Failed")
        not_ready = [s["name"] for s in statuses if not s["ready"]]
        why = "PodCompleted" if terminal else ("ContainersNotReady" if not all_ready else "")
        msg = "" if all_ready or terminal else f"containers with unready status: [{' '.join(not_ready)}]"
        conditions = [c for t, c in previous.items()
                      if t not in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")]
        conditions += [
            condition("PodReadyToStartContainers", volumes_ready and not terminal,
                      previous.get("PodReadyToStartContainers")),
            condition("Initialized", True, previous.get("Initialized"),
                      "PodCompleted" if terminal else ""),
            condition("Ready", all_ready, previous.get("Ready"), why, msg),
            condition("ContainersReady", all_ready, previous.get("ContainersReady"), why, msg),
        ]
        status = {
            "phase": phase,
            "conditions": sorted(conditions, key=lambda c: c["type"]),
            "hostIP": self.runner.node_ip, "hostIPs": [{"ip": self.runner.node_ip}],
            "podIP": self.ip, "podIPs": [{"ip": self.ip}],
            "startTime": (pod.get("status") or {}).get("startTime") or self.start_time,
            "containerStatuses": statuses,
        }
        if self.pod_message:
            status["message"] = self.pod_message
        return status

    def _sync_status(self, final: bool = False) -> None:
        if self.runner.stop.is_set():
            # The node is going away, not the pod: what its processes do now (killed with
            # the runner) is no news for the API; the next runner runs the pod again.
            return
        status = self.status(final=final)
        comparable = copy.deepcopy(status)
        for cond in comparable["conditions"]:
            cond.pop("lastTransitionTime", None)
        if comparable == self.last_status:
            return
        meta = self.pod["metadata"]
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        try:
            result = self.runner.rest.request("PATCH", path, {"status": status}, "application/merge-patch+json")
        except ApiError as exc:
            if exc.status == 404:
                log(f"{self.key}: the pod is gone from the API")
                self.gone.set()
            else:
                log(f"{self.key}: status update failed: {exc}")
            return
        except OSError as exc:
            log(f"{self.key}: status update failed: {exc}")
            return
        self.last_status = comparable
        if isinstance(result, dict) and result.get("metadata", {}).get("uid") == self.uid:
            with self.lock:
                self.pod = result


class Runner:
    """The node: heartbeat, pod informer, one PodWorker per pod bound here."""

    def __init__(self, state_dir: Path, node: str, *, gpus: int = 2, node_ip: str = DEFAULT_NODE_IP,
                 pod_cidr: str = POD_CIDR, python: str | None = None, labels: dict[str, str] | None = None,
                 taints: tuple[dict, ...] = ()):
        self.state_dir = Path(state_dir).resolve()
        self.node = node
        self.gpus = gpus
        self.node_ip = node_ip
        self.pod_cidr = pod_cidr
        if not ipaddress.ip_address(node_ip).is_loopback or not ipaddress.ip_network(pod_cidr).is_loopback:
            raise ValueError("node IP and pod CIDR must be inside 127.0.0.0/8")
        self.python = python or sys.executable
        self.labels = dict(labels or {})
        self.taints = tuple(taints)
        self.root = self.state_dir / "runner" / node
        self.pods_dir = self.root / "pods"
        self.logs_dir = self.root / "logs"
        self.rest = self._node_client()
        self.workers: dict[str, PodWorker] = {}
        self.finished_uids: set[str] = set()
        self.ips: dict[str, str] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()

    # --- identity ---------------------------------------------------------------------------
    def _node_client(self) -> Rest:
        """A client certificate for `system:node:<node>` signed by the cluster CA."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        from .pki import CertificateAuthority

        pki = self.state_dir / "pki"
        stem = f"node-{self.node}"
        cert, key = pki / f"{stem}.crt", pki / f"{stem}.key"
        if not cert.is_file():
            ca = CertificateAuthority(x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes()),
                                      serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None))
            ca.issue(f"system:node:{self.node}", ("system:nodes",)).write(pki, stem)
        server = (self.state_dir / "apiserver-url").read_text().strip()
        return Rest(server, pki / "ca.crt", cert, key, timeout=30)

    # --- small API helpers ------------------------------------------------------------------
    def read(self, path: str) -> dict | None:
        try:
            return self.rest.get_or_none(path)
        except ApiError as exc:
            if exc.status == 403:  # the Node authorizer's graph may lag a fresh binding by a moment
                return None
            raise

    def secret_data(self, ns: str, name: str) -> dict[str, str] | None:
        obj = self.read(f"/api/v1/namespaces/{ns}/secrets/{name}")
        if obj is None:
            return None
        return {k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("data") or {}).items()}

    def config_map_data(self, ns: str, name: str) -> dict[str, str] | None:
        obj = self.read(f"/api/v1/namespaces/{ns}/configmaps/{name}")
        return None if obj is None else dict(obj.get("data") or {})

    def event(self, pod: dict, type_: str, reason: str, message: str) -> None:
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"kind": "Pod", "apiVersion": "v1", "namespace": meta["namespace"],
                               "name": meta["name"], "uid": meta["uid"]},
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": "kubelet", "host": self.node},
            "firstTimestamp": now_rfc3339(), "lastTimestamp": now_rfc3339(), "count": 1,
        }
        with contextlib.suppress(ApiError, OSError):
            self.rest.create(f"/api/v1/namespaces/{meta['namespace']}/events", body)

    def claim_ip(self, uid: str) -> str:
        with self.lock:
            if uid not in self.ips:
                # Other clusters' runners on this host allocate from the same range: an address
                # something already listens on is theirs (a vLLM server would fail to bind it).
                self.ips[uid] = allocate_ip(set(self.ips.values()) | listening_addresses(), self.pod_cidr)
            return self.ips[uid]

    def worker_done(self, worker: PodWorker) -> None:
        with self.lock:
            if self.workers.get(worker.uid) is worker:
                del self.workers[worker.uid]
            self.ips.pop(worker.uid, None)
            self.finished_uids.add(worker.uid)

    # --- the node ---------------------------------------------------------------------------
    def node_shape(self) -> NodeShape:
        labels = dict(H100_LABELS)
        labels.update(self.labels)
        return NodeShape(self.node, cpu=str(os.cpu_count() or 1), memory=_memory_quantity(), gpus=self.gpus,
                         labels=labels, taints=self.taints, real_runner=True)

    def register(self) -> None:
        shape = self.node_shape()
        if self.rest.get_or_none(f"/api/v1/nodes/{self.node}") is not None:
            return
        body = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.node, "labels": shape.all_labels()},
            "spec": {"taints": [dict(t) for t in shape.taints]} if shape.taints else {},
        }
        self.rest.create("/api/v1/nodes", body, exist_ok=True)
        log(f"registered node {self.node}")

    def post_node_status(self) -> None:
        node = self.rest.get(f"/api/v1/nodes/{self.node}")
        shape = self.node_shape()
        capacity = dict((node.get("status") or {}).get("capacity") or {}) or shape.resources()
        if GPU_RESOURCE not in capacity and self.gpus:
            capacity[GPU_RESOURCE] = str(self.gpus)
        previous = {c["type"]: c for c in (node.get("status") or {}).get("conditions") or []}
        heartbeat = now_rfc3339()
        conditions = []
        for type_, ok, reason, message in (
                ("MemoryPressure", False, "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                ("DiskPressure", False, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                ("PIDPressure", False, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                ("Ready", True, "KubeletReady", "scibox real runner is posting ready status")):
            cond = condition(type_, ok, previous.get(type_), reason, message)
            cond.pop("lastProbeTime")
            cond["lastHeartbeatTime"] = heartbeat
            conditions.append(cond)
        status = {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": self.node_ip},
                          {"type": "Hostname", "address": self.node}],
            "nodeInfo": {"kubeletVersion": "v1.35.4-scibox-runner", "kubeProxyVersion": "",
                         "containerRuntimeVersion": "scibox-runner://1", "operatingSystem": "linux",
                         "architecture": "amd64", "osImage": "scibox real runner",
                         "kernelVersion": os.uname().release, "machineID": "", "systemUUID": "",
                         "bootID": ""},
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        }
        self.rest.request("PATCH", f"/api/v1/nodes/{self.node}/status", {"status": status},
                          "application/merge-patch+json")

    def renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node}"
        spec = {"holderIdentity": self.node, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now_micro()}
        lease = self.rest.get_or_none(path)
        if lease is None:
            node = self.rest.get(f"/api/v1/nodes/{self.node}")
            self.rest.create("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.node, "namespace": "kube-node-lease",
                             "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": self.node,
                                                  "uid": node["metadata"]["uid"]}]},
                "spec": spec}, exist_ok=True)
        else:
            lease["spec"] = dict(lease.get("spec") or {}, **spec)
            self.rest.request("PUT", path, lease)

    def heartbeat_loop(self) -> None:
        last_status = 0.0
        while not self.stop.is_set():
            try:
                self.renew_lease()
                if time.monotonic() - last_status > NODE_STATUS_SECONDS:
                    self.post_node_status()
                    last_status = time.monotonic()
            except (ApiError, OSError, ValueError, KeyError) as exc:
                log(f"heartbeat failed: {type(exc).__name__}: {str(exc)[:200]}")
                last_status = 0.0
            self.stop.wait(LEASE_RENEW_SECONDS)

    # --- pods -------------------------------------------------------------------------------
    def on_pod(self, pod: dict) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            worker = self.workers.get(uid)
            if worker is None and uid in self.finished_uids:
                return
        if worker is not None:
            worker.update(pod)
            return
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            # Finished before this runner started: nothing to run; only a deletion to finalize.
            if pod["metadata"].get("deletionTimestamp"):
                self._finalize_deleted(pod)
            return
        worker = PodWorker(self, pod)
        with self.lock:
            self.workers[uid] = worker
        worker.update(pod)
        worker.start()

    def _finalize_deleted(self, pod: dict) -> None:
        meta = pod["metadata"]
        with self.lock:
            self.finished_uids.add(meta["uid"])
        with contextlib.suppress(ApiError, OSError):
            self.rest.request("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                              {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                               "preconditions": {"uid": meta["uid"]}})

    def on_pod_gone(self, uid: str) -> None:
        with self.lock:
            worker = self.workers.get(uid)
            self.finished_uids.discard(uid)
        if worker is not None:
            log(f"{worker.key}: the pod is gone from the API")
            worker.gone.set()

    def informer_loop(self) -> None:
        selector = urllib.parse.quote(f"spec.nodeName={self.node}")
        path = f"/api/v1/pods?fieldSelector={selector}"
        while not self.stop.is_set():
            try:
                listing = self.rest.get(path)
                seen = set()
                for pod in listing.get("items", []):
                    seen.add(pod["metadata"]["uid"])
                    self.on_pod(pod)
                with self.lock:
                    vanished = [u for u in self.workers if u not in seen]
                    self.finished_uids &= seen
                for uid in vanished:
                    self.on_pod_gone(uid)
                rv = listing["metadata"]["resourceVersion"]
                while not self.stop.is_set():
                    for event in self.rest.watch(path, rv, timeout_seconds=60):
                        obj = event.get("object", {})
                        kind = event.get("type")
                        if kind == "ERROR":
                            raise ApiError(obj.get("code", 500), "WATCH", path, str(obj))
                        rv = obj.get("metadata", {}).get("resourceVersion", rv)
                        if kind in ("ADDED", "MODIFIED"):
                            self.on_pod(obj)
                        elif kind == "DELETED":
                            self.on_pod_gone(obj["metadata"]["uid"])
                        if self.stop.is_set():
                            break
            except (ApiError, OSError, ValueError) as exc:
                if not self.stop.is_set():
                    log(f"pod watch: {type(exc).__name__}: {str(exc)[:200]}; re-listing in 1s")
                    self.stop.wait(1.0)

    # --- lifecycle --------------------------------------------------------------------------
    def run(self) -> None:
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        leftovers = kill_leftovers(self.state_dir, self.node)
        if leftovers:
            log(f"killed {len(leftovers)} processes a previous runner of {self.node} left behind")
        self.register()
        self.renew_lease()  # before Ready: whoever sees the node Ready also finds its Lease
        self.post_node_status()
        threads = [threading.Thread(target=self.heartbeat_loop, name="heartbeat", daemon=True),
                   threading.Thread(target=self.informer_loop, name="pods", daemon=True)]
        for t in threads:
            t.start()
        log(f"real runner for node {self.node} ({self.gpus} fake {GPU_RESOURCE}, pod IPs {self.pod_cidr}) "
            f"running as system:node:{self.node}")
        while not self.stop.is_set():
            self.stop.wait(1.0)
        self.shutdown()

    def shutdown(self, grace: float = 20.0) -> None:
        """Stop every pod's processes (the node goes away with its runner)."""
        with self.lock:
            workers = list(self.workers.values())
        for w in workers:
            w.gone.set()
        stoppers = [threading.Thread(target=w._stop_all, args=(grace, "RunnerStopped")) for w in workers]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        for w in workers:
            w._cleanup()
        kill_marked(self.state_dir, self.node)
        log(f"runner for {self.node} stopped")


def _memory_quantity() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1])}Ki"
    except OSError:
        pass
    return "8Gi"


def parse_taint(text: str) -> dict:
    """`key=value:Effect` or `key:Effect`."""
    head, sep, effect = text.rpartition(":")
    if not sep or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
        raise argparse.ArgumentTypeError(f"taint {text!r} must be key[=value]:NoSchedule|PreferNoSchedule|NoExecute")
    key, _, value = head.partition("=")
    taint = {"key": key, "effect": effect}
    if value:
        taint["value"] = value
    return taint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.localcluster.runner", description=__doc__.split("\n")[0])
    parser.add_argument("--state-dir", required=True, type=Path, help="the cluster's state dir")
    parser.add_argument("--node", required=True, help="the node this runner owns (registered if missing)")
    parser.add_argument("--gpus", type=int, default=2, help="fake nvidia.com/gpu capacity")
    parser.add_argument("--node-ip", default=DEFAULT_NODE_IP)
    parser.add_argument("--pod-cidr", default=POD_CIDR)
    parser.add_argument("--label", action="append", default=[], help="k=v label at registration")
    parser.add_argument("--taint", action="append", default=[], type=parse_taint,
                        help="key[=value]:Effect taint at registration")
    args = parser.parse_args(argv)
    labels = dict(item.split("=", 1) for item in args.label)
    runner = Runner(args.state_dir, args.node, gpus=args.gpus, node_ip=args.node_ip, pod_cidr=args.pod_cidr,
                    labels=labels, taints=tuple(args.taint))
    import faulthandler

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: thread stacks to the log
    signal.signal(signal.SIGTERM, lambda *_: runner.stop.set())
    signal.signal(signal.SIGINT, lambda *_: runner.stop.set())
    runner.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
