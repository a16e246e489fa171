"""Decide whether a child needs a write, and whether it is the operator's to write, without
asking the API server.

Two checks, both against the object observed through the watch:
- the render hash: every applied child carries a hash of what was rendered. A changed hash means
  the spec changed, and server-side apply then removes whatever the operator's field manager
  owned and no longer sends (an env entry, a toleration, a selector key). A subset check alone
  never sees a removal: that was the quiet failure of GitOps edits.
- the subset check: every rendered field is present with the same value. It catches hand edits
  of fields the operator owns; fields the server or other managers added are ignored.
A reconcile with nothing to change therefore sends nothing: both checks read the watch cache.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from scibox_operator.api.names import RENDER_HASH_ANNOTATION
from scibox_operator.render.common import CACHE_LABEL, MANAGED_BY, MANAGED_BY_LABEL

# Cache claims and download Jobs are shared by every VLLMDeployment of a model and a Retain claim
# outlives them all, so no single owner reference can mark them: they are the operator's by its
# labels (within the tenant's own namespace, the only place a forgery could matter).
LABEL_OWNED_KINDS = ("PersistentVolumeClaim", "Job")


def render_hash(obj: dict[str, Any]) -> str:
    """A stable digest of a rendered object (its own hash annotation left out)."""
    meta = dict(obj.get("metadata") or {})
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != RENDER_HASH_ANNOTATION}
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    text = json.dumps({**obj, "metadata": meta}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def stamped(obj: dict[str, Any]) -> dict[str, Any]:
    """The object with its render hash in metadata.annotations (not in a pod template: a new
    hash must never restart pods by itself)."""
    meta = dict(obj["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}), RENDER_HASH_ANNOTATION: render_hash(obj)}
    return {**obj, "metadata": meta}


def _key(item: Any) -> Any:
    if isinstance(item, dict):
        # volumeMounts by mountPath: one volume may be mounted twice (the model cache claim:
        # the weights read-only, the compile cache folder writable), under one name.
        for k in ("mountPath", "name", "type", "uid", "containerPort", "key"):
            if k in item:
                return (k, item[k])
    return None


def contains(live: Any, desired: Any) -> bool:
    """True when `desired` is a sub-tree of `live` (dicts by key, named list items by name)."""
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return False
        return all(k in live and contains(live[k], v) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) < len(desired):
            return False
        keyed = {_key(item): item for item in live if _key(item) is not None}
        for index, want in enumerate(desired):
            key = _key(want)
            got = keyed.get(key) if key is not None else live[index]
            if got is None or not contains(got, want):
                return False
        return True
    if isinstance(desired, bool) or isinstance(live, bool):
        return desired is live
    if isinstance(desired, (int, float)) and isinstance(live, (int, float)):
        return desired == live
    return desired == live


def _annotation(obj: dict[str, Any] | None) -> str | None:
    return (((obj or {}).get("metadata") or {}).get("annotations") or {}).get(RENDER_HASH_ANNOTATION)


def needs_apply(desired: dict[str, Any], live: dict[str, Any] | None) -> bool:
    if live is None:
        return True
    want = _annotation(desired)
    if want is not None and _annotation(live) != want:
        return True
    desired_meta = {k: v for k, v in desired.get("metadata", {}).items() if k not in ("name", "namespace")}
    body = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind", "metadata")}
    return not (contains(live.get("metadata", {}), desired_meta) and contains(live, body))


def owned_by(kind: str, live: dict[str, Any], uid: str) -> bool:
    """May the VLLMDeployment with this uid write or delete `live`? Only what carries its
    controller reference (or, for the shared cache kinds, the operator's cache labels)."""
    meta = live.get("metadata") or {}
    if kind in LABEL_OWNED_KINDS:
        labels = meta.get("labels") or {}
        return labels.get(MANAGED_BY_LABEL) == MANAGED_BY and bool(labels.get(CACHE_LABEL))
    return any(ref.get("controller") and ref.get("uid") == uid for ref in meta.get("ownerReferences") or [])
