"""Read a model's config.json (and safetensors index) from the hub or a mirror before planning.

Only metadata is fetched here (a few KB); weights are downloaded by the download Job into the
cache volume. Results are kept per (endpoint, repo, revision), so 1000 VLLMDeployments of one
model cost one request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

DEFAULT_ENDPOINT = "https://huggingface.co"
MIB = 1024 * 1024
# config.json and model.safetensors.index.json are KBs; the cap only stops a hostile or broken
# hub from filling the operator's memory.
MAX_METADATA_BYTES = 8 * MIB

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelMetadata:
    config: dict[str, Any]
    safetensors_index: dict[str, Any] | None


class HubError(Exception):
    """reason is a CamelCase word for status conditions; message names the URL and the cause."""

    def __init__(self, reason: str, message: str, *, permanent: bool):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.permanent = permanent

    def fresh(self) -> HubError:
        """The same failure as a new exception. A remembered exception must not be raised
        again: each raise extends its traceback, which then keeps every caller's frame (and
        what those frames hold) alive for as long as the failure is remembered."""
        return HubError(self.reason, self.message, permanent=self.permanent)


class HubClient:
    FAILURE_TTL = 30.0

    def __init__(self, default_endpoint: str = DEFAULT_ENDPOINT, timeout: float = 10.0,
                 max_bytes: int = MAX_METADATA_BYTES):
        self.default_endpoint = default_endpoint.rstrip("/")
        # total bounds a hub that drips its answer byte by byte, not only one that never answers.
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=timeout)
        self.max_bytes = max_bytes
        self._session: aiohttp.ClientSession | None = None
        self._done: dict[tuple[str, str, str, str], ModelMetadata] = {}
        self._failed: dict[tuple[str, str, str, str], tuple[float, HubError]] = {}
        self._inflight: dict[tuple[str, str, str, str], asyncio.Future[ModelMetadata]] = {}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def metadata(self, repo: str, revision: str, *, endpoint: str | None = None,
                       token: str | None = None) -> ModelMetadata:
        # The token is part of the key: a gated model refused without one must not stay refused
        # once a token is configured (only a digest of it is kept).
        fingerprint = hashlib.sha256(token.encode()).hexdigest()[:16] if token else ""
        key = ((endpoint or self.default_endpoint).rstrip("/"), repo, revision, fingerprint)
        if key in self._done:
            return self._done[key]
        failed = self._failed.get(key)
        if failed and time.monotonic() - failed[0] < self.FAILURE_TTL:
            raise failed[1].fresh()
        if key in self._inflight:
            try:
                return await asyncio.shield(self._inflight[key])
            except HubError as exc:
                raise exc.fresh() from None
        future: asyncio.Future[ModelMetadata] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            result = await self._fetch(key[0], repo, revision, token)
        except HubError as exc:
            remembered = exc.fresh()  # without this call's traceback
            self._failed[key] = (time.monotonic(), remembered)
            future.set_exception(remembered)
            future.exception()  # retrieved: waiters raise fresh copies of it
            raise
        else:
            self._done[key] = result
            future.set_result(result)
            return result
        finally:
            del self._inflight[key]

    async def _fetch(self, endpoint: str, repo: str, revision: str, token: str | None) -> ModelMetadata:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        base = f"{endpoint}/{quote_repo(repo)}/resolve/{quote_segment(revision)}"
        config = await self._get_json(f"{base}/config.json", headers, required=True)
        if not isinstance(config, dict):
            raise HubError("InvalidModelConfig", f"{base}/config.json is not a JSON object", permanent=True)
        index = await self._get_json(f"{base}/model.safetensors.index.json", headers, required=False)
        return ModelMetadata(config=config, safetensors_index=index if isinstance(index, dict) else None)

    async def _get_json(self, url: str, headers: dict[str, str], *, required: bool) -> Any:
        """The messages are the operator's own words: the hub's body and its exact status code
        stay out of status (a status that echoed them would be an oracle for any URL)."""
        assert self._session is not None
        try:
            async with self._session.get(url, headers=headers) as resp:
                if resp.status == 404:
                    if required:
                        raise HubError("ModelNotFound", f"{url}: the hub has no such model, revision or file",
                                       permanent=True)
                    return None
                if resp.status in (401, 403):
                    raise HubError("Unauthorized", f"{url}: the hub refused access: the model is gated or "
                                   "private; set cache.tokenSecretRef to a Secret with a hub token",
                                   permanent=True)
                if resp.status != 200:
                    log.info("hub %s answered HTTP %s", url, resp.status)
                    raise HubError("HubUnavailable", f"{url}: the hub answered with an error", permanent=False)
                raw = await _read_capped(resp, self.max_bytes)
        except HubError:
            raise
        except TimeoutError:
            raise HubError("HubUnreachable", f"{url}: the hub did not answer within {self._timeout.total:g} s",
                           permanent=False) from None
        except (aiohttp.ClientError, OSError) as exc:
            log.info("hub %s unreachable: %s: %s", url, exc.__class__.__name__, exc)
            raise HubError("HubUnreachable", f"{url}: cannot connect to the hub", permanent=False) from None
        try:
            return json.loads(raw)
        except ValueError:
            raise HubError("InvalidModelConfig", f"{url} is not valid JSON", permanent=True) from None


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, or HubError once it passes `limit` bytes (decompressed): metadata is a few KB,
    and whatever a hub sends beyond the cap is never read into memory."""
    declared = resp.content_length
    if declared is not None and declared > limit:
        raise _too_large(str(resp.url), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise _too_large(str(resp.url), limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(url: str, limit: int) -> HubError:
    return HubError("HubResponseTooLarge", f"{url}: the hub's answer is larger than {limit // MIB} MiB, "
                    "which no model metadata file is", permanent=True)


def quote_segment(segment: str) -> str:
    """One URL path segment, every reserved character escaped ('/', '?', '#', '@', '%' ...)."""
    if segment in ("", ".", ".."):
        raise HubError("InvalidModelName", f"{segment!r} cannot be a path segment of a hub URL", permanent=True)
    return quote(segment, safe="")


def quote_repo(repo: str) -> str:
    """org/name (or a bare legacy name): each segment quoted on its own, never concatenated raw."""
    return "/".join(quote_segment(part) for part in repo.split("/"))
