"""A VLLMGateway's pass: observe (the watch store, the API key Secret, the router's account
objects) -> gateway_desired() (pure) -> the shared Applier writes what differs -> status, written
only when it changed. The same ownership rules as for VLLMDeployments: a child is ours only with
our controller reference to this gateway; anything else under its names is reported, not touched.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from scibox_operator.api.gateway import VLLMGateway, parse_gateway
from scibox_operator.api.names import GATEWAY_KIND
from scibox_operator.api.spec import InvalidSpec
from scibox_operator.reconcile.apply import Applier, conflict_failure
from scibox_operator.reconcile.gateway_desired import (
    GATEWAY_KINDS,
    FrontedModel,
    GatewayObserved,
    gateway_desired,
    gateway_status,
    invalid_gateway_status,
    matches,
)
from scibox_operator.reconcile.status import Failure, status_differs
from scibox_operator.render.gateway import router_name, service_name
from scibox_operator.runtime.kube import ApiError, KubeClient
from scibox_operator.runtime.secrets import SecretReader
from scibox_operator.runtime.store import Store, newer

log = logging.getLogger(__name__)

# Kinds of a gateway's children that no watch follows (the operator watches only what
# VLLMDeployments render): read afresh on each pass, so one deleted by hand is made again.
UNWATCHED_KINDS = ("ServiceAccount", "Role", "RoleBinding")
# How often each known gateway is passed again: its status follows the fronted VLLMDeployments'
# ready pods within this, and a child deleted by hand comes back.
GATEWAY_PASS_SECONDS = 10.0


def _pod_ready(pod: dict[str, Any]) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def fronted_models(store: Store, gw: VLLMGateway) -> tuple[FrontedModel, ...]:
    """The VLLMDeployments of the gateway's namespace its selector matches (by their own labels),
    with their ready server pods: what the router discovers through the same labels."""
    out = []
    for key in sorted(k for k in store.vllmds if k[0] == gw.namespace):
        body = store.vllmds[key]
        if not matches(gw.spec.selector.match_labels, (body.get("metadata") or {}).get("labels") or {}):
            continue
        vd = store.parsed(key)
        if vd is None:
            continue
        ready = sum(1 for pod in store.server_pods(key) if _pod_ready(pod))
        out.append(FrontedModel(deployment=vd.name, model=vd.spec.model.served_name, replicas=vd.spec.replicas,
                                ready_workers=ready))
    return tuple(out)


class GatewayReconciler:
    def __init__(self, client: KubeClient, store: Store, applier: Applier, secrets: SecretReader, router_image: str,
                 *, active: asyncio.Event | None = None, period: float = GATEWAY_PASS_SECONDS):
        self.client = client
        self.store = store
        self.applier = applier
        self.secrets = secrets
        self.router_image = router_image
        self.active = active  # set while this replica leads (None: always)
        self.period = period
        self.gateways: dict[tuple[str, str], dict[str, Any]] = {}  # the latest body of each known gateway
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._task: asyncio.Task[None] | None = None

    # --- wiring (handlers.py) ----------------------------------------------------------------
    async def observe(self, body: dict[str, Any]) -> None:
        """A watch event: remember the body (unless it is older than ours) and pass it now."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        known = self.gateways.get(key)
        if known is not None and newer((known.get("metadata") or {}).get("resourceVersion") or "",
                                       meta.get("resourceVersion") or ""):
            return
        self.gateways[key] = body
        await self._pass_quietly(key)

    def forget(self, namespace: str, name: str) -> None:
        self.gateways.pop((namespace, name), None)
        self._locks.pop((namespace, name), None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="scibox-gateways")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            for key in list(self.gateways):
                await self._pass_quietly(key)

    async def _pass_quietly(self, key: tuple[str, str]) -> None:
        if self.active is not None and not self.active.is_set():
            return  # another replica leads
        try:
            await self.reconcile(key)
        except (TimeoutError, OSError, ApiError) as exc:  # transient: the next pass retries
            log.warning("VLLMGateway %s/%s: pass failed (retried within %ss): %s", *key, self.period, exc)

    async def reconcile(self, key: tuple[str, str]) -> None:
        """One pass at a time per gateway (an event and the periodic pass may coincide)."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            body = self.gateways.get(key)
            if body is not None:
                await self._reconcile(body)

    async def _reconcile(self, body: dict[str, Any]) -> None:
        now = datetime.now(UTC)
        current = body.get("status") or {}
        try:
            gw = parse_gateway(body)
        except InvalidSpec as exc:
            meta = body.get("metadata") or {}
            await self._write_status(body, invalid_gateway_status(int(meta.get("generation") or 0), exc.message,
                                                                  current, now=now))
            return
        observed = await self._observe(gw)
        want = gateway_desired(observed)
        applied = await self.applier.apply_children(gw, want.children, want.removals)
        failure: Failure | None = None
        if applied.conflicts:
            failure = conflict_failure(applied.conflicts)
        elif applied.rejected is not None:
            failure = Failure("ChildRejected", str(applied.rejected))
        # Status reads the router Deployment as the apply left it in the store.
        observed = GatewayObserved(gateway=gw, models=observed.models, router_image=observed.router_image,
                                   service_monitor_crd=observed.service_monitor_crd,
                                   api_key_present=observed.api_key_present, live=self._live(gw))
        await self._write_status(body, gateway_status(observed, current, now=now, failure=failure))

    async def _observe(self, gw: VLLMGateway) -> GatewayObserved:
        for kind in UNWATCHED_KINDS:
            self.store.drop_child(kind, gw.namespace, router_name(gw))
        ref = gw.spec.auth.api_key_secret_ref
        present = None if ref is None else (await self.secrets.value(gw.namespace, ref)) is not None
        return GatewayObserved(gateway=gw, models=fronted_models(self.store, gw), router_image=self.router_image,
                               service_monitor_crd=self.store.service_monitor_crd, api_key_present=present,
                               live=self._live(gw))

    def _live(self, gw: VLLMGateway) -> dict[tuple[str, str], dict[str, Any]]:
        live = {}
        for kind in GATEWAY_KINDS:
            name = service_name(gw) if kind in ("Service", "ServiceMonitor") else router_name(gw)
            obj = self.store.child(kind, gw.namespace, name)
            if obj is not None:
                live[(kind, name)] = obj
        return live

    async def _write_status(self, body: dict[str, Any], status: dict[str, Any]) -> None:
        current = body.get("status") or {}
        if not status_differs(current, status):
            return
        patch = dict(status)
        for stale in set(current) - set(status):
            patch[stale] = None
        meta = body["metadata"]
        result = await self.client.patch_status(GATEWAY_KIND, meta["namespace"], meta["name"], patch)
        key = (meta["namespace"], meta["name"])
        if result and key in self.gateways:
            self.gateways[key] = result  # the next pass compares with what was written
