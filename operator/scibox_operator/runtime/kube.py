"""A small async Kubernetes API client on aiohttp, sharing kopf's login credentials.

The operator needs only a handful of verbs (server-side apply, get, delete, status patch,
events) on a known set of kinds, so a thin client keeps memory and CPU low at 1000s of objects
where the generated clients would cost more than the rest of the operator.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from scibox_operator.api.names import API_VERSION, FIELD_MANAGER, GATEWAY_KIND, GATEWAY_PLURAL, KIND, PLURAL

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    def base(self) -> str:
        return f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"

    def path(self, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        path = self.base()
        if self.namespaced and namespace:
            path += f"/namespaces/{quote(namespace)}"
        path += f"/{self.plural}"
        if name:
            path += f"/{quote(name)}"
        if sub:
            path += f"/{sub}"
        return path


KINDS = {k.kind: k for k in (
    Kind("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
    Kind("v1", "Service", "services"),
    Kind("v1", "Secret", "secrets"),
    Kind("v1", "Pod", "pods"),
    Kind("v1", "Node", "nodes", namespaced=False),
    Kind("apps/v1", "Deployment", "deployments"),
    # the links from a server pod to its workload (readiness/ownership.py), listed at start-up
    Kind("apps/v1", "ReplicaSet", "replicasets"),
    Kind("apps/v1", "StatefulSet", "statefulsets"),
    Kind("batch/v1", "Job", "jobs"),
    Kind("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors"),
    Kind("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet", "leaderworkersets"),
    Kind(API_VERSION, KIND, PLURAL),
    Kind("coordination.k8s.io/v1", "Lease", "leases"),
    Kind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
    Kind("storage.k8s.io/v1", "StorageClass", "storageclasses", namespaced=False),
    # a VLLMGateway and its router's account (reconcile/gateway.py)
    Kind(API_VERSION, GATEWAY_KIND, GATEWAY_PLURAL),
    Kind("v1", "ServiceAccount", "serviceaccounts"),
    Kind("rbac.authorization.k8s.io/v1", "Role", "roles"),
    Kind("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings"),
    Kind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers"),
    Kind("keda.sh/v1alpha1", "ScaledObject", "scaledobjects"),
)}


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str):
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def api_error(status_code: int, http_reason: str | None, text: str) -> ApiError:
    """The API server's Status body as an ApiError (its reason and message when it sent one)."""
    try:
        status = json.loads(text)
        return ApiError(status_code, status.get("reason", ""), status.get("message", text))
    except (ValueError, AttributeError):
        return ApiError(status_code, http_reason or "", text[:500])


class KubeClient:
    """Credentials come from a factory (kopf's login functions) and are re-read periodically,
    because in-cluster service-account tokens are rotated by the kubelet."""

    CREDENTIALS_TTL = 300.0

    def __init__(self, credentials_factory: Callable[[], Any], *, field_manager: str = FIELD_MANAGER,
                 max_connections: int = 32, on_request: Callable[[str, str, int], None] | None = None):
        self._factory = credentials_factory
        self._field_manager = field_manager
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._server = ""
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()
        self._on_request = on_request

    async def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is not None and time.monotonic() - self._loaded_at < self.CREDENTIALS_TTL:
            return self._session
        async with self._lock:
            if self._session is not None and time.monotonic() - self._loaded_at < self.CREDENTIALS_TTL:
                return self._session
            info = self._factory()
            if info is None:
                raise ApiError(0, "NoCredentials", "no kubeconfig and no in-cluster service account")
            ssl_ctx: Any = info.as_ssl_context() if info.server.startswith("https") else False
            if info.insecure:
                ssl_ctx = False
            old = self._session
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ssl_ctx, limit=self._max_connections),
                headers=info.as_http_headers(),
                timeout=aiohttp.ClientTimeout(total=60),
            )
            self._server = info.server.rstrip("/")
            self._loaded_at = time.monotonic()
            if old is not None:
                await old.close()
            return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, *, body: Any = None, content_type: str = "application/json",
                      params: dict[str, str] | None = None) -> Any:
        session = await self._ensure_session()
        data = None if body is None else (body if isinstance(body, (bytes, str)) else json.dumps(body))
        headers = {"Content-Type": content_type} if data is not None else {}
        try:
            async with session.request(method, self._server + path, data=data, params=params,
                                       headers=headers) as resp:
                text = await resp.text()
                status_code, http_reason = resp.status, resp.reason
        except aiohttp.ClientError as exc:
            # A restarting API server cuts connections mid-request (ServerDisconnectedError,
            # ClientPayloadError, ...), which are not OSErrors: as OSErrors they are transient
            # to every caller, instead of a "crash" in reconcile or a dead leader election loop.
            if isinstance(exc, OSError):
                raise
            raise ConnectionError(f"{method} {path}: {exc.__class__.__name__}: {exc}") from exc
        if self._on_request:
            self._on_request(method, path, status_code)
        if status_code >= 400:
            raise api_error(status_code, http_reason, text)
        return json.loads(text) if text else None

    async def stream(self, path: str, *, params: dict[str, str], read_timeout: float) -> AsyncIterator[dict[str, Any]]:
        """A watch: one JSON event per line until the server ends the response."""
        session = await self._ensure_session()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=read_timeout)
        try:
            async with session.get(self._server + path, params=params, timeout=timeout) as resp:
                if self._on_request:
                    self._on_request("WATCH", path, resp.status)
                if resp.status >= 400:
                    raise api_error(resp.status, resp.reason, await resp.text())
                pending = b""
                async for chunk in resp.content.iter_any():
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if line.strip():
                            yield json.loads(line)
        except aiohttp.ClientError as exc:
            if isinstance(exc, OSError):
                raise
            raise ConnectionError(f"WATCH {path}: {exc.__class__.__name__}: {exc}") from exc

    async def apply(self, obj: dict[str, Any], *, status: bool = False) -> dict[str, Any]:
        """Server-side apply with one field manager; force takes back fields edited by hand."""
        kind = KINDS[obj["kind"]]
        meta = obj["metadata"]
        return await self.request(
            "PATCH", kind.path(meta.get("namespace"), meta["name"], "status" if status else None),
            body=obj, content_type="application/apply-patch+yaml",
            params={"fieldManager": self._field_manager, "force": "true"},
        )

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return await self.request("GET", KINDS[kind].path(namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def delete(self, kind: str, namespace: str | None, name: str, *, uid: str | None = None) -> bool:
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self.request("DELETE", KINDS[kind].path(namespace, name), body=body)
            return True
        except ApiError as exc:
            if exc.status in (404, 409):
                return False
            raise

    async def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        return await self.request("PATCH", KINDS[kind].path(namespace, name, "status"),
                                  body={"status": status}, content_type="application/merge-patch+json")

    async def create_event(self, involved: dict[str, Any], *, type_: str, reason: str, message: str) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        meta = involved["metadata"]
        ns = meta.get("namespace") or "default"
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": ns},
            "involvedObject": {"apiVersion": involved.get("apiVersion"), "kind": involved.get("kind"),
                               "name": meta["name"], "namespace": ns, "uid": meta.get("uid")},
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": self._field_manager},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "reportingComponent": self._field_manager, "reportingInstance": self._field_manager,
        }
        await self.request("POST", f"/api/v1/namespaces/{quote(ns)}/events", body=event)


# The namespaces the operator serves (`scibox-operator run --namespace ...`; cli.py sets this for
# the code that lists outside kopf). Unset or empty: all namespaces.
WATCH_NAMESPACES_ENV = "SCIBOX_WATCH_NAMESPACES"


def watched_namespaces(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    raw = (os.environ if env is None else env).get(WATCH_NAMESPACES_ENV, "")
    return tuple(sorted({ns.strip() for ns in raw.split(",") if ns.strip()}))


def list_paths(kind: Kind, namespaces: Sequence[str]) -> list[str]:
    """Where to LIST a kind: once cluster-wide, or once per served namespace. A namespaced
    install has no cluster-wide list right (only Roles in its namespaces), and cluster-scoped
    kinds are listed once either way."""
    if not kind.namespaced or not namespaces:
        return [kind.path()]
    return [kind.path(ns) for ns in namespaces]


def _oldest(versions: list[str]) -> str:
    try:
        return str(min(int(v) for v in versions))
    except ValueError:
        return versions[0]


async def list_objects(client: KubeClient, kind: str, namespaces: Sequence[str] | None = None,
                       params: dict[str, str] | None = None) -> dict[str, Any]:
    """A LIST answer ({"metadata": {"resourceVersion"}, "items"}) over the served namespaces: the
    items of every list, and the oldest list's resourceVersion (an object not listed and not
    newer than that is gone from every list, so it can be forgotten safely)."""
    namespaces = watched_namespaces() if namespaces is None else namespaces
    answers = [await client.request("GET", path, params=params) for path in list_paths(KINDS[kind], namespaces)]
    versions = [(a.get("metadata") or {}).get("resourceVersion", "") for a in answers]
    return {"metadata": {"resourceVersion": _oldest(versions)},
            "items": [item for a in answers for item in a.get("items") or []]}
