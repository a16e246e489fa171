"""The real helm binary (built by tools/localcluster) run on the chart, with an empty HOME so no
user repositories, plugins or caches take part."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tools.localcluster import versions

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "scibox-vllm-operator"
KUBE_VERSION = versions.KUBERNETES.lstrip("v")  # what the local cluster runs


def helm_binary() -> Path:
    from tools.localcluster import build

    return build.binary("helm")


class HelmError(RuntimeError):
    def __init__(self, args: list[str], proc: subprocess.CompletedProcess):
        super().__init__(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr.strip()}")
        self.stderr = proc.stderr
        self.returncode = proc.returncode


def helm(*args: str, kubeconfig: Path | None = None, check: bool = True,
         timeout: float = 180) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as home:
        env = {"HOME": home, "PATH": "/usr/bin:/bin", "HELM_CACHE_HOME": f"{home}/cache",
               "HELM_CONFIG_HOME": f"{home}/config", "HELM_DATA_HOME": f"{home}/data"}
        argv = [str(helm_binary()), *args]
        if kubeconfig is not None:
            argv += ["--kubeconfig", str(kubeconfig)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise HelmError(list(args), proc)
    return proc


def set_args(values: dict[str, Any] | None) -> list[str]:
    """--set-json per top-level key: exact types, no string-escaping surprises."""
    import json

    out: list[str] = []
    for key, value in (values or {}).items():
        out += ["--set-json", f"{key}={json.dumps(value)}"]
    return out


def template_text(values: dict[str, Any] | None = None, *, release: str = "rel", namespace: str = "ns",
                  extra: tuple[str, ...] = ()) -> str:
    return helm("template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION,
                *set_args(values), *extra).stdout


def template(values: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(template_text(values, **kwargs)) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any] | None:
    for doc in docs:
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name):
            return doc
    return None
