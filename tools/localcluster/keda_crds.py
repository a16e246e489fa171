"""KEDA's CRDs, taken from the real Go module at the pinned version (its config/crd/bases).

The operator renders a ScaledObject instead of a plain HPA while `scaledobjects.keda.sh` is
established (issue 22); tests install and remove it to watch that switch both ways. The KEDA
binaries themselves are built by build.py (KEDA tool).
"""

from __future__ import annotations

import time

import yaml

from . import build, crds, versions
from .rest import Rest

MODULE = "github.com/kedacore/keda/v2"
CRD_DIR = "config/crd/bases"
# All of them: KEDA's operator watches every kind and exits when one cache cannot sync.
FILES = ("keda.sh_scaledobjects", "keda.sh_scaledjobs", "keda.sh_triggerauthentications",
         "keda.sh_clustertriggerauthentications", "eventing.keda.sh_cloudeventsources",
         "eventing.keda.sh_clustercloudeventsources")
CRD_NAMES = tuple(f"{f.split('_', 1)[1]}.{f.split('_', 1)[0]}" for f in FILES)


def crd_manifests(version: str = versions.KEDA) -> list[dict]:
    root = build.module_dir(MODULE, version) / CRD_DIR
    out = []
    for name in FILES:
        docs = [d for d in yaml.safe_load_all((root / f"{name}.yaml").read_text()) if d]
        if len(docs) != 1 or docs[0].get("kind") != "CustomResourceDefinition":
            raise RuntimeError(f"{root}/{name}.yaml: expected exactly one CustomResourceDefinition")
        out.append(docs[0])
    return out


def install(rest: Rest, timeout: float = 60.0) -> list[str]:
    return crds.apply_established(rest, crd_manifests(), time.monotonic() + timeout)


def uninstall(rest: Rest, timeout: float = 60.0) -> None:
    crds.delete_and_wait(rest, CRD_NAMES, timeout)
