"""Installing and removing third-party CRDs on a local cluster (Prometheus-Operator's, KEDA's):
apply them, wait until each is Established; delete them, wait until each is gone."""

from __future__ import annotations

import time

from .rest import ApiError, Rest

CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def apply_established(rest: Rest, manifests: list[dict], deadline: float) -> list[str]:
    """Apply `manifests` and wait (until the monotonic `deadline`) for each to be Established."""
    names = []
    for crd in manifests:
        name = crd["metadata"]["name"]
        rest.apply(CRD_PATH, name, crd)
        names.append(name)
    for name in names:
        while True:
            crd = rest.get(f"{CRD_PATH}/{name}")
            conditions = {c["type"]: c["status"] for c in (crd.get("status") or {}).get("conditions") or []}
            if conditions.get("Established") == "True":
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} not Established in time: {conditions}")
            time.sleep(0.2)
    return names


# The API server's CRD finalizer retries a failed instance cleanup with a per-CRD exponential
# back-off; right after an install its listing can fail several times, and the deletion then
# waits for the informer's 5-minute resync (measured here: 3 of 25 uninstalls took 280-290 s,
# Terminating=True InstanceDeletionFailed). A metadata change re-queues the CRD at once.
NUDGE_EVERY = 5.0
NUDGE_ANNOTATION = "scibox.io/finalizer-nudge"


def delete_and_wait(rest: Rest, names: tuple[str, ...], timeout: float) -> None:
    for name in names:
        rest.delete(f"{CRD_PATH}/{name}")
    deadline = time.monotonic() + timeout
    next_nudge = time.monotonic() + NUDGE_EVERY
    left = list(names)
    while left:
        left = [name for name in left if rest.get_or_none(f"{CRD_PATH}/{name}") is not None]
        if not left:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"CRD {left[0]} still present after {timeout}s")
        if time.monotonic() > next_nudge:
            for name in left:
                nudge_finalizer(rest, name)
            next_nudge = time.monotonic() + NUDGE_EVERY
        time.sleep(0.2)


def nudge_finalizer(rest: Rest, name: str) -> None:
    """Touch a terminating CRD's metadata so that the finalizer controller takes it up again."""
    body = {"metadata": {"annotations": {NUDGE_ANNOTATION: f"{time.time():.3f}"}}}
    try:
        rest.request("PATCH", f"{CRD_PATH}/{name}", body=body, content_type="application/merge-patch+json")
    except ApiError as exc:
        if exc.status != 404:  # gone meanwhile
            raise
