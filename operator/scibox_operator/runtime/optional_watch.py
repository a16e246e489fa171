"""Watches of the children whose CRDs come and go (LeaderWorkerSet, ServiceMonitor, KEDA's
ScaledObject), on the operator's own client instead of kopf's.

kopf starts a watch only if discovery lists the CRD when kopf hears of it, and Established can
come a few milliseconds before that: a CRD installed after start-up could stay unwatched. And a
CRD deleted under an open kopf watch ends the whole operator (the re-list's 404 escapes kopf's
watcher). Here a watch runs while its CRD is established, and a 404 only waits for the CRD's
own event to stop it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

from scibox_operator.api.names import LEADER_WORKER_SET_CRD, SCALED_OBJECT_CRD, SERVICE_MONITOR_CRD
from scibox_operator.runtime.kube import KINDS, ApiError, KubeClient, list_paths, watched_namespaces
from scibox_operator.runtime.store import OURS_SELECTOR, Store, reconcile_listing

log = logging.getLogger(__name__)

# Each optional child kind, and the CRD that serves it.
OPTIONAL_KINDS = {"LeaderWorkerSet": LEADER_WORKER_SET_CRD, "ServiceMonitor": SERVICE_MONITOR_CRD,
                  "ScaledObject": SCALED_OBJECT_CRD}


# The API server ends each watch after this long (a fresh one resumes from the last version).
WATCH_SECONDS = 240
RETRY_MAX_SECONDS = 30.0

# (kind, event type "ADDED"/"MODIFIED"/"DELETED", object): what a watch event or a re-list found.
ChildEvent = Callable[[str, str, dict[str, Any]], None]


def kinds_served_by(crd: str) -> list[str]:
    return [kind for kind, name in OPTIONAL_KINDS.items() if name == crd]


class Gone(Exception):
    """410: the version to resume from is too old; list again."""


class OptionalWatches:
    def __init__(self, client: KubeClient, store: Store, on_event: ChildEvent):
        self.client = client
        self.store = store
        self.on_event = on_event
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}

    def follow(self, established: set[str]) -> None:
        """A watch for each kind whose CRD is established (one per served namespace), none for
        the others."""
        for kind, crd in OPTIONAL_KINDS.items():
            for path in list_paths(KINDS[kind], watched_namespaces()):
                task = self._tasks.get((kind, path))
                if crd in established and task is None:
                    self._tasks[(kind, path)] = asyncio.create_task(self._follow(kind, path),
                                                                    name=f"scibox-watch-{kind}")
                elif crd not in established and task is not None:
                    task.cancel()
                    del self._tasks[(kind, path)]

    def watching(self) -> set[str]:
        return {kind for kind, _path in self._tasks}

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _follow(self, kind: str, path: str) -> None:
        delay = 1.0
        while True:
            try:
                version = await self._relist(kind, path)
                delay = 1.0
                while True:
                    version = await self._watch(kind, path, version)
            except Gone:
                continue
            except (ApiError, OSError, TimeoutError, aiohttp.ClientError, ValueError) as exc:
                # 404: the CRD is going (its event cancels this task); else the API server is
                # restarting or overloaded.
                log.info("watch of %s at %s interrupted (retry in %.0fs): %s", kind, path, delay, exc)
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX_SECONDS, delay * 2)

    async def _relist(self, kind: str, path: str) -> str:
        """One LIST puts the store's objects of this kind (in this path's scope) right, as events."""
        listing = await self.client.request("GET", path, params={"labelSelector": OURS_SELECTOR})
        for item in listing.get("items") or []:
            item.setdefault("kind", kind)
        scope = path_namespace(path)
        known = {key: body for key, body in self.store.children.get(kind, {}).items()
                 if scope is None or key[0] == scope}
        found: list[tuple[str, dict[str, Any]]] = []

        def drop(namespace: str, name: str) -> None:
            body = self.store.child(kind, namespace, name)
            if body is not None:
                found.append(("DELETED", body))

        reconcile_listing(listing, known, lambda item: found.append(("MODIFIED", item)), drop)
        for type_, body in found:
            self.on_event(kind, type_, body)
        return str((listing.get("metadata") or {}).get("resourceVersion") or "")

    async def _watch(self, kind: str, path: str, version: str) -> str:
        """Events from `version` until the server ends the watch; returns the last version."""
        params = {"watch": "true", "labelSelector": OURS_SELECTOR, "resourceVersion": version,
                  "allowWatchBookmarks": "true", "timeoutSeconds": str(WATCH_SECONDS)}
        async for event in self.client.stream(path, params=params, read_timeout=WATCH_SECONDS + 30):
            type_, body = event.get("type"), event.get("object") or {}
            if type_ == "ERROR":
                if body.get("code") == 410:
                    raise Gone(body.get("message", ""))
                raise ApiError(int(body.get("code") or 0), body.get("reason", ""), body.get("message", ""))
            version = (body.get("metadata") or {}).get("resourceVersion") or version
            if type_ in ("ADDED", "MODIFIED", "DELETED"):
                body.setdefault("kind", kind)
                self.on_event(kind, str(type_), body)
        return version


def path_namespace(path: str) -> str | None:
    parts = path.split("/")
    return parts[parts.index("namespaces") + 1] if "namespaces" in parts else None
