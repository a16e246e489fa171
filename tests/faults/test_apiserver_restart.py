"""kube-apiserver killed (SIGKILL) and kept down while the operator reconciles (issue 10).

The operator process must ride it out (no exit, no restart), pick its watches up again, finish
what it was doing and act on changes made after the API server is back.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from .convergence import (
    apply_all,
    converged_count,
    metric_sum,
    snapshot,
    vllmd,
    wait_controllers_recovered,
    wait_converged,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(autouse=True)
def controllers_back_afterwards(cluster):
    """The next test's fixtures must not pay for this test's API server restarts."""
    yield
    wait_controllers_recovered(cluster)

DOWN_FOR = 5.0


def _converged(cluster, namespace, **expect):
    return wait_converged(cluster, namespace, timeout=300, **expect)[0]


def test_operator_survives_an_api_server_restart_mid_run(cluster, operator, namespace):
    pid, starts = operator.proc.pid, operator.starts
    numbers: dict[str, float | int] = {"down_for_s": DOWN_FOR}
    first = [f"before-{i:02d}" for i in range(10)]
    apply_all(cluster, namespace, [vllmd(n) for n in first])
    _converged(cluster, namespace)

    # 20 more, and the API server dies while the operator works on them.
    burst = [f"during-{i:02d}" for i in range(20)]
    apply_all(cluster, namespace, [vllmd(n) for n in burst])
    numbers["converged_when_killed"] = converged_count(snapshot(cluster, namespace))
    t_kill = time.monotonic()
    cluster.restart_apiserver(graceful=False, down_for=DOWN_FOR)
    t_back = time.monotonic()
    numbers["api_unavailable_s"] = round(t_back - t_kill, 1)
    assert operator.proc.poll() is None, "the operator exited while the API server was down:\n" + operator.log_tail()

    # After it is back: the burst converges, and new work (created, edited, deleted) is seen,
    # which needs the operator's watches to be running again.
    _, lag = wait_converged(cluster, namespace, timeout=300)
    numbers["burst_converged_after_back_s"] = round(time.monotonic() - t_back, 1)
    numbers["operator_lag_s"] = round(lag, 1)  # Job complete, Deployment still missing
    t_new = time.monotonic()
    after = [f"after-{i:02d}" for i in range(5)]
    apply_all(cluster, namespace, [vllmd(n) for n in after] + [vllmd(n, engine={"maxNumSeqs": 5}) for n in first[:5]])
    cluster.kubectl("delete", "vllmd", *burst[-3:], "-n", namespace, "--wait=false")
    snap = _converged(cluster, namespace, expect_args={n: "--max-num-seqs=5" for n in first[:5]})
    numbers["changes_after_back_converged_s"] = round(time.monotonic() - t_new, 1)
    assert sorted(snap.vllmds) == sorted(set(first) | set(burst[:-3]) | set(after))

    assert (operator.proc.pid, operator.starts) == (pid, starts) and operator.proc.poll() is None
    metrics = operator.metrics()
    numbers["api_errors_seen"] = metric_sum(metrics, "scibox_operator_api_errors_total")
    assert "crashed" not in operator.log_path.read_text(errors="replace"), operator.log_tail()
    print("\nFAULTS apiserver-restart " + json.dumps(numbers, sort_keys=True))


def test_a_write_storm_during_repeated_api_server_restarts_converges(cluster, operator, namespace):
    """Users keep writing through two restarts in a row (their writes fail while it is down
    and are retried); the operator ends with every object converged and nothing duplicated."""
    names = [f"storm-{i:02d}" for i in range(15)]
    stop = threading.Event()
    written: set[str] = set()

    def writer():
        i = 0
        while not stop.is_set():
            name = names[i % len(names)]
            try:
                apply_all(cluster, namespace, [vllmd(name, engine={"maxNumSeqs": 1 + i // len(names)})])
                written.add(name)
            except Exception:  # noqa: BLE001 - the API server is down: the user retries
                time.sleep(0.5)
            i += 1

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        for _ in range(2):
            time.sleep(3)
            cluster.restart_apiserver(graceful=False, down_for=2.0)
        time.sleep(3)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert written == set(names)
    snap = _converged(cluster, namespace)
    # Each object's Deployment carries its latest maxNumSeqs.
    for name, vd in snap.vllmds.items():
        want = f"--max-num-seqs={vd['spec']['engine']['maxNumSeqs']}"
        dep = next(c for c in snap.children if c["kind"] == "Deployment" and c["metadata"]["name"] == name)
        assert want in dep["spec"]["template"]["spec"]["containers"][0]["args"], name
    assert operator.proc.poll() is None


LONG_DOWN_FOR = 70.0  # longer than kopf's watch retry budget (9 attempts, about a minute)


def test_an_outage_longer_than_the_watch_retry_budget_is_survived(cluster, operator, namespace):
    """kopf gives up on a watch after its retries and starts it over ("escalating"): the
    operator must neither exit nor stay blind once the API server is back."""
    pid = operator.proc.pid
    apply_all(cluster, namespace, [vllmd(f"long-{i}") for i in range(3)])
    _converged(cluster, namespace)
    cluster.restart_apiserver(graceful=False, down_for=LONG_DOWN_FOR)
    t_back = time.monotonic()
    assert operator.proc.poll() is None and operator.proc.pid == pid, operator.log_tail()
    apply_all(cluster, namespace, [vllmd(f"long-new-{i}") for i in range(2)]
              + [vllmd("long-0", engine={"maxNumSeqs": 11})])
    _, lag = wait_converged(cluster, namespace, timeout=300, expect_args={"long-0": "--max-num-seqs=11"})
    numbers = {"down_for_s": LONG_DOWN_FOR, "converged_after_back_s": round(time.monotonic() - t_back, 1),
               "operator_lag_s": round(lag, 1)}
    assert operator.proc.poll() is None
    numbers["controllers_recovered_after_s"] = round(wait_controllers_recovered(cluster), 1)  # reported here
    print("\nFAULTS apiserver-long-outage " + json.dumps(numbers, sort_keys=True))
