"""The HTTP probe of one vLLM OpenAI server (aiohttp): /health, /v1/models with the API key,
optionally a one-token completion. Nothing here decides which addresses to probe; the prober
hands in base URLs of pods it made sure are the operator's own."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from scibox_operator.readiness.verdicts import (
    ProbeReason,
    ProbeResult,
    classify_completion,
    classify_embedding,
    classify_health,
    classify_models,
)

log = logging.getLogger(__name__)

_MAX_BODY_BYTES = 1024 * 1024
_COMPLETION_PROMPT = "Hello"
# What proves a replica serves, by model.task: one generated token, or one embedding.
_TASK_REQUESTS = {
    "generate": ("/v1/completions", classify_completion, ProbeReason.COMPLETION_FAILED,
                 "serving; a one-token completion succeeded"),
    "embed": ("/v1/embeddings", classify_embedding, ProbeReason.EMBEDDING_FAILED,
              "serving; an embedding request succeeded"),
}


def _task_payload(task: str, served_model_name: str) -> dict[str, Any]:
    if task == "embed":
        return {"model": served_model_name, "input": _COMPLETION_PROMPT}
    return {"model": served_model_name, "prompt": _COMPLETION_PROMPT, "max_tokens": 1, "temperature": 0}


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
    except (TimeoutError, aiohttp.ClientError, OSError) as error:
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
    task: str = "generate",
) -> ProbeResult:
    """Probe one vLLM OpenAI server: GET /health, GET /v1/models, optionally (`completion`) the
    request that proves the model's task works: a one-token completion, or for `task="embed"`
    one embedding (POST /v1/embeddings).

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
    if task not in _TASK_REQUESTS:
        raise ValueError(f"task must be one of {sorted(_TASK_REQUESTS)}, got {task!r}")
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
        path, classify, failed, served = _TASK_REQUESTS[task]
        try:
            status, body = await _fetch(session, "POST", url, path, headers=headers, timeout=client_timeout,
                                        payload=_task_payload(task, served_model_name))
        except _Unreachable as unreachable:
            # /health was fine a moment ago: an engine that dies on its first request lands here.
            return result(failed, str(unreachable))
        if verdict := classify(status, body):
            return result(verdict.reason, verdict.detail, verdict.evidence)
        return result(ProbeReason.SERVING, served)
    return result(ProbeReason.SERVING, f"serving {served_model_name!r}")
