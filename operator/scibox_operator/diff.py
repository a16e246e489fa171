"""Decide whether a child needs a write, without asking the API server.

A server-side apply that changes nothing still counts as a PATCH request, so the operator first
checks that every field it renders is already present with the same value in the object it
observed through its watch. Fields the server or other managers added are ignored, which also
keeps the check from looping on fields a server-side apply would not remove anyway.
"""

from __future__ import annotations

from typing import Any


def _key(item: Any) -> Any:
    if isinstance(item, dict):
        for k in ("name", "type", "uid", "containerPort", "key"):
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


def needs_apply(desired: dict[str, Any], live: dict[str, Any] | None) -> bool:
    if live is None:
        return True
    desired_meta = {k: v for k, v in desired.get("metadata", {}).items() if k not in ("name", "namespace")}
    body = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind", "metadata")}
    return not (contains(live.get("metadata", {}), desired_meta) and contains(live, body))
