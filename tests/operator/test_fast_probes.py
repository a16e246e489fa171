"""Event-driven readiness: a server pod's watch event starts fast probes of its VLLMDeployment
while it loads, so Ready does not wait for the next periodic round. The real Prober against a
server on loopback that opens its port only after a while (as vLLM does once its engine is built).
No periodic round runs here at all: whatever turns the model Ready is the pod event."""

from __future__ import annotations

import asyncio
import random
import time

import aiohttp

from scibox_operator.readiness.prober import Prober
from scibox_operator.readiness.verdicts import ProbeReason
from tests.security.test_probe_ownership import NS, FakeServers, controller_with_model, ref, server_pod


def loading_pod(ip: str) -> dict:
    body = server_pod("p1", ip, ref("ReplicaSet", "m-abc", "rs-uid"))
    body["status"]["conditions"] = []  # never Ready yet: still in its start-up window
    return body


async def _run(delay: float):
    ip = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}.20"
    controller = controller_with_model()
    controller.active.set()
    controller.secrets._cache[(NS, "key", "api-key")] = (time.monotonic(), "sk-the-real-key")
    pod = loading_pod(ip)
    controller.store.put_pod(pod)
    prober = Prober(controller)
    prober._session = aiohttp.ClientSession()
    prober._sem = asyncio.Semaphore(4)
    servers = FakeServers("tiny")
    try:
        not_running = {**pod, "status": {**pod["status"], "phase": "Pending"}}
        prober.pod_event(not_running)
        assert not prober._fast, "a pod that does not run yet is not probed"
        prober.pod_event(pod)
        prober.pod_event(pod)  # a second event while probing: the same task
        assert list(prober._fast) == [(NS, "m")]
        await asyncio.sleep(delay)  # loading: nothing listens on the pod IP
        loading = controller.store.readiness.get((NS, "m"))
        await servers.start([ip])
        for _ in range(300):  # a ceiling, not a timing assertion
            summary = controller.store.readiness.get((NS, "m"))
            if summary is not None and summary.reason == ProbeReason.SERVING.value and not prober._fast:
                break
            await asyncio.sleep(0.05)
        return loading, controller.store.readiness.get((NS, "m")), dict(controller.store.startup_marks), prober, servers
    finally:
        await prober.stop()
        await servers.stop()


def test_a_running_pod_is_probed_fast_until_it_serves_without_waiting_for_a_round(monkeypatch):
    monkeypatch.setenv("SCIBOX_PROBE_ALLOWED_CIDRS", "127.0.0.0/8")
    monkeypatch.setenv("SCIBOX_PROBE_PERIOD", "3600")
    loading, summary, marks, prober, servers = asyncio.run(_run(1.5))
    assert loading is not None and loading.reason == ProbeReason.LOADING.value, loading
    assert summary is not None and summary.reason == ProbeReason.SERVING.value and summary.ready_replicas == 1
    assert not prober._fast, "the fast probes stop once nothing loads any more"
    # the startup marks: first /health 200, then the first answered completion
    mark = marks["uid-p1"]
    assert mark["health"] <= mark["serving"]
    assert ("/v1/completions", "Bearer sk-the-real-key") in servers.asked(servers_ip(servers))


def servers_ip(servers: FakeServers) -> str:
    return servers.requests[0][0]


def test_probe_off_ignores_pod_events(monkeypatch):
    monkeypatch.setenv("SCIBOX_PROBE", "off")
    controller = controller_with_model()
    controller.active.set()
    prober = Prober(controller)
    prober.pod_event(loading_pod("127.0.0.1"))
    assert not prober._fast
