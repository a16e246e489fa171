"""Lease-based leader election, so that of two operator replicas exactly one acts.

Every replica watches and keeps its store warm; only the leader reconciles and probes. A
standby takes over when the leader's lease is not renewed for `lease_seconds`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from .kube import ApiError, KubeClient

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _fmt(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(s: str | None) -> datetime | None:
    if not s:
        return None
    return datetime.strptime(s.replace("Z", "+0000").replace(".000000", ""), "%Y-%m-%dT%H:%M:%S.%f%z") \
        if "." in s else datetime.strptime(s.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S%z")


class LeaderElector:
    def __init__(self, client: KubeClient, *, namespace: str, name: str = "scibox-vllm-operator",
                 identity: str | None = None, lease_seconds: int = 15, renew_seconds: float = 5.0,
                 on_change: Callable[[bool], None] = lambda leading: None):
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity or os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.on_change = on_change
        self.leading = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="scibox-leader-election")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self.leading:  # hand over at once instead of making the standby wait a lease period
            try:
                await self._write(None, release=True)
            except ApiError:
                pass

    def _set(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            log.warning("leader election: %s %s", self.identity, "leads" if leading else "stands by")
            self.on_change(leading)

    async def _loop(self) -> None:
        while True:
            try:
                self._set(await self._try_acquire())
            except (ApiError, OSError, asyncio.TimeoutError) as exc:
                log.warning("leader election: %s", exc)
                self._set(False)
            await asyncio.sleep(self.renew_seconds)

    async def _try_acquire(self) -> bool:
        path = f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.name}"
        try:
            lease = await self.client.request("GET", path)
        except ApiError as exc:
            if exc.status != 404:
                raise
            lease = None
        if lease is None:
            return await self._write(None)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        renewed = _parse(spec.get("renewTime"))
        expired = renewed is None or _now() - renewed > timedelta(seconds=spec.get("leaseDurationSeconds") or self.lease_seconds)
        if holder == self.identity or not holder or expired:
            return await self._write(lease)
        return False

    async def _write(self, lease: dict[str, Any] | None, release: bool = False) -> bool:
        now = _fmt(_now())
        spec: dict[str, Any] = {
            "holderIdentity": None if release else self.identity,
            "leaseDurationSeconds": self.lease_seconds,
            "renewTime": now,
        }
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {**spec, "acquireTime": now, "leaseTransitions": 0}}
            try:
                await self.client.request("POST", f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases",
                                          body=body)
                return True
            except ApiError as exc:
                if exc.status == 409:
                    return False
                raise
        old = lease.get("spec") or {}
        if old.get("holderIdentity") != self.identity and not release:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(old.get("leaseTransitions") or 0) + 1
        body = dict(lease)
        body["spec"] = {**old, **spec}
        try:
            # PUT with the read resourceVersion: two candidates cannot both win the same lease.
            await self.client.request(
                "PUT", f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.name}", body=body)
            return not release
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise
