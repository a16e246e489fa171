"""The reference the convergence tests compare the cluster with: a fresh `desired()` of each
spec, and the part of each live child that the operator's field manager owns (managedFields)."""

from __future__ import annotations

import base64
import json
from typing import Any

from scibox_operator.api.names import FIELD_MANAGER
from scibox_operator.api.spec import parse, short_hash
from scibox_operator.planning.serving_plan import GpuNode, decide_serving_plan, gpu_node_from_body
from scibox_operator.reconcile.desired import Observed, child_keys, desired
from scibox_operator.reconcile.diff import RENDER_HASH_ANNOTATION
from scibox_operator.reconcile.status import CacheState
from scibox_operator.runtime.kube import KINDS

CHECKED_KINDS = ("PersistentVolumeClaim", "Deployment", "LeaderWorkerSet", "Service", "NetworkPolicy",
                 "ServiceMonitor")


def owned_fields(obj: dict[str, Any], manager: str = FIELD_MANAGER) -> dict[str, Any]:
    """The fieldsV1 set the manager's Apply entry owns on the main resource."""
    for entry in (obj.get("metadata") or {}).get("managedFields") or []:
        if entry.get("manager") == manager and entry.get("operation") == "Apply" and not entry.get("subresource"):
            return entry.get("fieldsV1") or {}
    return {}


def _matches(item: Any, key: dict[str, Any]) -> bool:
    return isinstance(item, dict) and all(item.get(k) == v for k, v in key.items())


def project(value: Any, fields: dict[str, Any]) -> Any:
    """The part of `value` named by a fieldsV1 set (a leaf takes the whole value)."""
    members = {k: v for k, v in fields.items() if k != "."}
    if not members:
        return value
    if isinstance(value, dict):
        return {k[2:]: project(value[k[2:]], sub) for k, sub in members.items()
                if k.startswith("f:") and k[2:] in value}
    if isinstance(value, list):
        out = []
        for k, sub in members.items():
            if k.startswith("k:"):
                key = json.loads(k[2:])
                out += [project(item, sub) for item in value if _matches(item, key)]
            elif k.startswith("v:"):
                wanted = json.loads(k[2:])
                out += [item for item in value if item == wanted]
        return out
    return value


def canonical(value: Any) -> Any:
    """Order-free form: map-lists are compared as sets of their items."""
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [canonical(v) for v in value]
        if all(isinstance(v, dict) for v in items):
            return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
        return items
    return value


def _content_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """Metadata as content: the render hash is how changes are detected, not what is compared."""
    out = {k: v for k, v in meta.items() if k not in ("name", "namespace")}
    annotations = {k: v for k, v in (out.get("annotations") or {}).items() if k != RENDER_HASH_ANNOTATION}
    if annotations:
        out["annotations"] = annotations
    else:
        out.pop("annotations", None)
    return out


def comparable_desired(child: dict[str, Any]) -> Any:
    return canonical({**{k: v for k, v in child.items() if k not in ("apiVersion", "kind", "metadata")},
                      "metadata": _content_metadata(child["metadata"])})


def comparable_live(live: dict[str, Any]) -> Any:
    projected = project(live, owned_fields(live))
    projected.pop("apiVersion", None)
    projected.pop("kind", None)
    projected["metadata"] = _content_metadata(projected.get("metadata") or {})
    return canonical(projected)


def gpu_nodes(rest) -> list[GpuNode]:
    return sorted((gpu_node_from_body(n) for n in rest.get("/api/v1/nodes")["items"]), key=lambda n: n.name)


def live_children(rest, namespace: str, vd, plan) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for kind, name in child_keys(vd, plan):
        body = rest.get_or_none(KINDS[kind].path(namespace, name))
        if body is not None:
            body.setdefault("kind", kind)
            out[(kind, name)] = body
    return out


def api_key_digest(rest, vd) -> str | None:
    ref = vd.spec.auth.api_key_secret_ref
    secret = rest.get_or_none(KINDS["Secret"].path(vd.namespace, ref.name)) if ref else None
    raw = ((secret or {}).get("data") or {}).get(ref.key) if ref else None
    return short_hash(vd.uid, base64.b64decode(raw).decode(), length=16) if raw else None


def differences(rest, body: dict[str, Any], *, image: str) -> list[str]:
    """What differs between the cluster and a fresh desired() of this VLLMDeployment (once its
    model is cached): changed, missing and extra children."""
    vd = parse(body)
    ns = vd.namespace
    plan = decide_serving_plan(vd, config=None, safetensors_index=None, nodes=gpu_nodes(rest),
                               cache_shared=vd.spec.cache.access_mode == "ReadWriteMany", image=image)
    live = live_children(rest, ns, vd, plan)
    want = desired(vd, plan, Observed(children=live, users=(vd,), cache=CacheState(True, reason="Downloaded"),
                                      service_monitor_crd=True, leader_worker_set_crd=True, default_image=image,
                                      api_key_digest=api_key_digest(rest, vd)))
    problems = []
    wanted = {(c["kind"], c["metadata"]["name"]) for c in want.children}
    for child in want.children:
        key = (child["kind"], child["metadata"]["name"])
        if key not in live:
            problems.append(f"{key} missing")
        elif comparable_live(live[key]) != comparable_desired(child):
            problems.append(f"{key} differs:\n  live    {json.dumps(comparable_live(live[key]), sort_keys=True)}"
                            f"\n  desired {json.dumps(comparable_desired(child), sort_keys=True)}")
    for key, obj in live.items():
        if key[0] in CHECKED_KINDS and key not in wanted and not obj["metadata"].get("deletionTimestamp"):
            problems.append(f"{key} extra")
    return problems
