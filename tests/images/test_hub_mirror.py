"""The local hub mirror answers like the Hub, for huggingface_hub and for plain HTTP clients
(the operator fetches config.json through {endpoint}/{repo}/resolve/{rev}/config.json)."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request

import pytest

from tests.fixtures.hub import GATED_REPO, GATED_TOKEN, TINY_REPO


def fetch(url: str, method: str = "GET", headers: dict | None = None):
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_config_json_resolves_with_hub_headers(hub, hub_model_dir):
    status, headers, body = fetch(f"{hub.endpoint}/{TINY_REPO}/resolve/main/config.json")
    assert status == 200 and body == (hub_model_dir / "config.json").read_bytes()
    assert headers["X-Repo-Commit"] == hub.repos[TINY_REPO].sha
    assert headers["Content-Length"] == str(len(body)) and headers["ETag"].startswith('"')
    assert json.loads(body)["architectures"] == ["LlamaForCausalLM"]


def test_head_of_lfs_file_carries_linked_etag_and_size(hub, hub_model_dir):
    data = (hub_model_dir / "model.safetensors").read_bytes()
    status, headers, body = fetch(f"{hub.endpoint}/{TINY_REPO}/resolve/main/model.safetensors", "HEAD")
    assert status == 200 and body == b""
    assert headers["X-Linked-Etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert headers["X-Linked-Size"] == str(len(data))


def test_range_request_answers_206_with_the_tail(hub, hub_model_dir):
    data = (hub_model_dir / "model.safetensors").read_bytes()
    status, headers, body = fetch(f"{hub.endpoint}/{TINY_REPO}/resolve/main/model.safetensors",
                                  headers={"Range": "bytes=1000-"})
    assert status == 206 and body == data[1000:]
    assert headers["Content-Range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"


@pytest.mark.parametrize("path,code", [
    ("/api/models/scibox/unknown", "RepoNotFound"),
    (f"/api/models/{TINY_REPO}/revision/nope", "RevisionNotFound"),
    (f"/{TINY_REPO}/resolve/main/missing.json", "EntryNotFound"),
    (f"/{TINY_REPO}/resolve/nope/config.json", "RevisionNotFound"),
])
def test_unknown_things_are_404_with_the_hub_error_code(hub, path, code):
    status, headers, _ = fetch(hub.endpoint + path)
    assert status == 404 and headers["X-Error-Code"] == code


def test_gated_repo_files_need_the_token_but_its_metadata_is_public(hub):
    url = f"{hub.endpoint}/{GATED_REPO}/resolve/main/config.json"
    status, headers, _ = fetch(url)
    assert status == 401 and headers["X-Error-Code"] == "GatedRepo"
    status, headers, _ = fetch(url, headers={"Authorization": "Bearer hf_wrong"})
    assert status == 401 and headers["X-Error-Message"] == "Invalid credentials in Authorization header"
    assert fetch(url, headers={"Authorization": f"Bearer {GATED_TOKEN}"})[0] == 200
    status, _, body = fetch(f"{hub.endpoint}/api/models/{GATED_REPO}")
    assert status == 200 and json.loads(body)["gated"] == "manual"
    # The session's operator may read the same config meanwhile: count, do not expect an order.
    logged = [r.authorized for r in hub.requests(contains=f"/{GATED_REPO}/resolve/")]
    assert logged.count(False) >= 1 and logged.count(True) >= 2, logged


def test_model_info_and_tree_match_the_files(hub, hub_model_dir):
    _, _, body = fetch(f"{hub.endpoint}/api/models/{TINY_REPO}/revision/main?blobs=true")
    info = json.loads(body)
    assert info["sha"] == hub.repos[TINY_REPO].sha
    siblings = {s["rfilename"]: s for s in info["siblings"]}
    assert siblings["config.json"]["size"] == (hub_model_dir / "config.json").stat().st_size
    assert "pytorch_model.bin" in siblings and "lfs" in siblings["model.safetensors"]
    _, _, body = fetch(f"{hub.endpoint}/api/models/{TINY_REPO}/tree/{info['sha']}?recursive=true")
    assert {e["path"] for e in json.loads(body)} == set(siblings)


def test_huggingface_hub_client_reads_the_mirror(hub, tmp_path):
    from huggingface_hub import HfApi, hf_hub_download

    info = HfApi(endpoint=hub.endpoint, token=False).model_info(TINY_REPO)
    assert info.sha == hub.repos[TINY_REPO].sha
    path = hf_hub_download(TINY_REPO, "config.json", endpoint=hub.endpoint, cache_dir=tmp_path, token=False)
    assert json.loads(open(path).read())["model_type"] == "llama"
