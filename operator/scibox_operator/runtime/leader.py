"""Lease-based leader election, so that of two operator replicas at most one acts.

Every replica watches and keeps its store warm; only the leader reconciles and probes. The
semantics are client-go's (and kubernetes_asyncio.leaderelection's):

* the leader renews every `retry_seconds`; when it has not renewed for `renew_deadline_seconds`
  (shorter than the lease) it steps down at once, even while a renew request is still pending;
* every API request is cut after `request_timeout_seconds` (below the renew deadline), so one
  hung connection cannot eat the whole deadline;
* a candidate judges another holder's lease by its own clock only: the lease has expired when
  this process has seen no change of it for the lease duration (time.monotonic), never by
  comparing the holder's renewTime with the local wall clock, which may be skewed.

So a leader cut off from the API server stops acting `renew_deadline` after its last renew,
while the others wait at least `lease_seconds` after it: the difference is the safety margin.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from scibox_operator.runtime.kube import ApiError, KubeClient

log = logging.getLogger(__name__)

TRANSIENT = (ApiError, OSError, asyncio.TimeoutError)
# client-go's JitterFactor spreads candidates' retries so that they do not collide in lockstep.
JITTER = 0.2


@dataclass(frozen=True)
class Timing:
    """The election's periods in seconds; defaults are client-go's."""

    lease_seconds: int = 15  # an int: the Lease's leaseDurationSeconds is one
    renew_deadline_seconds: float = 10.0
    retry_seconds: float = 2.0
    request_timeout_seconds: float = 0.0  # 0: half the renew deadline

    def __post_init__(self) -> None:
        if not self.request_timeout_seconds:
            object.__setattr__(self, "request_timeout_seconds", self.renew_deadline_seconds / 2)
        if not 0 < self.retry_seconds * (1 + JITTER) < self.renew_deadline_seconds < self.lease_seconds:
            raise ValueError(f"leader election needs retry*{1 + JITTER} < renew deadline < lease: {self}")
        if not 0 < self.request_timeout_seconds < self.renew_deadline_seconds:
            raise ValueError(f"leader election needs a request timeout below the renew deadline: {self}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Timing:
        defaults = cls()
        return cls(
            lease_seconds=int(environ.get("SCIBOX_LEADER_LEASE_SECONDS", defaults.lease_seconds)),
            renew_deadline_seconds=float(environ.get("SCIBOX_LEADER_RENEW_DEADLINE_SECONDS",
                                                     defaults.renew_deadline_seconds)),
            retry_seconds=float(environ.get("SCIBOX_LEADER_RETRY_SECONDS", defaults.retry_seconds)),
            request_timeout_seconds=float(environ.get("SCIBOX_LEADER_REQUEST_TIMEOUT_SECONDS", 0)))


class LeaseTaken(Exception):
    """Another identity holds a lease that has not expired by this process's observation."""


def _now_text() -> str:
    # MicroTime, as the API server writes it
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _record(lease: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a renew changes: seeing a different record is seeing the holder alive."""
    spec = lease.get("spec") or {}
    return (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("acquireTime"),
            spec.get("leaseDurationSeconds"), spec.get("leaseTransitions"),
            (lease.get("metadata") or {}).get("resourceVersion"))


class LeaderElector:
    def __init__(self, client: KubeClient, *, namespace: str, name: str = "scibox-vllm-operator",
                 identity: str | None = None, timing: Timing | None = None,
                 on_change: Callable[[bool], None] = lambda leading: None):
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity or os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        self.timing = timing or Timing()
        self.on_change = on_change
        self.leading = False
        self._task: asyncio.Task[None] | None = None
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0  # time.monotonic() when self._observed was first seen

    @property
    def _path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="scibox-leader-election")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        was_leading = self.leading
        self._set(False)  # stop acting before the lease is handed over, never after
        if was_leading:  # hand over at once instead of making the standby wait a lease period
            try:
                await self._release()
            except TRANSIENT as exc:
                log.warning("leader election: lease not released: %s", exc)

    def _set(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            log.warning("leader election: %s %s", self.identity, "leads" if leading else "stands by")
            self.on_change(leading)

    async def _loop(self) -> None:
        while True:
            renewed_at = await self._acquire()
            self._set(True)
            await self._keep(renewed_at)
            self._set(False)

    # --- the two phases -----------------------------------------------------------------------

    async def _acquire(self) -> float:
        """Try until the lease is ours; returns when the successful attempt started."""
        while True:
            started = time.monotonic()
            try:
                await self._try_acquire_or_renew()
                return started
            except LeaseTaken:
                pass
            except TRANSIENT as exc:
                log.warning("leader election: %s", exc)
            await asyncio.sleep(self.timing.retry_seconds * (1 + random.uniform(0, JITTER)))

    async def _keep(self, renewed_at: float) -> None:
        """Renew every retry period; return (step down) once no renew succeeded within the
        renew deadline, or another holder took the lease. An attempt counts from when it was
        sent: the API server may have applied it at any moment until the answer came back."""
        while True:
            deadline = renewed_at + self.timing.renew_deadline_seconds
            await asyncio.sleep(max(0.0, min(self.timing.retry_seconds, deadline - time.monotonic())))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("leader election: no renew within %ss", self.timing.renew_deadline_seconds)
                return
            started = time.monotonic()
            try:
                await asyncio.wait_for(self._try_acquire_or_renew(), remaining)
                renewed_at = started
            except LeaseTaken:
                return
            except TRANSIENT as exc:  # includes wait_for running out: the next turn steps down
                log.warning("leader election: renew failed: %s", exc or type(exc).__name__)

    # --- one attempt --------------------------------------------------------------------------

    async def _try_acquire_or_renew(self) -> None:
        """Make the lease ours (create, renew, or take it over once expired) or raise."""
        lease = await self._get()
        if lease is None:
            self._observe(await self._request("POST", self._path, self._new_lease()))
            return
        self._observe(lease)
        holder = (lease.get("spec") or {}).get("holderIdentity")
        if holder and holder != self.identity and not self._expired(lease):
            raise LeaseTaken(holder)
        # PUT with the read resourceVersion: of two candidates only one can win the same lease.
        self._observe(await self._request("PUT", f"{self._path}/{self.name}", self._claimed(lease)))

    def _observe(self, lease: Mapping[str, Any]) -> None:
        record = _record(lease)
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()

    def _expired(self, lease: Mapping[str, Any]) -> bool:
        duration = (lease.get("spec") or {}).get("leaseDurationSeconds") or self.timing.lease_seconds
        return time.monotonic() - self._observed_at > duration

    def _new_lease(self) -> dict[str, Any]:
        now = _now_text()
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": self._lease_duration(),
                         "acquireTime": now, "renewTime": now, "leaseTransitions": 0}}

    def _claimed(self, lease: Mapping[str, Any]) -> dict[str, Any]:
        old = lease.get("spec") or {}
        now = _now_text()
        spec = {**old, "holderIdentity": self.identity, "leaseDurationSeconds": self._lease_duration(),
                "renewTime": now}
        if old.get("holderIdentity") != self.identity:  # a takeover, not a renew
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(old.get("leaseTransitions") or 0) + 1
        return {**lease, "spec": spec}

    def _lease_duration(self) -> int:
        return max(1, math.ceil(self.timing.lease_seconds))

    async def _release(self) -> None:
        lease = await self._get()
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return  # someone else's by now: theirs to keep
        now = _now_text()
        # client-go's release: no holder, and a 1 s duration for candidates that look at it
        spec = {**(lease.get("spec") or {}), "holderIdentity": None, "leaseDurationSeconds": 1,
                "acquireTime": now, "renewTime": now}
        await self._request("PUT", f"{self._path}/{self.name}", {**lease, "spec": spec})

    # --- requests, each bounded ---------------------------------------------------------------

    async def _get(self) -> dict[str, Any] | None:
        try:
            return await self._request("GET", f"{self._path}/{self.name}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        return await asyncio.wait_for(self.client.request(method, path, body=body),
                                      self.timing.request_timeout_seconds)
