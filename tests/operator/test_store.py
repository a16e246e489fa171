"""The controller's watch-fed store: parsed specs are reused until the object changes."""

from __future__ import annotations

from scibox_operator.runtime.store import Store


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
