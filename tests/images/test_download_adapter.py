"""download_model.sh in adapter mode (the operator's LoRA adapter Jobs), as a real process
against the local hub mirror, with peft adapters made at test time for the tiny Llama."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.fixtures.hub import TINY_REPO
from tests.fixtures.tiny_lora import make_broken_loras, make_tiny_lora
from tests.images.test_download_model import EXIT, run, summary_of


@pytest.fixture(scope="module")
def loras(hub_mirror, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    good = make_tiny_lora(root / "good")
    hub_mirror.add_repo("scibox/dl-lora", good)
    for kind, folder in make_broken_loras(root / "broken", good).items():
        hub_mirror.add_repo(f"scibox/dl-lora-{kind.replace('_', '-')}", folder)
    return hub_mirror


@pytest.fixture
def base_in_cache(loras, tmp_path):
    """The cache after the base model's own Job: the adapter is checked against it."""
    cache = tmp_path / "cache"
    summary_of(run(loras.endpoint, cache, MODEL_ID=TINY_REPO))
    return cache


def adapter_env(cache, repo, max_rank=8):
    return dict(MODEL_ID=repo, ADAPTER_MAX_RANK=str(max_rank), ADAPTER_BASE_DIR=str(cache / "scibox--tiny-llama" / "main"))


def test_an_adapter_lands_in_its_own_folder_checked_against_the_base_and_is_fetched_once(loras, base_in_cache):
    cache = base_in_cache
    summary = summary_of(run(loras.endpoint, cache, **adapter_env(cache, "scibox/dl-lora")))
    target = cache / "scibox--dl-lora" / "main"
    assert summary["path"] == str(target) and not summary["cached"]
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in target.iterdir()}
    assert summary["adapter"] == {"rank": 8, "base_checked": True}
    loras.clear_log()
    again = summary_of(run(loras.endpoint, cache, **adapter_env(cache, "scibox/dl-lora")))
    assert again["cached"] and not loras.requests()  # its marker: no request at all
    # The check runs on every run: a lower limit fails the cached copy too.
    lower = run(loras.endpoint, cache, **adapter_env(cache, "scibox/dl-lora", max_rank=1))
    assert lower.returncode == EXIT["bad_adapter"] and "rank 8 is over the server's limit 1" in lower.stderr


@pytest.mark.parametrize("kind,text", [
    ("missing-files", "the repo lacks adapter_model.safetensors"),
    ("rank", "adapter rank 16 is over the server's limit 8"),
    ("wrong-base", "lora_A [8, 64] does not fit the base weight [128, 128]"),
])
def test_a_broken_adapter_fails_with_bad_adapter_and_says_why(loras, base_in_cache, kind, text):
    cache = base_in_cache
    done = run(loras.endpoint, cache, **adapter_env(cache, f"scibox/dl-lora-{kind}"))
    assert done.returncode == EXIT["bad_adapter"] == 9, done.stderr
    report = json.loads((cache / "termination-log").read_text())
    assert report["error"] == "bad_adapter" and text in report["message"], report


def test_without_the_base_in_the_cache_only_the_rank_is_checked(loras, tmp_path):
    cache = tmp_path / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    summary = summary_of(run(loras.endpoint, cache, **adapter_env(cache, "scibox/dl-lora-wrong-base")))
    assert summary["adapter"] == {"rank": 8, "base_checked": False}


def test_what_only_the_server_can_judge_passes_the_downloader(loras, base_in_cache):
    """A bias term: files, rank and shapes are fine; vLLM refuses it at load (LoadFailed)."""
    cache = base_in_cache
    assert summary_of(run(loras.endpoint, cache, **adapter_env(cache, "scibox/dl-lora-bias")))["adapter"]["rank"] == 8


def test_a_per_module_rank_over_the_limit_fails_too(loras, tmp_path):
    from tests.images.test_download_model import downloader

    folder = tmp_path / "pattern"
    shutil.copytree(make_tiny_lora(tmp_path / "good"), folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(dict(config, rank_pattern={"q_proj": 32})))
    with pytest.raises(downloader.DownloadError) as refused:
        downloader.check_adapter(folder, 16, None)
    assert refused.value.kind == "bad_adapter" and "rank 32" in refused.value.message
