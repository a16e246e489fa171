"""Two operator replicas with leader election: exactly one acts (issue 10).

Both replicas watch and keep their stores warm; only the Lease holder writes. When the leader
is SIGKILLed the standby takes over once the Lease expires (15 s) and catches up with what
changed meanwhile; the old leader, restarted, stays a standby; after an API server restart
there is still exactly one writer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.fixtures.operator import OperatorProcess
from tests.operator.kubehelp import get, wait_for

from .convergence import apply_all, metric_sum, vllmd, wait_controllers_recovered, wait_converged

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

LEASE = "scibox-vllm-operator"
WRITE_VERBS = ("POST", "PATCH", "DELETE")


def writes(replica: OperatorProcess) -> float:
    """Mutating API requests the replica sent (lease renewals are PUTs, not counted)."""
    text = replica.metrics()
    return sum(metric_sum(text, "scibox_operator_api_requests_total", verb=v) for v in WRITE_VERBS)


def holder(cluster, namespace: str) -> str | None:
    lease = get(cluster, "lease", LEASE, namespace)
    return ((lease or {}).get("spec") or {}).get("holderIdentity")


def converge(cluster, namespace: str, **expect):
    return wait_converged(cluster, namespace, timeout=240, **expect)[0]


def test_two_replicas_exactly_one_acts_and_the_standby_takes_over(cluster, operator, namespace, hub_endpoint,
                                                                    tmp_path):
    numbers: dict[str, float] = {}
    operator.stop()  # the session's operator has no leader election: it must not act meanwhile
    replicas = {name: OperatorProcess(Path(cluster.kubeconfig), tmp_path / name, hub_endpoint=hub_endpoint,
                                      extra_env={"SCIBOX_LEADER_ELECTION_NAMESPACE": namespace, "POD_NAME": name})
                for name in ("replica-a", "replica-b")}
    try:
        for replica in replicas.values():
            replica.start()
        leader_name = wait_for(lambda: holder(cluster, namespace), timeout=60, what="a Lease holder")
        assert leader_name in replicas
        leader = replicas[leader_name]
        standby_name = next(n for n in replicas if n != leader_name)
        standby = replicas[standby_name]

        names = [f"le-{i}" for i in range(6)]
        apply_all(cluster, namespace, [vllmd(n) for n in names])
        converge(cluster, namespace)
        assert writes(leader) > 0 and metric_sum(leader.metrics(), "scibox_operator_applies_total") > 0
        assert writes(standby) == 0, "the standby wrote"
        assert metric_sum(standby.metrics(), "scibox_operator_probes_total") == 0, "the standby probed"

        # The leader dies without releasing the Lease; work piles up meanwhile.
        killed = time.monotonic()
        leader.kill()
        apply_all(cluster, namespace, [vllmd(n) for n in ("le-late-0", "le-late-1")]
                  + [vllmd(n, engine={"maxNumSeqs": 3}) for n in names[:2]])
        wait_for(lambda: holder(cluster, namespace) == standby_name, timeout=60, interval=0.2,
                 what="the standby holding the Lease")
        numbers["takeover_s"] = round(time.monotonic() - killed, 1)
        converge(cluster, namespace, expect_args={n: "--max-num-seqs=3" for n in names[:2]})
        numbers["converged_after_kill_s"] = round(time.monotonic() - killed, 1)
        assert writes(standby) > 0, "the new leader did not act"

        # The old leader comes back as a standby: it must not write.
        leader.start()
        time.sleep(7)  # more than one renew period of the newcomer
        apply_all(cluster, namespace, [vllmd(n, engine={"maxNumSeqs": 4}) for n in names[2:4]])
        converge(cluster, namespace, expect_args={n: "--max-num-seqs=4" for n in names[2:4]})
        assert holder(cluster, namespace) == standby_name
        assert writes(leader) == 0, "the restarted replica wrote while another held the Lease"

        # An API server restart (connections cut mid-request) leaves exactly one writer.
        before = {n: writes(r) for n, r in replicas.items()}
        cluster.restart_apiserver(graceful=False, down_for=3.0)
        apply_all(cluster, namespace, [vllmd(n, engine={"maxNumSeqs": 6}) for n in names])
        converge(cluster, namespace, expect_args={n: "--max-num-seqs=6" for n in names})
        time.sleep(20)  # longer than the Lease: a replica whose election loop died would show now
        apply_all(cluster, namespace, [vllmd(n, engine={"maxNumSeqs": 8}) for n in names])
        converge(cluster, namespace, expect_args={n: "--max-num-seqs=8" for n in names})
        grew = sorted(n for n, r in replicas.items() if writes(r) > before[n])
        assert grew == [holder(cluster, namespace)], f"writers after the API server restart: {grew}"
        for replica in replicas.values():
            assert replica.proc.poll() is None, replica.log_tail()
    finally:
        for replica in replicas.values():
            replica.stop()
        operator.start()
        wait_controllers_recovered(cluster)  # the API server restart above must not cost the next test
        print("\nFAULTS leader-election " + json.dumps(numbers, sort_keys=True))
