"""The malformed-VLLMDeployment corpus (malformed.yaml): loading and building the objects."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CORPUS = Path(__file__).with_name("malformed.yaml")
BASE_SPEC = {"model": {"name": "scibox/tiny-llama"}, "resources": {"gpus": 1}, "cache": {"size": "1Gi"}}
_NO_SPEC = object()


class _Loader(yaml.SafeLoader):
    """SafeLoader plus `!repeat [text, n]` and `!repeat-list [item, n]` for oversized input."""


def _repeat(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    text, count = loader.construct_sequence(node)
    return str(text) * int(count)


def _repeat_list(loader: yaml.SafeLoader, node: yaml.Node) -> list:
    item, count = loader.construct_sequence(node)
    return [item] * int(count)


_Loader.add_constructor("!repeat", _repeat)
_Loader.add_constructor("!repeat-list", _repeat_list)


def deep_merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            out[key] = deep_merge(out.get(key), value) if key in out else copy.deepcopy(value)
        return out
    return copy.deepcopy(patch)


@dataclass(frozen=True)
class Case:
    id: str
    name: str
    spec: Any  # _NO_SPEC when the object has no spec at all
    rejected: str | None
    ready_false: str | None
    message: str | None
    gap: str | None
    gap_in: str  # "everywhere", or "cluster" when the operator's pure code already handles it
    # Caught only when the API server refuses the rendered child (no offline check can know it).
    child_refused: bool = False
    # The administrator's policy the case needs (AdminPolicy.build keywords beyond the defaults);
    # {}: the operator's defaults. The cluster run's operator has the defaults only, so cases
    # with a policy are checked offline (test_corpus_offline) and by their own cluster tests.
    policy: dict[str, Any] = field(default_factory=dict)

    def body(self, namespace: str | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "labels": {"scibox.io/corpus-case": self.id[:63]}}
        if namespace:
            meta["namespace"] = namespace
        obj: dict[str, Any] = {"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment", "metadata": meta}
        if self.spec is not _NO_SPEC:
            obj["spec"] = copy.deepcopy(self.spec)
        return obj


def load_cases() -> list[Case]:
    raw = yaml.load(CORPUS.read_text(), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    cases = []
    for entry in raw:
        unknown = set(entry) - {"id", "name", "patch", "spec", "rejected", "ready_false", "message", "gap",
                                 "gap_in", "child_refused", "policy"}
        if unknown:
            raise ValueError(f"{entry['id']}: unknown keys {sorted(unknown)}")
        if ("rejected" in entry) == ("ready_false" in entry):
            raise ValueError(f"{entry['id']}: exactly one of rejected / ready_false")
        if "spec" in entry:
            spec = _NO_SPEC if entry["spec"] is None else entry["spec"]
        else:
            spec = deep_merge(BASE_SPEC, entry.get("patch") or {})
        cases.append(Case(entry["id"], entry.get("name", entry["id"]), spec, entry.get("rejected"),
                          entry.get("ready_false"), entry.get("message"), entry.get("gap"),
                          entry.get("gap_in", "everywhere"), bool(entry.get("child_refused")),
                          dict(entry.get("policy") or {})))
    return cases
