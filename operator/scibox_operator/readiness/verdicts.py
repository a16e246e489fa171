"""Readiness verdicts, judged from what a vLLM OpenAI server answered (pure: no I/O).

Kubernetes' own readiness says a container answers; it does not say the model is the one asked
for, that an API key matches, or that a token can be generated (vLLM's CPU attention kernel, for
one, answers /health with 200 and then refuses the first request). So the operator probes each
replica (probe.py) and these functions turn the answers into verdicts and fold many replicas'
verdicts into the `Ready` condition of the model's status.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum


class ProbeReason(StrEnum):
    """Why a replica is (not) serving. Values double as metav1.Condition reasons (CamelCase)."""

    SERVING = "Serving"
    # Not answering yet while the caller knows the replica is in its start-up window (see
    # `starting` in probe_endpoint): vLLM opens its port only once the engine is built.
    LOADING = "Loading"
    # Nothing usable answers: connection refused or reset, a timeout, a non-200 /health.
    ENGINE_DOWN = "EngineDown"
    # The server answers but does not list the served model name we configured.
    MODEL_MISSING = "ModelMissing"
    # /v1/models answered 401/403: our API key is missing or wrong.
    UNAUTHORIZED = "Unauthorized"
    # /health and /v1/models are fine but a one-token completion failed.
    COMPLETION_FAILED = "CompletionFailed"
    # An embedding model (model.task embed): /v1/embeddings gave no embedding.
    EMBEDDING_FAILED = "EmbeddingFailed"


# When no replica serves, the condition carries the reason most useful to a human: problems that
# will not heal by waiting (configuration, an incompatible model) before crashes, crashes before
# a start-up still in progress.
_REASON_PRIORITY: tuple[ProbeReason, ...] = (
    ProbeReason.UNAUTHORIZED,
    ProbeReason.MODEL_MISSING,
    ProbeReason.COMPLETION_FAILED,
    ProbeReason.EMBEDDING_FAILED,
    ProbeReason.ENGINE_DOWN,
    ProbeReason.LOADING,
    ProbeReason.SERVING,
)

READY_CONDITION = "Ready"
SCALED_TO_ZERO = "ScaledToZero"
PENDING = "Pending"

_MAX_BODY_IN_MESSAGE = 200


@dataclass(frozen=True)
class ProbeResult:
    """The verdict on one replica. `message` names the URL and what failed, never the API key."""

    ready: bool
    reason: ProbeReason
    message: str
    latency_s: float
    base_url: str = ""


@dataclass(frozen=True)
class Verdict:
    """A classification before timing is attached: `None` from a classifier means "go on".

    `detail` goes into status, so it is the operator's own words; `evidence` (a snippet of what
    the server sent) goes only into the operator's log, for whoever debugs the server."""

    reason: ProbeReason
    detail: str
    evidence: str = ""


@dataclass(frozen=True)
class ReadinessSummary:
    """All replicas of one model folded into the fields of its `Ready` condition."""

    ready_replicas: int
    desired_replicas: int
    status: str  # "True" / "False", as metav1.Condition wants it
    reason: str
    message: str


# --- classification (pure) --------------------------------------------------------------------


def _snippet(body: str) -> str:
    body = " ".join(body.split())
    return body if len(body) <= _MAX_BODY_IN_MESSAGE else body[: _MAX_BODY_IN_MESSAGE - 3] + "..."


def classify_health(status: int, *, starting: bool = False) -> Verdict | None:
    """/health: 200 means the engine is up; anything else means it is not (yet).

    Measured on vLLM 0.32: the port stays closed until the engine is built, and /health answers
    503 only once the engine is dead (EngineDeadError), just before the server exits. So a non-200
    is Loading only while the caller knows the replica is starting, EngineDown otherwise.
    """
    if status == 200:
        return None
    reason = ProbeReason.LOADING if starting else ProbeReason.ENGINE_DOWN
    return Verdict(reason, f"/health answered HTTP {status}")


def classify_models(status: int, body: str, served_model_name: str) -> Verdict | None:
    """/v1/models: our served name must be listed; 401/403 mean the API key does not match."""
    if status in (401, 403):
        return Verdict(ProbeReason.UNAUTHORIZED, f"/v1/models answered HTTP {status} (API key missing or wrong)")
    if status == 503:
        return Verdict(ProbeReason.LOADING, "/v1/models answered HTTP 503")
    if status != 200:
        return Verdict(ProbeReason.ENGINE_DOWN, f"/v1/models answered HTTP {status}", _snippet(body))
    try:
        listed = [str(entry["id"]) for entry in json.loads(body)["data"]]
    except (ValueError, KeyError, TypeError):
        return Verdict(ProbeReason.ENGINE_DOWN, "/v1/models answered a body that is not a model list", _snippet(body))
    if served_model_name not in listed:
        # The count, not the names: what a server lists is its text, not the operator's.
        return Verdict(ProbeReason.MODEL_MISSING,
                       f"/v1/models does not list the served model name {_snippet(served_model_name)!r} "
                       f"({len(listed)} other model{'' if len(listed) == 1 else 's'} listed)",
                       _snippet("lists: " + ", ".join(sorted(listed))))
    return None


def classify_completion(status: int, body: str) -> Verdict | None:
    """/v1/completions: a 200 with at least one choice proves a token can be generated."""
    if status in (401, 403):
        return Verdict(ProbeReason.UNAUTHORIZED, f"/v1/completions answered HTTP {status} (API key missing or wrong)")
    if status != 200:
        return Verdict(ProbeReason.COMPLETION_FAILED, f"/v1/completions answered HTTP {status}", _snippet(body))
    try:
        choices = json.loads(body)["choices"]
    except (ValueError, KeyError, TypeError):
        choices = None
    if not choices:
        return Verdict(ProbeReason.COMPLETION_FAILED, "/v1/completions answered no choices", _snippet(body))
    return None


def classify_embedding(status: int, body: str) -> Verdict | None:
    """/v1/embeddings: a 200 whose first item carries a non-empty vector of numbers proves the
    pooling model runs (a generating probe would fail on it forever)."""
    if status in (401, 403):
        return Verdict(ProbeReason.UNAUTHORIZED, f"/v1/embeddings answered HTTP {status} (API key missing or wrong)")
    if status != 200:
        return Verdict(ProbeReason.EMBEDDING_FAILED, f"/v1/embeddings answered HTTP {status}", _snippet(body))
    try:
        vector = json.loads(body)["data"][0]["embedding"]
    except (ValueError, KeyError, TypeError, IndexError):
        vector = None
    if not isinstance(vector, list) or not vector or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in vector):
        return Verdict(ProbeReason.EMBEDDING_FAILED, "/v1/embeddings answered no embedding", _snippet(body))
    return None


# --- folding results into a condition (pure) ---------------------------------------------------


def summarize_readiness(results: list[ProbeResult], desired_replicas: int) -> ReadinessSummary:
    """Fold the probe results of one model's replicas into its Ready condition.

    Decisions:
      * at least one replica serving -> True/Serving, message "k/n replicas serving" (plus what
        the others are doing): the model answers requests, the Service routes to the serving
        pods, and readyReplicas shows the lost capacity;
      * none serving -> False with the most telling reason (see _REASON_PRIORITY) and the
        message of that replica (the lowest base_url among them, so the output is deterministic);
      * desired_replicas == 0 -> False/ScaledToZero; no results while replicas are wanted ->
        False/Pending (no pod has an address to probe yet).
    """
    if desired_replicas < 0:
        raise ValueError(f"desired_replicas must be >= 0, got {desired_replicas}")
    serving = sum(1 for r in results if r.ready)
    counts = f"{serving}/{desired_replicas} replicas serving"

    if desired_replicas == 0:
        return ReadinessSummary(serving, 0, "False", SCALED_TO_ZERO, "scaled to zero replicas")
    if not results:
        return ReadinessSummary(0, desired_replicas, "False", PENDING, f"{counts}: no replica has an address to probe yet")

    not_serving = [r for r in results if not r.ready]
    others = Counter(r.reason for r in not_serving)
    breakdown = ", ".join(f"{others[reason]} {reason.value}" for reason in _REASON_PRIORITY if others[reason])
    if serving:
        message = counts if not breakdown else f"{counts} ({breakdown})"
        return ReadinessSummary(serving, desired_replicas, "True", ProbeReason.SERVING.value, message)

    worst = min(not_serving, key=lambda r: (_REASON_PRIORITY.index(r.reason), r.base_url, r.message))
    message = f"{counts} ({breakdown}): {worst.message}"
    return ReadinessSummary(0, desired_replicas, "False", worst.reason.value, message)
