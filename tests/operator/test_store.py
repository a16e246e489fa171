"""The controller's watch-fed store: parsed specs are reused until the object changes."""

from __future__ import annotations

from scibox_operator.runtime.store import Store, crd_established


def body(name: str, version: str, model: str = "scibox/tiny-llama") -> dict:
    return {"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment",
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": version, "uid": f"uid-{name}"},
            "spec": {"model": {"name": model}}}


def test_a_spec_is_parsed_once_per_version_and_forgotten_with_its_object():
    store, key = Store(), ("ns", "a")
    store.vllmds[key] = body("a", "1")
    first = store.parsed(key)
    assert first is not None and first.spec.model.name == "scibox/tiny-llama"
    assert store.parsed(key) is first                       # same version: no new parse
    store.vllmds[key] = body("a", "2", model="scibox/other")
    second = store.parsed(key)
    assert second is not first and second.spec.model.name == "scibox/other"
    store.vllmds[key] = body("a", "3", model="not a repo id!")
    assert store.parsed(key) is None                        # invalid: None, not an exception
    store.forget_vllmd(key)
    assert store.parsed(key) is None and key not in store.parsed_vllmds


def test_a_crd_counts_as_established_only_while_it_is_not_being_deleted():
    crd = {"metadata": {"name": "scaledobjects.keda.sh"},
           "status": {"conditions": [{"type": "NamesAccepted", "status": "True"},
                                     {"type": "Established", "status": "True"}]}}
    assert crd_established(crd)
    crd["status"]["conditions"][1]["status"] = "False"
    assert not crd_established(crd)
    crd["status"]["conditions"][1]["status"] = "True"
    crd["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"  # still Established=True, going
    assert not crd_established(crd)
