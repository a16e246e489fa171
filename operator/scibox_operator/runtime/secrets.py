"""Secret values the operator reads by name (API keys, hub tokens), cached for a short while so
that a rotated Secret is picked up without reading it on every pass."""

from __future__ import annotations

import base64
import time
from typing import Any

from scibox_operator.runtime.kube import KubeClient


class SecretReader:
    def __init__(self, client: KubeClient, ttl: float):
        self.client = client
        self.ttl = ttl
        self._cache: dict[tuple[str, str, str], tuple[float, str | None]] = {}

    async def value(self, namespace: str, ref: Any) -> str | None:
        """The value under `ref.key` of the Secret `ref.name`, None when absent (or no ref)."""
        if ref is None:
            return None
        key = (namespace, ref.name, ref.key)
        hit = self._cache.get(key)
        if hit and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        secret = await self.client.get("Secret", namespace, ref.name)
        value = None
        if secret is not None:
            raw = (secret.get("data") or {}).get(ref.key)
            value = base64.b64decode(raw).decode() if raw else None
        self._cache[key] = (time.monotonic(), value)
        return value
