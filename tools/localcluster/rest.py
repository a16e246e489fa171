"""A very small Kubernetes REST client on the standard library (TLS with a client cert).

The harness uses it instead of the `kubernetes` package so that `up`, `down` and the
provisioner depend on nothing but `cryptography`, and so that every request is visible and
explicit (the fault tests count requests by verb from the apiserver's metrics).
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class ApiError(RuntimeError):
    def __init__(self, status: int, method: str, path: str, body: str):
        self.status = status
        self.body = body
        try:
            self.reason = json.loads(body).get("reason", "")
        except (ValueError, AttributeError):
            self.reason = ""
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")


@dataclass
class Rest:
    server: str  # https://127.0.0.1:PORT
    ca_file: Path
    cert_file: Path
    key_file: Path
    timeout: float = 30.0

    def __post_init__(self) -> None:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        # No proxy, whatever the environment says: the cluster lives on loopback only.
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx)
        )

    def _open(self, method: str, path: str, body=None, content_type: str = "application/json",
              timeout: float | None = None):
        data = None
        headers = {"Accept": "application/json"}
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        req = urllib.request.Request(self.server + path, data=data, method=method, headers=headers)
        try:
            return self._opener.open(req, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, method, path, exc.read().decode(errors="replace")) from None

    def request(self, method: str, path: str, body=None, content_type: str = "application/json"):
        with self._open(method, path, body, content_type) as resp:
            raw = resp.read()
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    def text(self, path: str) -> str:
        with self._open("GET", path) as resp:
            return resp.read().decode(errors="replace")

    def get(self, path: str):
        return self.request("GET", path)

    def get_or_none(self, path: str):
        try:
            return self.get(path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, path: str, obj: dict, exist_ok: bool = False):
        try:
            return self.request("POST", path, obj)
        except ApiError as exc:
            if exist_ok and exc.status == 409:
                return None
            raise

    def apply(self, path: str, name: str, obj: dict, field_manager: str = "scibox-cluster"):
        """Server-side apply (create or update) of one object at `path`/`name`."""
        query = urllib.parse.urlencode({"fieldManager": field_manager, "force": "true"})
        return self.request("PATCH", f"{path}/{name}?{query}", obj, "application/apply-patch+yaml")

    def delete(self, path: str, missing_ok: bool = True):
        try:
            return self.request("DELETE", path)
        except ApiError as exc:
            if missing_ok and exc.status == 404:
                return None
            raise

    def watch(self, path: str, resource_version: str, timeout_seconds: int = 300) -> Iterator[dict]:
        """Yield watch events until the server closes the stream. Raises ApiError on HTTP
        errors (410 Gone included) and OSError on connection loss: the caller re-lists."""
        sep = "&" if "?" in path else "?"
        query = urllib.parse.urlencode({
            "watch": "1", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        })
        with self._open("GET", f"{path}{sep}{query}", timeout=timeout_seconds + 30) as resp:
            for line in resp:
                if line.strip():
                    yield json.loads(line)
