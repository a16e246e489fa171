"""Read a model's config.json (and safetensors index) from the hub or a mirror before planning.

Only metadata is fetched here (a few KB); weights are downloaded by the download Job into the
cache volume. Results are kept per (endpoint, repo, revision), so 1000 VLLMDeployments of one
model cost one request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

DEFAULT_ENDPOINT = "https://huggingface.co"


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

    def fresh(self) -> "HubError":
        """The same failure as a new exception. A remembered exception must not be raised
        again: each raise extends its traceback, which then keeps every caller's frame (and
        what those frames hold) alive for as long as the failure is remembered."""
        return HubError(self.reason, self.message, permanent=self.permanent)


class HubClient:
    FAILURE_TTL = 30.0

    def __init__(self, default_endpoint: str = DEFAULT_ENDPOINT, timeout: float = 10.0):
        self.default_endpoint = default_endpoint.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
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
        base = f"{endpoint}/{quote(repo)}/resolve/{quote(revision, safe='')}"
        config = await self._get_json(f"{base}/config.json", headers, required=True)
        index = await self._get_json(f"{base}/model.safetensors.index.json", headers, required=False)
        return ModelMetadata(config=config, safetensors_index=index)

    async def _get_json(self, url: str, headers: dict[str, str], *, required: bool) -> Any:
        assert self._session is not None
        try:
            async with self._session.get(url, headers=headers) as resp:
                if resp.status == 404:
                    if required:
                        raise HubError("ModelNotFound", f"{url} answered 404: no such model, revision or file",
                                       permanent=True)
                    return None
                if resp.status in (401, 403):
                    raise HubError("Unauthorized", f"{url} answered {resp.status}: the model is gated or "
                                   "private; set cache.tokenSecretRef to a Secret with a hub token",
                                   permanent=True)
                if resp.status >= 400:
                    raise HubError("HubUnavailable", f"{url} answered {resp.status}", permanent=False)
                return json.loads(await resp.read())
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise HubError("HubUnreachable", f"cannot reach {url}: {exc.__class__.__name__} {exc}",
                           permanent=False) from None
        except ValueError as exc:
            raise HubError("InvalidModelConfig", f"{url} is not valid JSON: {exc}", permanent=True) from None
