"""The administrator's policy (issue 18), pure: endpoints, images, code-loading env, trustRemoteCode."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from scibox_operator.api.spec import InvalidSpec, parse
from scibox_operator.reconcile.policy import (
    CODE_LOADING_ENV,
    CODE_LOADING_ENV_FORBIDDEN,
    ENDPOINT_NOT_ALLOWED,
    IMAGE_NOT_ALLOWED,
    TRUST_REMOTE_CODE_FORBIDDEN,
    AdminPolicy,
    PolicyError,
    code_loading_reason,
    endpoint_origin,
    image_allowed,
    policy_violation,
)

HUB = "https://huggingface.co"
MIRROR = "http://127.0.0.1:8765"


@dataclass
class FakeSettings:
    """Stands for controller.Settings: the three fields the policy reads from it."""

    hub_endpoint: str = HUB
    vllm_image: str = "ghcr.io/scibox/vllm:0.32.0"
    forbid_trust_remote_code: bool = False


def vd(**spec):
    base = {"model": {"name": "org/model"}, "resources": {"gpus": 1}}
    for key, value in spec.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return parse({"metadata": {"name": "m", "namespace": "ns", "uid": "u", "generation": 1}, "spec": base})


def policy(env=None, **settings):
    return AdminPolicy.from_settings(FakeSettings(**settings), env or {})


# --- hub endpoints ----------------------------------------------------------------------------


def test_by_default_only_the_operators_own_hub_is_allowed():
    p = policy()
    assert policy_violation(vd(), p) is None, "no cache.endpoint: the operator's default hub"
    assert policy_violation(vd(cache={"endpoint": HUB}), p) is None
    assert policy_violation(vd(cache={"endpoint": HUB + "/"}), p) is None
    reason, message = policy_violation(vd(cache={"endpoint": MIRROR}), p)
    assert reason == ENDPOINT_NOT_ALLOWED
    assert MIRROR in message and HUB in message and "no token is sent" in message


def test_a_mirror_as_the_default_hub_is_the_only_one_allowed():
    """The tests and the demo point SCIBOX_HUB_ENDPOINT at their mirror and allow exactly it."""
    p = policy(hub_endpoint=MIRROR)
    assert policy_violation(vd(cache={"endpoint": MIRROR}), p) is None
    assert policy_violation(vd(cache={"endpoint": HUB}), p)[0] == ENDPOINT_NOT_ALLOWED


@pytest.mark.parametrize("endpoint", [
    "https://huggingface.co.evil.com",
    "https://evil.com/huggingface.co",
    "https://huggingface.co@evil.com",
    "https://user:pw@huggingface.co",
    "https://huggingface.co:8443",
    "http://huggingface.co",
    "https://huggingface.co:443@evil.com",
    "https://huggingface.co\\@evil.com",
    "https://huggingface.co#@evil.com",
    "https://huggingface.co?x=@evil.com",
    "https://huggingface.co/%2e%2e/evil",
    "https://huggingface.co%2eevil.com",
    "https://huggingface.co.",
    "https://xn--huggingface-co.com",
    "https://huggingface.co:0",
    "https://huggingface.co:99999",
    "https://huggingface.co:",
    "ftp://huggingface.co",
    "https://huggıngface.co",
    "https://169.254.169.254",
])
def test_exact_origin_matching_is_not_fooled(endpoint):
    p = policy()
    assert not p.endpoint_allowed(endpoint)
    try:
        spec = vd(cache={"endpoint": endpoint})
    except InvalidSpec:
        return  # the spec's own pattern refuses it already
    assert policy_violation(spec, p)[0] == ENDPOINT_NOT_ALLOWED, endpoint


def test_the_same_origin_written_differently_is_allowed():
    p = policy(env={"SCIBOX_ALLOWED_HUB_ENDPOINTS": "https://huggingface.co, http://[::1]:9000 http://mirror.local"})
    for ok in ("https://HuggingFace.co", "https://huggingface.co:443", "https://huggingface.co/api/mirror",
               "http://[::1]:9000/", "http://mirror.local:80"):
        assert policy_violation(vd(cache={"endpoint": ok}), p) is None, ok
    assert policy_violation(vd(cache={"endpoint": "http://[::1]:9001"}), p)[0] == ENDPOINT_NOT_ALLOWED
    assert endpoint_origin("http://[::1]:9000/") == ("http", "[::1]", 9000)


def test_an_explicit_allowlist_replaces_the_default_and_must_contain_the_operators_hub():
    p = policy(env={"SCIBOX_ALLOWED_HUB_ENDPOINTS": f"{HUB},{MIRROR}"})
    assert policy_violation(vd(cache={"endpoint": MIRROR}), p) is None
    with pytest.raises(PolicyError, match="SCIBOX_HUB_ENDPOINT"):
        policy(env={"SCIBOX_ALLOWED_HUB_ENDPOINTS": MIRROR})


@pytest.mark.parametrize("entry", ["huggingface.co", "https://huggingface.co/models", "https://u@huggingface.co",
                                   "https://huggingface.co?x", "file:///etc"])
def test_allowlist_entries_must_be_bare_origins(entry):
    with pytest.raises(PolicyError, match="scheme://host"):
        policy(env={"SCIBOX_ALLOWED_HUB_ENDPOINTS": f"{HUB},{entry}"})


# --- trustRemoteCode and code-loading env -----------------------------------------------------


def test_trust_remote_code_is_refused_only_when_forbidden():
    remote = vd(model={"name": "org/model", "trustRemoteCode": True})
    assert policy_violation(remote, policy()) is None
    reason, message = policy_violation(remote, policy(forbid_trust_remote_code=True))
    assert reason == TRUST_REMOTE_CODE_FORBIDDEN and "trustRemoteCode" in message


@pytest.mark.parametrize("name", ["PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PYTHONUSERBASE", "PYTHONINSPECT",
                                  "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "LD_BIND_NOW", "BASH_ENV",
                                  "GCONV_PATH", "HF_MODULES_CACHE"])
def test_code_loading_env_is_refused_when_remote_code_is_forbidden(name):
    spec = vd(engine={"env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": name, "value": "/models/x"}]})
    assert policy_violation(spec, policy()) is None, "allowed while remote code is"
    reason, message = policy_violation(spec, policy(forbid_trust_remote_code=True))
    assert reason == CODE_LOADING_ENV_FORBIDDEN
    assert name in message and "LOG_LEVEL" not in message


def test_every_code_loading_variable_names_why_and_ordinary_ones_pass():
    """The one list: each entry says why; the loader's family is matched by prefix; look-alikes
    that load nothing are not refused."""
    assert {"PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PYTHONUSERBASE", "PYTHONINSPECT"} <= set(CODE_LOADING_ENV)
    assert all(why and not why.endswith(".") for why in CODE_LOADING_ENV.values())
    for name in ("LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "LD_DEBUG"):
        assert code_loading_reason(name), name
    for harmless in ("PYTHONUNBUFFERED", "LOG_LEVEL", "OLD_PRELOAD", "ld_preload", "VLLM_LOGGING_LEVEL",
                     "CUDA_VISIBLE_DEVICES", "NCCL_DEBUG"):
        assert code_loading_reason(harmless) is None, harmless
    ok = vd(engine={"env": [{"name": "PYTHONUNBUFFERED", "value": "1"}, {"name": "NCCL_DEBUG", "value": "INFO"}]})
    assert policy_violation(ok, policy(forbid_trust_remote_code=True)) is None


# --- images -----------------------------------------------------------------------------------


def test_any_image_without_an_allowlist():
    assert policy_violation(vd(image="anything/at:all", cache={"downloadImage": "busybox"}), policy()) is None


def test_server_and_download_images_must_match_an_allowed_prefix():
    p = policy(env={"SCIBOX_ALLOWED_IMAGE_PREFIXES": "ghcr.io/scibox/,registry.local"})
    assert policy_violation(vd(image="ghcr.io/scibox/vllm:0.33.0"), p) is None
    assert policy_violation(vd(image="registry.local/team/vllm@sha256:" + "a" * 64), p) is None
    reason, message = policy_violation(vd(image="docker.io/evil/vllm:1"), p)
    assert reason == IMAGE_NOT_ALLOWED and message.startswith("image 'docker.io/evil/vllm:1'")
    reason, message = policy_violation(vd(cache={"downloadImage": "evil/downloader"}), p)
    assert reason == IMAGE_NOT_ALLOWED and message.startswith("cache.downloadImage")


@pytest.mark.parametrize("image, allowed", [
    ("ghcr.io/scibox/vllm:1", True),
    ("ghcr.io/scibox/vllm@sha256:" + "b" * 64, True),
    ("ghcr.io/scibox/vllm/sub:1", True),
    ("ghcr.io/scibox/vllm-evil:1", False),
    ("ghcr.io/scibox-evil/vllm:1", False),
    ("ghcr.io.evil.com/scibox/vllm:1", False),
    ("evil.com/ghcr.io/scibox/vllm:1", False),
    ("registry.local/x:1", True),
    ("registry.local:5000/x:1", False),
    ("registry.local.evil.com/x:1", False),
    ("vllm/vllm-openai:v0.32.0", True),
    ("docker.io/vllm/vllm-openai:v0.32.0", True),
    ("vllm/vllm-openai-evil:v1", False),
    ("ubuntu", False),
])
def test_image_prefixes_match_at_a_boundary(image, allowed):
    prefixes = tuple(AdminPolicy.build(
        default_hub_endpoint=HUB, default_image="ghcr.io/scibox/vllm:1", allowed_hub_endpoints=None,
        image_prefixes=["ghcr.io/scibox/vllm", "registry.local", "vllm/vllm-openai"],
        forbid_trust_remote_code=False).image_prefixes)
    assert prefixes[2] == "docker.io/vllm/vllm-openai", "short Docker Hub names are written out"
    assert image_allowed(image, prefixes) is allowed


def test_the_operators_default_image_must_be_allowed():
    with pytest.raises(PolicyError, match="SCIBOX_VLLM_IMAGE"):
        policy(env={"SCIBOX_ALLOWED_IMAGE_PREFIXES": "registry.local/"})
    assert policy(env={"SCIBOX_ALLOWED_IMAGE_PREFIXES": "registry.local/"}, vllm_image="registry.local/vllm:1")


def test_the_policy_is_frozen():
    p = policy()
    with pytest.raises(AttributeError):
        p.forbid_trust_remote_code = True  # type: ignore[misc]
