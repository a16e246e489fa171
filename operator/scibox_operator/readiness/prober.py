"""Probe every server pod's vLLM endpoint periodically; results feed the Ready condition.

The prober never writes to the API: it stores a readiness summary per VLLMDeployment and marks
it dirty only when the summary changed, so the reconcile writes status only on change.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time
from typing import Any

import aiohttp

from scibox_operator import metrics
from scibox_operator.api.names import OWNER_NAME_LABEL
from scibox_operator.api.spec import InvalidSpec, parse
from scibox_operator.readiness.adapters import AdapterLoader
from scibox_operator.readiness.ownership import pod_is_ours
from scibox_operator.readiness.probe import probe_endpoint
from scibox_operator.readiness.verdicts import ProbeReason, ProbeResult, summarize_readiness
from scibox_operator.reconcile.reconciler import Controller
from scibox_operator.render.deployment import CONTAINER_PORT
from scibox_operator.render.service import LEADER_INDEX_LABEL
from scibox_operator.runtime.store import Key

log = logging.getLogger(__name__)

# Event-driven readiness: a server pod's watch event (Running, Ready) starts fast probes of its
# VLLMDeployment, from FAST_FIRST_DELAY growing by FAST_GROWTH up to FAST_MAX_DELAY seconds,
# while any of its pods is still loading (and at most FAST_WINDOW seconds), so Ready appears
# about a second after the server first answers instead of up to a whole round later.
FAST_FIRST_DELAY = 0.5
FAST_GROWTH = 1.5
FAST_MAX_DELAY = 2.0
FAST_WINDOW = 1800.0


def _allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    raw = os.environ.get("SCIBOX_PROBE_ALLOWED_CIDRS", "")
    return [ipaddress.ip_network(part.strip()) for part in raw.split(",") if part.strip()]


class Prober:
    """Settings (environment): SCIBOX_PROBE=pod-ip (default) probes each pod IP on the container
    port; SCIBOX_PROBE=off trusts the pods' own readiness; SCIBOX_PROBE_PERIOD seconds between
    rounds; SCIBOX_PROBE_ALLOWED_CIDRS limits which addresses may ever be probed (tests set
    127.0.0.0/8)."""

    def __init__(self, controller: Controller):
        self.controller = controller
        self.mode = os.environ.get("SCIBOX_PROBE", "pod-ip")
        self.period = float(os.environ.get("SCIBOX_PROBE_PERIOD", "10"))
        self.timeout = float(os.environ.get("SCIBOX_PROBE_TIMEOUT", "5"))
        self.concurrency = int(os.environ.get("SCIBOX_PROBE_CONCURRENCY", "64"))
        self.allowed = _allowed_networks()
        self._completion_checked: set[str] = set()
        self._refused: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.adapters = AdapterLoader(controller.store)  # LoRA adapters, loaded on our serving pods
        self._sem: asyncio.Semaphore | None = None
        self._fast: dict[Key, asyncio.Task[None]] = {}
        controller.probing = self.mode != "off"

    def start(self) -> None:
        if self.mode != "off":
            self._task = asyncio.create_task(self._loop(), name="scibox-prober")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._fast.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _loop(self) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.concurrency))
        sem = self._sem = asyncio.Semaphore(self.concurrency)
        while True:
            await self.controller.active.wait()
            started = time.monotonic()
            keys = sorted(self.controller.store.vllmds)
            await asyncio.gather(*(self._probe_one(key, sem) for key in keys), return_exceptions=True)
            await asyncio.sleep(max(0.0, self.period - (time.monotonic() - started)))

    def pod_event(self, pod: Any) -> None:
        """A server pod's watch event: once it runs with an address, probe its VLLMDeployment at
        once and then fast while it loads (`_fast_probes`)."""
        status = pod.get("status") or {}
        labels = (pod.get("metadata") or {}).get("labels") or {}
        owner = labels.get(OWNER_NAME_LABEL)
        if self.mode == "off" or not owner or status.get("phase") != "Running" or not status.get("podIP"):
            return
        key = (pod["metadata"]["namespace"], owner)
        if self._session is None or self._sem is None or key in self._fast or not self.controller.active.is_set():
            return
        self._fast[key] = asyncio.create_task(self._fast_probes(key), name=f"scibox-fast-probe-{key[0]}-{key[1]}")

    async def _fast_probes(self, key: Key) -> None:
        assert self._sem is not None
        delay, deadline = FAST_FIRST_DELAY, time.monotonic() + FAST_WINDOW
        try:
            while self.controller.active.is_set() and key in self.controller.store.vllmds:
                results = await self._probe_one(key, self._sem)
                if not any(r.reason is ProbeReason.LOADING for r in results) or time.monotonic() > deadline:
                    return
                await asyncio.sleep(delay)
                delay = min(FAST_MAX_DELAY, delay * FAST_GROWTH)
        except Exception:  # the periodic round still probes; never let a fast task crash loudly
            log.exception("fast probes of %s/%s failed", *key)
        finally:
            self._fast.pop(key, None)

    def _address_allowed(self, ip: str) -> bool:
        if not self.allowed:
            return True
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.allowed)

    def _ours(self, pod: dict[str, Any], vd_uid: str) -> bool:
        if pod_is_ours(pod, vd_uid, self.controller.store.child):
            return True
        uid = pod["metadata"].get("uid")
        if uid not in self._refused:  # said once per pod, not every round
            if len(self._refused) > 10000:
                self._refused.clear()
            self._refused.add(uid)
            # A new pod can also land here for one round, before its ReplicaSet's event arrives.
            log.warning("pod %s/%s has the server labels but is not (yet) known as created by its "
                        "VLLMDeployment's workload, or is on the node's network: not probed, no API key sent",
                        pod["metadata"].get("namespace"), pod["metadata"].get("name"))
        return False

    async def _probe_one(self, key: Key, sem: asyncio.Semaphore) -> list[ProbeResult]:
        store = self.controller.store
        body = store.vllmds.get(key)
        if body is None:
            return []
        try:
            vd = parse(body)
        except InvalidSpec:
            return []
        # In a multi-node group only the leader (worker index 0) serves HTTP. Labels only find
        # candidates: the API key goes only to pods the operator's own workload created.
        pods = [p for p in store.server_pods(key) if p["status"].get("podIP") and p["status"].get("phase") == "Running"
                and p["metadata"]["labels"].get(LEADER_INDEX_LABEL, "0") == "0" and self._ours(p, vd.uid)]
        api_key = None
        if vd.spec.auth.api_key_secret_ref is not None:
            try:
                api_key = await self.controller.secrets.value(vd.namespace, vd.spec.auth.api_key_secret_ref)
            except Exception as exc:  # the probe then reports Unauthorized, which says it all
                log.info("API key of %s/%s unreadable: %s", *key, exc)
        results: list[ProbeResult] = []
        for pod in pods:
            ip = pod["status"]["podIP"]
            if not self._address_allowed(ip):
                continue
            uid = pod["metadata"]["uid"]
            async with sem:
                probed_at = time.time()
                result = await probe_endpoint(
                    self._session, f"http://{ip}:{CONTAINER_PORT}", vd.spec.model.served_name,
                    api_key=api_key, completion=uid not in self._completion_checked,
                    timeout=self.timeout, starting=not _ever_ready(pod), task=vd.spec.model.task)
                result = await self.adapters.on_probe(self._session, vd, pod, f"http://{ip}:{CONTAINER_PORT}",
                                                      result, api_key=api_key, timeout=self.timeout)
            metrics.PROBES.labels(reason=result.reason.value).inc()
            metrics.PROBE_SECONDS.observe(result.latency_s)
            if result.reason is ProbeReason.SERVING:
                self._completion_checked.add(uid)
            _mark_startup(store.startup_marks, uid, result, probed_at)
            results.append(result)
        summary = summarize_readiness(results, vd.spec.replicas)
        if self.adapters.publish(key, {p["metadata"]["uid"] for p in pods}):
            self.controller.enqueue([key])
        if store.readiness.get(key) != summary:
            store.readiness[key] = summary
            self.controller.enqueue([key])
        return results


def _mark_startup(marks: dict[str, dict[str, float]], uid: str, result: ProbeResult, probed_at: float) -> None:
    """The first /health 200 (any answer past it) and the first answered completion of a pod,
    by the prober's clock: status.startup's engineLoad and firstCompletion stages."""
    if result.reason in (ProbeReason.LOADING, ProbeReason.ENGINE_DOWN):
        return
    mark = marks.setdefault(uid, {})
    mark.setdefault("health", probed_at)
    if result.reason is ProbeReason.SERVING:
        mark.setdefault("serving", probed_at + result.latency_s)


def _ever_ready(pod: dict[str, Any]) -> bool:
    """A pod that never passed its readiness probe is still loading its model."""
    for cond in pod["status"].get("conditions") or []:
        if cond.get("type") == "Ready" and cond.get("status") == "True":
            return True
    return False
