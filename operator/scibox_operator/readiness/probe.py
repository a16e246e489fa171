"""Readiness of vLLM replicas, judged from the vLLM OpenAI server itself.

Kubernetes' own readiness says a container answers; it does not say the model is the one asked
for, that an API key matches, or that a token can be generated (vLLM's CPU attention kernel, for
one, answers /health with 200 and then refuses the first request). So the operator probes each
replica and folds the answers into the `Ready` condition of the model's status.

Three layers, kept apart so the pure ones can be tested without a server:
  * classification (`classify_*`): HTTP status + body -> a verdict, no I/O;
  * `probe_endpoint`: the I/O (aiohttp) for one replica, returning a `ProbeResult`;
  * `summarize_readiness` and the condition helpers: many results -> one metav1.Condition.

Nothing here imports kopf or decides which addresses to probe; the caller hands in base URLs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

import aiohttp

log = logging.getLogger(__name__)

__all__ = [
    "ProbeReason",
    "ProbeResult",
    "ReadinessSummary",
    "Verdict",
    "READY_CONDITION",
    "classify_health",
    "classify_models",
    "classify_completion",
    "probe_endpoint",
    "probe_endpoints",
    "summarize_readiness",
    "condition_changed",
    "make_condition",
    "ready_condition",
    "set_condition",
]


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


# When no replica serves, the condition carries the reason most useful to a human: problems that
# will not heal by waiting (configuration, an incompatible model) before crashes, crashes before
# a start-up still in progress.
_REASON_PRIORITY: tuple[ProbeReason, ...] = (
    ProbeReason.UNAUTHORIZED,
    ProbeReason.MODEL_MISSING,
    ProbeReason.COMPLETION_FAILED,
    ProbeReason.ENGINE_DOWN,
    ProbeReason.LOADING,
    ProbeReason.SERVING,
)

READY_CONDITION = "Ready"
SCALED_TO_ZERO = "ScaledToZero"
PENDING = "Pending"

# metav1.Condition limits (apimachinery validation): the message is capped at 32768 characters.
_MAX_CONDITION_MESSAGE = 32768
_MAX_BODY_IN_MESSAGE = 200
_MAX_BODY_BYTES = 1024 * 1024
_COMPLETION_PROMPT = "Hello"


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


# --- the I/O ------------------------------------------------------------------------------------


def _check_base_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base_url must be an absolute http(s) URL like http://10.0.0.7:8000, got {base_url!r}")
    return base_url.rstrip("/")


def _describe_error(error: BaseException) -> str:
    if isinstance(error, asyncio.TimeoutError):
        return "timed out"
    if isinstance(error, aiohttp.ClientConnectorError):
        if isinstance(error.os_error, ConnectionRefusedError):
            return "connection refused"
        return f"cannot connect ({error.os_error.strerror or error.os_error})"
    if isinstance(error, (ConnectionResetError, aiohttp.ClientOSError)) and "reset" in str(error).lower():
        return "connection reset"
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return "server closed the connection"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class _Unreachable(Exception):
    """A request got no HTTP answer at all."""

    def __init__(self, path: str, cause: BaseException):
        super().__init__(f"{path}: {_describe_error(cause)}")


async def _fetch(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    path: str,
    *,
    headers: Mapping[str, str],
    timeout: aiohttp.ClientTimeout,
    payload: Any = None,
) -> tuple[int, str]:
    try:
        async with session.request(
            method,
            url + path,
            headers=headers,
            json=payload,
            timeout=timeout,
            allow_redirects=False,
            raise_for_status=False,  # the status is the answer here, whatever the session's default
        ) as response:
            return response.status, await _read_text(response, _MAX_BODY_BYTES)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as error:
        raise _Unreachable(path, error) from error


async def _read_text(response: aiohttp.ClientResponse, limit: int) -> str:
    """At most `limit` bytes of the body: a model list or a completion is a few KB, and a server
    that sends more must not fill the operator's memory (the rest is not read)."""
    data = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) >= limit:
            break
    return bytes(data[:limit]).decode("utf-8", errors="replace")


async def probe_endpoint(
    session: aiohttp.ClientSession,
    base_url: str,
    served_model_name: str,
    *,
    api_key: str | None = None,
    completion: bool = False,
    timeout: float = 5.0,
    starting: bool = False,
) -> ProbeResult:
    """Probe one vLLM OpenAI server: GET /health, GET /v1/models, optionally a one-token completion.

    `timeout` bounds each request. `starting=True` tells the probe the caller knows the replica
    is still within its start-up window (e.g. its container started recently and has never
    served): vLLM does not listen before its engine is built, so a refused connection, a timeout
    or a non-200 /health then means Loading rather than EngineDown. Never raises for a misbehaving server;
    raises ValueError only for a base_url that is not an http(s) URL.
    """
    url = _check_base_url(base_url)
    if not served_model_name:
        raise ValueError("served_model_name must not be empty")
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    started = time.perf_counter()

    def result(reason: ProbeReason, detail: str, evidence: str = "") -> ProbeResult:
        if evidence:
            log.info("%s: %s; the server said: %s", url, detail, evidence)
        return ProbeResult(
            ready=reason is ProbeReason.SERVING,
            reason=reason,
            message=f"{url}: {detail}",
            latency_s=time.perf_counter() - started,
            base_url=url,
        )

    try:
        status, _ = await _fetch(session, "GET", url, "/health", headers={}, timeout=client_timeout)
        if verdict := classify_health(status, starting=starting):
            return result(verdict.reason, verdict.detail, verdict.evidence)
        status, body = await _fetch(session, "GET", url, "/v1/models", headers=headers, timeout=client_timeout)
        if verdict := classify_models(status, body, served_model_name):
            return result(verdict.reason, verdict.detail, verdict.evidence)
    except _Unreachable as unreachable:
        reason = ProbeReason.LOADING if starting else ProbeReason.ENGINE_DOWN
        return result(reason, str(unreachable))

    if completion:
        request = {"model": served_model_name, "prompt": _COMPLETION_PROMPT, "max_tokens": 1, "temperature": 0}
        try:
            status, body = await _fetch(
                session, "POST", url, "/v1/completions", headers=headers, timeout=client_timeout, payload=request
            )
        except _Unreachable as unreachable:
            # /health was fine a moment ago: an engine that dies on its first request lands here.
            return result(ProbeReason.COMPLETION_FAILED, str(unreachable))
        if verdict := classify_completion(status, body):
            return result(verdict.reason, verdict.detail, verdict.evidence)
        return result(ProbeReason.SERVING, "serving; a one-token completion succeeded")
    return result(ProbeReason.SERVING, f"serving {served_model_name!r}")


async def probe_endpoints(
    session: aiohttp.ClientSession,
    base_urls: Iterable[str],
    served_model_name: str,
    **options: Any,
) -> list[ProbeResult]:
    """Probe several replicas concurrently; results come back in the order of `base_urls`."""
    return list(
        await asyncio.gather(*(probe_endpoint(session, url, served_model_name, **options) for url in base_urls))
    )


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


def _rfc3339(now: datetime) -> str:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (e.g. datetime.now(timezone.utc))")
    return now.astimezone(timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


_COMPARED_FIELDS = ("type", "status", "reason", "message", "observedGeneration")


def condition_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """True when writing `new` would tell a reader something `old` did not.

    lastTransitionTime is not compared: it only moves when status moves, and a rebuilt condition
    that merely carries a fresh timestamp must not cause a status write.
    """
    if old is None:
        return True
    return any(old.get(field) != new.get(field) for field in _COMPARED_FIELDS)


def make_condition(
    type_: str,
    status: str,
    reason: str,
    message: str,
    *,
    now: datetime,
    previous: Mapping[str, Any] | None = None,
    observed_generation: int | None = None,
) -> dict[str, Any]:
    """Build a metav1.Condition dict; lastTransitionTime is kept from `previous` if status held."""
    if status not in ("True", "False", "Unknown"):
        raise ValueError(f"condition status must be 'True', 'False' or 'Unknown', got {status!r}")
    if not reason:
        raise ValueError("condition reason must not be empty")
    if previous is not None and previous.get("status") == status and previous.get("lastTransitionTime"):
        transition = str(previous["lastTransitionTime"])
    else:
        transition = _rfc3339(now)
    if len(message) > _MAX_CONDITION_MESSAGE:
        message = message[: _MAX_CONDITION_MESSAGE - 3] + "..."
    condition: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
    }
    if observed_generation is not None:
        condition["observedGeneration"] = observed_generation
    return condition


def ready_condition(
    summary: ReadinessSummary,
    *,
    now: datetime,
    previous: Mapping[str, Any] | None = None,
    observed_generation: int | None = None,
) -> dict[str, Any]:
    """The `Ready` condition for a summary (see make_condition for lastTransitionTime)."""
    return make_condition(
        READY_CONDITION,
        summary.status,
        summary.reason,
        summary.message,
        now=now,
        previous=previous,
        observed_generation=observed_generation,
    )


def set_condition(
    conditions: list[Mapping[str, Any]] | None, new: Mapping[str, Any]
) -> tuple[list[dict[str, Any]], bool]:
    """Replace (or append) the condition of `new`'s type; returns (conditions, changed).

    When nothing changed the original list comes back untouched, so the caller can skip its
    status patch entirely.
    """
    current = [dict(c) for c in conditions or []]
    for index, condition in enumerate(current):
        if condition.get("type") == new["type"]:
            if not condition_changed(condition, new):
                return current, False
            current[index] = dict(new)
            return current, True
    current.append(dict(new))
    return current, True
