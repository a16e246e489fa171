"""Installing and removing third-party CRDs on a local cluster (Prometheus-Operator's, KEDA's):
apply them, wait until each is Established; delete them, wait until each is gone."""

from __future__ import annotations

import time

from .rest import Rest

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


def delete_and_wait(rest: Rest, names: tuple[str, ...], timeout: float) -> None:
    for name in names:
        rest.delete(f"{CRD_PATH}/{name}")
    deadline = time.monotonic() + timeout
    for name in names:
        while rest.get_or_none(f"{CRD_PATH}/{name}") is not None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {name} still present after {timeout}s")
            time.sleep(0.2)
