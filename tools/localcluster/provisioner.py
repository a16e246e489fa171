"""A tiny dynamic provisioner for the `local-path` StorageClass of the local cluster.

For every Pending PVC of the class it creates a hostPath PersistentVolume under
`<state>/volumes/<namespace>/<pvc>` with a claimRef; the real PV controller in
kube-controller-manager then binds the pair. When the PV controller releases a volume whose
reclaim policy is Delete, the directory and the PV are removed.

It list-watches PVCs and PVs in two threads and re-lists after any error, so it survives
apiserver restarts. Run by `up` as `python -m tools.localcluster.provisioner --state-dir DIR`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from pathlib import Path

from .rest import ApiError, Rest

PROVISIONER = "scibox.io/local-path"
STORAGE_CLASS = "local-path"
PROVISIONER_ANNOTATIONS = (
    "volume.kubernetes.io/storage-provisioner",
    "volume.beta.kubernetes.io/storage-provisioner",
)


def storage_class_manifest() -> dict:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        # Immediate: a claim binds without waiting for a pod, which is what the operator's
        # model-cache PVCs expect; all nodes share the one host anyway.
        "volumeBindingMode": "Immediate",
    }


def wants_volume(pvc: dict) -> bool:
    """A claim this provisioner must serve: pending, unbound, asking for our class."""
    meta, spec = pvc.get("metadata", {}), pvc.get("spec", {})
    if meta.get("deletionTimestamp") or spec.get("volumeName"):
        return False
    if pvc.get("status", {}).get("phase", "Pending") != "Pending":
        return False
    annotations = meta.get("annotations") or {}
    if any(annotations.get(a) == PROVISIONER for a in PROVISIONER_ANNOTATIONS):
        return True
    return spec.get("storageClassName") == STORAGE_CLASS


def volume_dir(volumes_root: Path, pvc: dict) -> Path:
    return volumes_root / pvc["metadata"]["namespace"] / pvc["metadata"]["name"]


def pv_for_claim(pvc: dict, volumes_root: Path) -> dict:
    """The PersistentVolume that satisfies `pvc` (pure)."""
    meta, spec = pvc["metadata"], pvc.get("spec", {})
    storage = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
    if not storage:
        raise ValueError(f"PVC {meta['namespace']}/{meta['name']} requests no storage")
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": f"pvc-{meta['uid']}",
            "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
            "labels": {"scibox.io/claim-namespace": meta["namespace"]},
        },
        "spec": {
            "capacity": {"storage": storage},
            "accessModes": list(spec.get("accessModes") or ["ReadWriteOnce"]),
            "volumeMode": spec.get("volumeMode") or "Filesystem",
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": spec.get("storageClassName") or STORAGE_CLASS,
            "hostPath": {"path": str(volume_dir(volumes_root, pvc)), "type": "DirectoryOrCreate"},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
        },
    }


def should_delete(pv: dict) -> bool:
    meta, spec = pv.get("metadata", {}), pv.get("spec", {})
    return (
        (meta.get("annotations") or {}).get("pv.kubernetes.io/provisioned-by") == PROVISIONER
        and spec.get("persistentVolumeReclaimPolicy") == "Delete"
        and pv.get("status", {}).get("phase") in ("Released", "Failed")
        and not meta.get("deletionTimestamp")
    )


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


class Provisioner:
    def __init__(self, rest: Rest, volumes_root: Path):
        self.rest = rest
        self.volumes_root = volumes_root.resolve()
        self.lock = threading.Lock()

    def on_claim(self, pvc: dict) -> None:
        if not wants_volume(pvc):
            return
        pv = pv_for_claim(pvc, self.volumes_root)
        path = Path(pv["spec"]["hostPath"]["path"])
        with self.lock:
            path.mkdir(parents=True, exist_ok=True)
            try:
                self.rest.create("/api/v1/persistentvolumes", pv)
                log(f"provisioned {pv['metadata']['name']} for "
                    f"{pvc['metadata']['namespace']}/{pvc['metadata']['name']} at {path}")
            except ApiError as exc:
                if exc.status != 409:
                    raise

    def on_volume(self, pv: dict) -> None:
        if not should_delete(pv):
            return
        path = Path(pv["spec"].get("hostPath", {}).get("path", ""))
        with self.lock:
            # Only ever remove what lives under our own volumes directory.
            if path.is_absolute() and self.volumes_root in path.resolve().parents:
                shutil.rmtree(path, ignore_errors=True)
            self.rest.delete(f"/api/v1/persistentvolumes/{pv['metadata']['name']}")
            log(f"deleted released {pv['metadata']['name']} and {path}")

    def run_informer(self, path: str, handler, stop: threading.Event) -> None:
        """List, handle everything, then watch; start over after any failure."""
        while not stop.is_set():
            try:
                listing = self.rest.get(path)
                for item in listing.get("items", []):
                    self._safely(handler, item)
                rv = listing["metadata"]["resourceVersion"]
                while not stop.is_set():
                    for event in self.rest.watch(path, rv):
                        obj = event.get("object", {})
                        if event.get("type") == "ERROR":
                            raise ApiError(obj.get("code", 500), "WATCH", path, str(obj))
                        rv = obj.get("metadata", {}).get("resourceVersion", rv)
                        if event.get("type") in ("ADDED", "MODIFIED"):
                            self._safely(handler, obj)
            except (ApiError, OSError, ValueError) as exc:
                if not stop.is_set():
                    log(f"{path}: {type(exc).__name__}: {str(exc)[:200]}; re-listing in 1s")
                    stop.wait(1.0)

    @staticmethod
    def _safely(handler, obj: dict) -> None:
        try:
            handler(obj)
        except (ApiError, OSError, ValueError) as exc:
            log(f"error handling {obj.get('metadata', {}).get('name')}: {exc}")

    def run(self, stop: threading.Event) -> None:
        threads = [
            threading.Thread(target=self.run_informer, daemon=True,
                             args=("/api/v1/persistentvolumeclaims", self.on_claim, stop)),
            threading.Thread(target=self.run_informer, daemon=True,
                             args=("/api/v1/persistentvolumes", self.on_volume, stop)),
        ]
        for t in threads:
            t.start()
        log(f"local-path provisioner ({PROVISIONER}) serving {self.volumes_root}")
        while not stop.is_set():
            stop.wait(1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    state = args.state_dir
    pki = state / "pki"
    server = (state / "apiserver-url").read_text().strip()
    rest = Rest(server, pki / "ca.crt", pki / "provisioner.crt", pki / "provisioner.key", timeout=30)
    stop = threading.Event()
    import signal

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    Provisioner(rest, state / "volumes").run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
