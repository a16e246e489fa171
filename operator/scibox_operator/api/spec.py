"""The one typed model of a VLLMDeployment, parsed once at the edge.

The API server already defaulted and validated the object against the CRD schema; this model
repeats the defaults (so objects from older schemas or unit tests parse the same) and adds the
checks that need code, so the rest of the operator never digs in dicts.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from scibox_operator.api.names import API_VERSION
from scibox_operator.engine.cache_layout import model_cache_path
from scibox_operator.engine.vllm_args import (
    KV_CACHE_DTYPES,
    LOAD_FORMATS,
    validate_env,
    validate_extra_args,
    validate_planned_extra_args,
    validate_spec_extra_args,
)

Auto = Literal["auto"]


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


class _Model(BaseModel):
    # Unknown fields are rejected: the CRD schema prunes them, so one here means a schema drift.
    model_config = ConfigDict(alias_generator=_camel, populate_by_name=True, extra="forbid", frozen=True)


class SecretKeyRef(_Model):
    name: str = Field(min_length=1, max_length=253)
    key: str = "token"


class ApiKeySecretRef(SecretKeyRef):
    key: str = "api-key"


# What vLLM's argv and the cache layout accept (engine.vllm_args.validate_settings): a value that
# passed here but failed there would crash every reconcile instead of reporting InvalidSpec.
_NO_CONTROL_TRIMMED = r"^[^\s\x00-\x1f\x7f]([^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f])?$"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class ModelSource(_Model):
    name: str = Field(min_length=1, max_length=253)
    revision: str = Field(default="main", max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
    served_model_name: str | None = Field(default=None, max_length=253, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$")
    trust_remote_code: bool = False
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] = "auto"
    quantization: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    max_model_len: int | None = Field(default=None, ge=16)
    # An absolute path (inside the server container, e.g. on a pvc:// volume) or a hub repo id,
    # which the download Job fetches into the cache beside the model (servers run offline).
    tokenizer: str | None = Field(default=None, max_length=253, pattern=_NO_CONTROL_TRIMMED)
    tokenizer_revision: str | None = Field(default=None, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
    # What the server runs: text generation, or a pooling model answering /v1/embeddings (which
    # is also what readiness probes instead of a completion).
    task: Literal["generate", "embed"] = "generate"

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer_path_or_repo(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            try:
                model_cache_path("/models", v, None)  # where the download Job puts it
            except ValueError as exc:
                raise ValueError(f"tokenizer must be an absolute path or a hub repo id (org/name): {exc}") from None
        return v

    @model_validator(mode="after")
    def _tokenizer_source(self) -> ModelSource:
        if self.tokenizer_repo is not None and self.is_pvc:
            raise ValueError("a pvc:// model has no download Job to fetch tokenizer repo "
                             f"{self.tokenizer!r}: give the tokenizer's absolute path on the volume instead")
        if self.tokenizer_revision is not None and self.tokenizer_repo is None:
            raise ValueError("tokenizerRevision applies to a tokenizer named by hub repo id, not a path")
        return self

    @property
    def tokenizer_repo(self) -> str | None:
        """The hub repo the tokenizer comes from, or None (the model's own, or a path)."""
        return self.tokenizer if self.tokenizer and not self.tokenizer.startswith("/") else None

    @field_validator("name")
    @classmethod
    def _servable_name(cls, v: str) -> str:
        if v.startswith("pvc://"):
            claim = v.removeprefix("pvc://").partition("/")[0]
            if not _DNS_LABEL.fullmatch(claim):
                raise ValueError(f"pvc://CLAIM/PATH needs a claim name that is a DNS label, got {claim!r}")
        else:
            model_cache_path("/models", v, None)  # the download Job and the server both use this layout
        return v

    @property
    def is_pvc(self) -> bool:
        return self.name.startswith("pvc://")

    @property
    def pvc_claim_and_path(self) -> tuple[str, str]:
        claim, _, path = self.name.removeprefix("pvc://").partition("/")
        return claim, path.strip("/")

    @property
    def served_name(self) -> str:
        return self.served_model_name or self.name.removeprefix("pvc://")


class Resources(_Model):
    gpus: int | Auto = "auto"
    gpu_product: str | None = None
    min_gpu_memory_mi_b: int | None = Field(default=None, alias="minGpuMemoryMiB", ge=1)
    cpu: str | int | None = None
    memory: str | int | None = None

    @field_validator("gpus")
    @classmethod
    def _gpus_range(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 64:
            raise ValueError("gpus must be from 1 to 64 or auto")
        return v


class Parallelism(_Model):
    tensor_parallel_size: int | Auto = "auto"
    pipeline_parallel_size: int | Auto = "auto"

    @field_validator("tensor_parallel_size", "pipeline_parallel_size")
    @classmethod
    def _size_range(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 64:
            raise ValueError("parallel sizes must be from 1 to 64 or auto")
        return v


_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


class Toleration(_Model):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class EnvVar(_Model):
    name: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    value: str = ""


class Engine(_Model):
    gpu_memory_utilization: float = Field(default=0.9, ge=0.05, le=0.99)
    max_num_batched_tokens: int | None = Field(default=None, ge=1)
    max_num_seqs: int | None = Field(default=None, ge=1)
    # None leaves vLLM's "auto" (the serving dtype) and renders no flag.
    kv_cache_dtype: str | None = None
    # Full-length sequences the KV cache must hold at once: the planner adds GPUs for them.
    # None plans for one, which is all vLLM itself requires to start.
    target_concurrent_sequences: int | None = Field(default=None, ge=1, le=4096)
    enable_prefix_caching: bool | None = None
    enable_chunked_prefill: bool | None = None
    extra_args: tuple[str, ...] = ()
    env: tuple[EnvVar, ...] = ()
    # LoRA (spec.adapters): how many adapters the server holds at once, and the largest rank it
    # accepts. Both are rendered into the pod template, the adapter list is not: adding or
    # removing an adapter restarts nothing (see scibox_operator.engine.adapters).
    max_loras: int | None = Field(default=None, ge=1, le=64)
    max_lora_rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] = 16
    # vLLM --load-format (how the weights are read); None renders no flag (vLLM's auto).
    load_format: str | None = None

    @field_validator("load_format")
    @classmethod
    def _known_load_format(cls, v: str | None) -> str | None:
        if v is not None and v not in LOAD_FORMATS:
            raise ValueError(f"loadFormat must be one of {', '.join(LOAD_FORMATS)}, got {v!r}")
        return v

    @field_validator("extra_args")
    @classmethod
    def _no_owned_flags(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        errors = (validate_extra_args(list(v)) + validate_planned_extra_args(list(v))
                  + validate_spec_extra_args(list(v)))
        if errors:
            raise ValueError("; ".join(errors))
        return v

    @field_validator("kv_cache_dtype")
    @classmethod
    def _known_kv_dtype(cls, v: str | None) -> str | None:
        if v is not None and v not in KV_CACHE_DTYPES:
            raise ValueError(f"kvCacheDtype must be one of {', '.join(KV_CACHE_DTYPES)}, got {v!r}")
        return v

    @field_validator("env")
    @classmethod
    def _no_owned_env(cls, v: tuple[EnvVar, ...]) -> tuple[EnvVar, ...]:
        errors = validate_env({e.name: e.value for e in v})
        if errors:
            raise ValueError("; ".join(errors))
        if len({e.name for e in v}) != len(v):
            raise ValueError("env names must be unique")
        return v


class Cache(_Model):
    storage_class_name: str | None = None
    size: str = "auto"
    access_mode: Literal["Auto", "ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"] = "Auto"
    # A claim name (DNS-1123 subdomain): anything else names no claim and no download Job.
    existing_claim: str | None = Field(default=None, max_length=253,
                                       pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    deletion_policy: Literal["Retain", "Delete"] = "Retain"
    download_image: str | None = None
    token_secret_ref: SecretKeyRef | None = None
    endpoint: str | None = Field(default=None, pattern=r"^https?://\S+$")


class ServiceSpec(_Model):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    port: int = Field(default=8000, ge=1, le=65535)


class Auth(_Model):
    api_key_secret_ref: ApiKeySecretRef | None = None


class Monitoring(_Model):
    service_monitor: bool = True
    interval: str = Field(default="30s", pattern=r"^[0-9]+(ms|s|m|h)$")


class NetworkPolicySpec(_Model):
    enabled: bool = False
    allowed_namespaces: tuple[str, ...] = ()
    allowed_pod_labels: dict[str, str] = {}


class Rollout(_Model):
    # Auto: the operator picks surge / one at a time / recreate from the free GPUs it sees
    # (reconcile/rollout.py); Recreate and RollingUpdate (maxSurge/maxUnavailable) are explicit.
    strategy: Literal["Auto", "Recreate", "RollingUpdate"] = "Auto"
    startup_timeout_seconds: int = Field(default=1800, ge=60, le=86400)
    max_surge: int = Field(default=1, ge=0, le=128)
    max_unavailable: int = Field(default=0, ge=0, le=128)
    # Back to the last template that served when a new one cannot become ready in time.
    auto_rollback: bool = True

    @model_validator(mode="after")
    def _can_progress(self) -> Rollout:
        if self.strategy == "RollingUpdate" and self.max_surge == 0 and self.max_unavailable == 0:
            raise ValueError("rollout.maxSurge and rollout.maxUnavailable cannot both be 0: the rollout "
                             "could never replace a pod")
        return self


# The adapters a server holds when engine.maxLoras is not set.
DEFAULT_MAX_LORAS = 4


class Adapter(_Model):
    """A LoRA adapter served on the base model: clients send `name` as the request's model."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    source: str = Field(min_length=1, max_length=253)
    revision: str = Field(default="main", max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        if v.startswith("pvc://"):
            claim, _, path = v.removeprefix("pvc://").partition("/")
            if not _DNS_LABEL.fullmatch(claim) or not path.strip("/") or ".." in path.split("/"):
                raise ValueError(f"a pvc:// adapter source needs pvc://CLAIM/PATH (a DNS label claim, a path "
                                 f"without '..'), got {v!r}")
        else:
            model_cache_path("/models", v, None)  # a hub repo id, fetched into the model cache
        return v

    @property
    def is_pvc(self) -> bool:
        return self.source.startswith("pvc://")


class AutoscalingTarget(_Model):
    """What one replica should carry; the autoscaler adds replicas when the average goes above."""

    # vllm:num_requests_waiting per replica (requests queued, not yet scheduled)
    waiting_requests_per_replica: float | None = Field(default=None, gt=0, le=10000)
    # vllm:kv_cache_usage_perc averaged over the replicas (0-1)
    kv_cache_usage: float | None = Field(default=None, gt=0, le=1)
    # expert: a PromQL query whose value is divided by `queryValue` per replica (KEDA only)
    query: str | None = Field(default=None, min_length=1, max_length=2048, pattern=_NO_CONTROL_TRIMMED)
    query_value: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _query_pair(self) -> AutoscalingTarget:
        if (self.query is None) != (self.query_value is None):
            raise ValueError("target.query and target.queryValue go together")
        return self


class AutoscalingBehavior(_Model):
    scale_up_stabilization_seconds: int = Field(default=0, ge=0, le=3600)
    # a cool-down fit for minute-long model loads: a replica is not dropped on a short lull
    scale_down_stabilization_seconds: int = Field(default=300, ge=0, le=3600)


class ScaleToZero(_Model):
    idle_seconds: int = Field(ge=30, le=604800)


class Autoscaling(_Model):
    min_replicas: int = Field(default=1, ge=1, le=128)
    max_replicas: int = Field(ge=1, le=128)
    target: AutoscalingTarget = AutoscalingTarget()
    behavior: AutoscalingBehavior = AutoscalingBehavior()
    scale_to_zero: ScaleToZero | None = None

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"autoscaling.minReplicas {self.min_replicas} is above maxReplicas {self.max_replicas}")
        return self

    @property
    def waiting_target(self) -> float | None:
        """Waiting requests per replica; the default signal when no target is named."""
        t = self.target
        if t.waiting_requests_per_replica is None and t.kv_cache_usage is None and t.query is None:
            return DEFAULT_WAITING_REQUESTS_PER_REPLICA
        return t.waiting_requests_per_replica


DEFAULT_WAITING_REQUESTS_PER_REPLICA = 2.0


class VLLMDeploymentSpec(_Model):
    @field_validator("node_selector")
    @classmethod
    def _label_keys(cls, v: dict[str, str]) -> dict[str, str]:
        bad = sorted(k for k in v if len(k) > 253 or not _LABEL_KEY.match(k))
        if bad:
            raise ValueError(f"nodeSelector keys must be Kubernetes label keys ([prefix/]name): {bad[:3]}")
        return v

    model: ModelSource
    image: str | None = None
    replicas: int = Field(default=1, ge=0, le=128)
    resources: Resources = Resources()
    node_selector: dict[str, str] = {}
    tolerations: tuple[Toleration, ...] = ()
    affinity: dict[str, Any] | None = None
    priority_class_name: str | None = None
    parallelism: Parallelism = Parallelism()
    engine: Engine = Engine()
    cache: Cache = Cache()
    service: ServiceSpec = ServiceSpec()
    auth: Auth = Auth()
    monitoring: Monitoring = Monitoring()
    network_policy: NetworkPolicySpec = NetworkPolicySpec()
    rollout: Rollout = Rollout()
    adapters: tuple[Adapter, ...] = ()
    autoscaling: Autoscaling | None = None

    @model_validator(mode="after")
    def _adapters(self) -> VLLMDeploymentSpec:
        if not self.adapters:
            return self
        names = [a.name for a in self.adapters]
        errors = []
        if len(set(names)) != len(names):
            errors.append(f"adapter names must be unique: {sorted({n for n in names if names.count(n) > 1})}")
        if self.model.served_name in names:
            errors.append(f"adapter name {self.model.served_name!r} is the base model's served name")
        cap = self.engine.max_loras or DEFAULT_MAX_LORAS
        if len(names) > cap:
            errors.append(f"{len(names)} adapters but the server holds at most {cap} "
                          f"(engine.maxLoras{'' if self.engine.max_loras else ', default'}): raise engine.maxLoras")
        if self.model.task != "generate":
            errors.append("adapters need model.task generate")
        for adapter in self.adapters:
            # The server mounts one volume; an adapter on another would change the pod template.
            if adapter.is_pvc and (not self.model.is_pvc or
                                   adapter.source.removeprefix("pvc://").partition("/")[0]
                                   != self.model.pvc_claim_and_path[0]):
                errors.append(f"adapter {adapter.name}: a pvc:// adapter must be on the pvc:// model's own claim")
            if not adapter.is_pvc and self.model.is_pvc:
                errors.append(f"adapter {adapter.name}: a hub adapter is downloaded into the model cache, "
                              "which a pvc:// model does not have (give it as pvc:// on the model's claim)")
        if errors:
            raise ValueError("; ".join(errors))
        return self


@dataclass(frozen=True)
class VLLMDeployment:
    """The parts of the custom resource the renderers need: identity plus the parsed spec."""

    name: str
    namespace: str
    uid: str
    generation: int
    spec: VLLMDeploymentSpec
    # The object's own labels, sorted: its server pods carry them too (a VLLMGateway's router
    # selects worker pods by them).
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def owner_reference(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": "VLLMDeployment",
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


class InvalidSpec(Exception):
    """The spec cannot be served as written; `message` tells the user which field and why."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def parse(body: Mapping[str, Any]) -> VLLMDeployment:
    """Parse a VLLMDeployment object (as read from the API) or raise InvalidSpec."""
    meta = body.get("metadata") or {}
    name = meta.get("name", "")
    if name and (len(name) > 63 or not _SERVICE_NAME.fullmatch(name)):
        # The API server admits any DNS subdomain here, but the Service in front of the model
        # takes this name (a DNS-1035 label) and every child carries it as a label value.
        raise InvalidSpec(f"metadata.name {name!r} cannot name the model's Service: use at most 63 lower case "
                          "letters, digits and '-', starting with a letter and ending with a letter or digit")
    try:
        spec = VLLMDeploymentSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        raise InvalidSpec(_describe(exc)) from None
    return VLLMDeployment(
        name=name,
        namespace=meta.get("namespace", ""),
        uid=meta.get("uid", ""),
        generation=int(meta.get("generation") or 0),
        spec=spec,
        labels=tuple(sorted((str(k), str(v)) for k, v in (meta.get("labels") or {}).items())),
    )


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = "spec." + ".".join(str(p) for p in err["loc"]) if err["loc"] else "spec"
        parts.append(f"{where}: {err['msg']}")
    more = len(exc.errors()) - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


_DNS_UNSAFE = re.compile(r"[^a-z0-9-]+")
_SERVICE_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def short_hash(*parts: str, length: int = 10) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:length]


def dns_name(prefix: str, *, suffix: str = "", max_len: int = 63) -> str:
    """A DNS-1123 label built from free text, stable for the same input."""
    base = _DNS_UNSAFE.sub("-", prefix.lower()).strip("-") or "x"
    room = max_len - len(suffix)
    return (base[:room].rstrip("-") or "x") + suffix
