"""Leader election timing against a real loopback HTTP server playing the Lease API (no cluster,
no fake clock: short real periods).

A leader whose renew hangs must step down within the renew deadline, before any other replica
can take over; a candidate judges another holder's lease only by what it observed itself, so
a holder's skewed clock (renewTime far in the past or future) changes nothing.
"""

from __future__ import annotations

import asyncio
import time

import kopf
import pytest

from scibox_operator.runtime.kube import KubeClient
from scibox_operator.runtime.leader import LeaderElector, Timing

from .lease_api import LeaseApi

NS, NAME = "ns", "scibox-vllm-operator"
# A hung attempt sent one retry after the last renew would end (by its request timeout) only at
# 0.3 + 0.9 s: well past the 1 s deadline, so the test sees whether the deadline itself cuts it.
TIMING = Timing(lease_seconds=2, renew_deadline_seconds=1.0, retry_seconds=0.3, request_timeout_seconds=0.9)
STEP_DOWN_MARGIN = 0.1  # waking up on a loaded 2-core machine
MARGIN = 0.25  # plus HTTP round trips


class Replica:
    """One elector on its own port of the shared Lease; records when it started/stopped leading."""

    def __init__(self, api: LeaseApi, port: int, identity: str, timing: Timing = TIMING):
        self.client = KubeClient(lambda: kopf.ConnectionInfo(server=f"http://127.0.0.1:{port}", insecure=True))
        self.port = port
        self.changes: list[tuple[float, bool]] = []
        self.elector = LeaderElector(self.client, namespace=NS, name=NAME, identity=identity, timing=timing,
                                     on_change=lambda leading: self.changes.append((time.monotonic(), leading)))

    def first(self, leading: bool) -> float | None:
        return next((t for t, value in self.changes if value is leading), None)

    async def close(self) -> None:
        await self.elector.stop()
        await self.client.close()


async def until(condition, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic()


async def a_leading_b_watching(api: LeaseApi) -> tuple[Replica, Replica]:
    """Replica a holds the Lease; b has started and watches it."""
    a = Replica(api, await api.serve(), "a")
    b = Replica(api, await api.serve(), "b")
    a.elector.start()
    await until(lambda: a.elector.leading, 5, "a leading")
    b.elector.start()
    return a, b


def run(scenario):
    async def main():
        api = LeaseApi()
        try:
            return await scenario(api)
        finally:
            await api.close()
    return asyncio.run(main())


def test_a_leader_whose_renew_hangs_steps_down_within_the_deadline_before_anyone_takes_over():
    async def scenario(api: LeaseApi):
        a, b = await a_leading_b_watching(api)
        try:
            await asyncio.sleep(3 * TIMING.retry_seconds)  # a renews a few times, b watches
            api.hang(a.port)
            await until(lambda: b.elector.leading, TIMING.lease_seconds + 3, "b taking over")
            return api.last_write_by("a"), a, b
        finally:
            await a.close()
            await b.close()

    last_renew, a, b = run(scenario)
    stepped_down, took_over = a.first(False), b.first(True)
    assert stepped_down is not None, "the cut-off leader never stepped down"
    assert stepped_down - last_renew <= TIMING.renew_deadline_seconds + STEP_DOWN_MARGIN
    assert took_over > stepped_down, "two leaders at once"
    # b saw a's last renew only after it happened, and waited a whole lease from then
    assert took_over - last_renew >= TIMING.lease_seconds
    assert took_over - last_renew <= TIMING.lease_seconds + 2 * TIMING.retry_seconds + MARGIN


@pytest.mark.parametrize("renew_time", ["2001-01-01T00:00:00.000000Z", "2099-01-01T00:00:00.000000Z"])
def test_another_holders_clock_does_not_change_when_the_lease_is_taken_over(renew_time):
    """The holder is gone (never renews again); its renewTime is far in the past or the future."""
    async def scenario(api: LeaseApi):
        api.put_lease(NS, NAME, {"holderIdentity": "skewed", "leaseDurationSeconds": TIMING.lease_seconds,
                                 "acquireTime": renew_time, "renewTime": renew_time, "leaseTransitions": 4})
        b = Replica(api, await api.serve(), "b")
        try:
            started = time.monotonic()
            b.elector.start()
            took_over = await until(lambda: b.elector.leading, TIMING.lease_seconds + 3, "b taking over")
            return took_over - started, api.lease["spec"]
        finally:
            await b.close()

    waited, spec = run(scenario)
    assert TIMING.lease_seconds <= waited <= TIMING.lease_seconds + 2 * TIMING.retry_seconds + MARGIN
    assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 5
    assert spec["acquireTime"] > "2026" and spec["renewTime"] < "2099", "the new holder writes its own times"


def test_a_holder_that_keeps_renewing_is_never_taken_over_whatever_its_clock_says():
    async def scenario(api: LeaseApi):
        b = Replica(api, await api.serve(), "b")
        renewer_alive = True

        async def renew_with_a_stopped_clock():
            # renewTime stays in 2001, yet the record changes on every renew: the holder is alive
            for n in range(100):
                if not renewer_alive:
                    return
                api.put_lease(NS, NAME, {"holderIdentity": "other", "leaseDurationSeconds": TIMING.lease_seconds,
                                         "renewTime": "2001-01-01T00:00:00.000000Z", "leaseTransitions": n})
                await asyncio.sleep(TIMING.retry_seconds)

        renewer = asyncio.create_task(renew_with_a_stopped_clock())
        try:
            b.elector.start()
            await asyncio.sleep(2 * TIMING.lease_seconds)
            held_while_renewed = b.first(True)
            renewer_alive = False
            await renewer
            await until(lambda: b.elector.leading, TIMING.lease_seconds + 3, "b taking over once renews stop")
            return held_while_renewed, api.lease["spec"]["holderIdentity"]
        finally:
            renewer.cancel()
            await b.close()

    held_while_renewed, holder = run(scenario)
    assert held_while_renewed is None, "took a lease its holder kept renewing"
    assert holder == "b"


def test_the_lease_keeps_its_format_and_a_stopped_leader_hands_over_at_once():
    async def scenario(api: LeaseApi):
        a, b = await a_leading_b_watching(api)
        try:
            await asyncio.sleep(3 * TIMING.retry_seconds)
            held = api.lease
            stopped = time.monotonic()
            await a.close()
            took_over = await until(lambda: b.elector.leading, 5, "b taking over")
            return held, api.lease, took_over - stopped, a
        finally:
            await a.close()
            await b.close()

    held, taken, handover, a = run(scenario)
    assert held["apiVersion"] == "coordination.k8s.io/v1" and held["kind"] == "Lease"
    spec = held["spec"]
    assert spec["holderIdentity"] == "a" and spec["leaseDurationSeconds"] == TIMING.lease_seconds
    assert spec["leaseTransitions"] == 0 and spec["acquireTime"] < spec["renewTime"]
    assert taken["spec"]["holderIdentity"] == "b" and taken["spec"]["leaseTransitions"] == 1
    assert handover < TIMING.lease_seconds, "the standby waited out the lease of a released holder"
    assert [leading for _, leading in a.changes] == [True, False]


def test_a_stale_resource_version_does_not_win_the_lease():
    """Two candidates read the same expired lease: the API server lets only one PUT through."""
    async def scenario(api: LeaseApi):
        api.put_lease(NS, NAME, {"holderIdentity": None, "leaseDurationSeconds": 1})
        replicas = [Replica(api, await api.serve(), name) for name in ("a", "b", "c")]
        try:
            for r in replicas:
                r.elector.start()
            await until(lambda: any(r.elector.leading for r in replicas), 5, "a leader")
            await asyncio.sleep(5 * TIMING.retry_seconds)
            return [r.elector.identity for r in replicas if r.elector.leading], api.holder()
        finally:
            for r in replicas:
                await r.close()

    leaders, holder = run(scenario)
    assert leaders == [holder]


@pytest.mark.parametrize("bad", [dict(renew_deadline_seconds=20.0), dict(request_timeout_seconds=10.0),
                                 dict(retry_seconds=9.0)])
def test_timings_that_would_allow_two_leaders_are_refused(bad):
    with pytest.raises(ValueError):
        Timing(**bad)


def test_timing_from_the_environment():
    timing = Timing.from_env({"SCIBOX_LEADER_LEASE_SECONDS": "30", "SCIBOX_LEADER_RENEW_DEADLINE_SECONDS": "20",
                              "SCIBOX_LEADER_RETRY_SECONDS": "4"})
    assert (timing.lease_seconds, timing.renew_deadline_seconds, timing.retry_seconds,
            timing.request_timeout_seconds) == (30, 20.0, 4.0, 10.0)
    assert Timing.from_env({}) == Timing(15, 10.0, 2.0, 5.0)
