"""The CRD schema and the typed spec model describe the same API."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel

from scibox_operator.api.spec import VLLMDeploymentSpec

CRD = yaml.safe_load((Path(__file__).resolve().parents[2] / "crds" / "scibox.io_vllmdeployments.yaml").read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _model_fields(model: type[BaseModel]) -> dict[str, object]:
    return {(f.alias or name): f.annotation for name, f in model.model_fields.items()}


def _submodel(annotation) -> type[BaseModel] | None:
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
        for inner in getattr(candidate, "__args__", ()):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return None


def _walk(schema: dict, model: type[BaseModel], path: str, problems: list[str]) -> None:
    props = schema.get("properties") or {}
    fields = _model_fields(model)
    for name in sorted(set(props) - set(fields)):
        problems.append(f"{path}.{name} is in the CRD but not in {model.__name__}")
    for name in sorted(set(fields) - set(props)):
        problems.append(f"{path}.{name} is in {model.__name__} but not in the CRD")
    for name in sorted(set(props) & set(fields)):
        sub = _submodel(fields[name])
        child = props[name]
        if child.get("type") == "array":
            child = child.get("items") or {}
        if sub is not None and child.get("properties"):
            _walk(child, sub, f"{path}.{name}", problems)


def test_every_crd_field_is_in_the_model_and_back():
    problems: list[str] = []
    _walk(SCHEMA["properties"]["spec"], VLLMDeploymentSpec, "spec", problems)
    assert problems == []


def test_every_field_has_a_description_for_kubectl_explain():
    missing = []

    def walk(node: dict, path: str) -> None:
        for name, child in (node.get("properties") or {}).items():
            if name not in ("apiVersion", "kind", "metadata") and not child.get("description"):
                missing.append(f"{path}.{name}")
            walk(child, f"{path}.{name}")
            if child.get("items"):
                walk(child["items"], f"{path}.{name}[]")

    walk(SCHEMA, "")
    assert missing == []


def test_crd_defaults_match_the_model_defaults():
    spec = SCHEMA["properties"]["spec"]["properties"]
    model = VLLMDeploymentSpec.model_validate({"model": {"name": "a/b"}})
    assert spec["replicas"]["default"] == model.replicas
    assert spec["engine"]["properties"]["gpuMemoryUtilization"]["default"] == model.engine.gpu_memory_utilization
    assert spec["cache"]["properties"]["deletionPolicy"]["default"] == model.cache.deletion_policy
    assert spec["model"]["properties"]["trustRemoteCode"]["default"] is model.model.trust_remote_code is False
    assert spec["rollout"]["properties"]["startupTimeoutSeconds"]["default"] == model.rollout.startup_timeout_seconds
    assert spec["service"]["properties"]["port"]["default"] == model.service.port


def test_the_crd_refuses_every_env_variable_the_operator_owns():
    import re

    from scibox_operator.engine.vllm_args import SERVICE_ENV, SETTINGS_ENV

    rules = SCHEMA["properties"]["spec"]["properties"]["engine"]["properties"]["env"]["x-kubernetes-validations"]
    listed = set(re.findall(r"'([A-Z_]+)'", next(r["rule"] for r in rules if "e.name in" in r["rule"])))
    assert set(SERVICE_ENV) | {s.env for s in SETTINGS_ENV} <= listed
