"""Small helpers for tests that drive the real cluster through kubectl."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import yaml

from tests.waiting import wait_for as poll

MUTATING = ("POST", "PUT", "PATCH", "DELETE", "APPLY")


def wait_for(predicate: Callable[[], Any], *, timeout: float = 60, interval: float = 0.3, what: str = "condition") -> Any:
    # kubectl calls fail now and then while the cluster is busy: keep polling through them.
    return poll(what, predicate, timeout, every=interval, transient=(Exception,))


def get(cluster, kind: str, name: str | None = None, namespace: str | None = None) -> Any:
    """namespace "*" lists across all namespaces."""
    scope = ["-A"] if namespace == "*" else (["-n", namespace] if namespace else [])
    args = ["get", kind] + ([name] if name else []) + scope + ["-o", "json"]
    proc = cluster.kubectl(*args, check=False)
    if proc.returncode != 0:
        if "NotFound" in proc.stderr:
            return None
        raise AssertionError(proc.stderr)
    return json.loads(proc.stdout)


def apply(cluster, namespace: str, manifest: dict | str) -> None:
    text = manifest if isinstance(manifest, str) else yaml.safe_dump(manifest)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=text)


def condition(obj: dict, type_: str) -> dict | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return cond
    return None


_LINE = re.compile(r'^apiserver_request_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$')


def request_counts(metrics_text: str) -> dict[tuple[str, str, str], float]:
    """(verb, resource, subresource) -> requests, from the API server's own /metrics."""
    out: dict[tuple[str, str, str], float] = {}
    for line in metrics_text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group("labels")))
        key = (labels.get("verb", ""), labels.get("resource", ""), labels.get("subresource", ""))
        out[key] = out.get(key, 0.0) + float(m.group("value"))
    return out


def mutating_delta(before: dict, after: dict, resources: set[str]) -> dict[tuple[str, str, str], float]:
    delta = {}
    for key, value in after.items():
        verb, resource, _ = key
        # Controllers of the cluster itself PATCH event series; the operator only POSTs events.
        if verb in MUTATING and resource in resources and not (resource == "events" and verb != "POST"):
            diff = value - before.get(key, 0.0)
            if diff:
                delta[key] = diff
    return delta


def owner_chain_lookup(cluster, namespace: str):
    """ownership.Lookup over the real objects of a namespace, read from the API server: to
    check that the controllers Kubernetes and LWS run build the chain the prober trusts."""
    held: dict[tuple[str, str], Any] = {}
    for kind, resource in (("ReplicaSet", "replicasets"), ("Deployment", "deployments"),
                           ("StatefulSet", "statefulsets"), ("LeaderWorkerSet", "leaderworkersets")):
        proc = cluster.kubectl("get", resource, "-n", namespace, "-o", "json", check=False)
        if proc.returncode != 0 and ("doesn't have a resource type" in proc.stderr
                                     or "could not find the requested resource" in proc.stderr):
            continue  # no LeaderWorkerSet CRD on this cluster (yet, or any more: kubectl's cache)
        assert proc.returncode == 0, proc.stderr
        listing = json.loads(proc.stdout)
        for item in listing["items"]:
            held[(kind, item["metadata"]["name"])] = item
    return lambda kind, ns, name: held.get((kind, name)) if ns == namespace else None
