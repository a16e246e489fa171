"""images/vllm/download_model.sh, run as a real process against the local hub mirror."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.hub import BARE_REPO, BIG_REPO, BIG_WEIGHTS_BYTES, GATED_REPO, GATED_TOKEN, TINY_REPO

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "images" / "vllm" / "download_model.sh"
PYTHON = sys.executable


def load_downloader():
    spec = importlib.util.spec_from_file_location("download_model", SCRIPT.with_suffix(".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


downloader = load_downloader()
EXIT = downloader.EXIT


def script_env(endpoint: str, cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MODEL_"))}
    env.update(HF_ENDPOINT=endpoint, CACHE_DIR=str(cache), VLLM_PYTHON=PYTHON,
               TERMINATION_LOG=str(cache / "termination-log"), HF_HOME=str(cache / "hf-home"))
    env.update(extra)
    return env


def run(endpoint, cache, **extra) -> subprocess.CompletedProcess:
    cache.mkdir(parents=True, exist_ok=True)
    return subprocess.run([str(SCRIPT)], env=script_env(endpoint, cache, **extra), capture_output=True,
                          text=True, timeout=300)


def summary_of(done) -> dict:
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0, done.stderr
    assert len(lines) == 1, done.stdout
    return json.loads(lines[0])


def expected_files(model_dir: Path) -> set[str]:
    """What vLLM loads from the tiny model folder (computed independently of the downloader)."""
    return {p.name for p in model_dir.iterdir()
            if p.is_file() and (p.suffix in {".json", ".safetensors", ".model", ".txt", ".jinja"})}


def test_a_bare_legacy_id_downloads_into_its_own_folder(hub, hub_model_dir, tmp_path):
    cache = tmp_path / "cache"
    summary = summary_of(run(hub.endpoint, cache, MODEL_ID=BARE_REPO))
    target = cache / BARE_REPO / "main"
    assert summary["path"] == str(target)
    assert (target / "config.json").read_bytes() == (hub_model_dir / "config.json").read_bytes()
    assert json.loads((target / downloader.MARKER).read_text())["repo"] == BARE_REPO
    assert hub.requests(contains=f"/api/models/{BARE_REPO}")


def test_downloads_only_what_vllm_loads_and_writes_marker_and_summary(hub, hub_model_dir, tmp_path):
    cache = tmp_path / "cache"
    done = run(hub.endpoint, cache, MODEL_ID=TINY_REPO)
    summary = summary_of(done)
    target = cache / "scibox--tiny-llama" / "main"
    assert summary["path"] == str(target) and summary["cached"] is False

    on_disk = {p.name for p in target.iterdir() if p.is_file() and p.name != downloader.MARKER}
    assert on_disk == expected_files(hub_model_dir)
    assert "pytorch_model.bin" not in on_disk and "flax_model.msgpack" not in on_disk
    assert not hub.requests(contains=".bin") and not hub.requests(contains=".msgpack")
    assert not hub.requests(contains="README")
    for name in on_disk:
        assert (target / name).read_bytes() == (hub_model_dir / name).read_bytes(), name

    marker = json.loads((target / downloader.MARKER).read_text())
    assert marker["repo"] == TINY_REPO and marker["revision"] == "main"
    assert marker["commit"] == hub.repos[TINY_REPO].sha
    assert set(marker["files"]) == on_disk and marker["file_count"] == len(on_disk)
    assert marker["bytes"] == sum((target / n).stat().st_size for n in on_disk) == summary["downloaded_bytes"]
    assert marker["duration_seconds"] >= 0
    assert json.loads((cache / "termination-log").read_text()) == summary


def test_second_run_sends_no_request(hub, tmp_path):
    cache = tmp_path / "cache"
    summary_of(run(hub.endpoint, cache, MODEL_ID=TINY_REPO))
    hub.clear_log()
    again = summary_of(run(hub.endpoint, cache, MODEL_ID=TINY_REPO))
    assert hub.request_log == []
    assert again["cached"] is True and again["downloaded_bytes"] == 0


def test_a_damaged_folder_is_downloaded_again_despite_the_marker(hub, tmp_path):
    cache = tmp_path / "cache"
    first = summary_of(run(hub.endpoint, cache, MODEL_ID=TINY_REPO))
    weights = Path(first["path"]) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # e.g. a disk problem truncated it
    hub.clear_log()
    again = summary_of(run(hub.endpoint, cache, MODEL_ID=TINY_REPO))
    assert again["cached"] is False
    assert weights.read_bytes() == hub.repos[TINY_REPO].files["model.safetensors"]


def test_marker_for_another_revision_does_not_count(hub, tmp_path):
    cache = tmp_path / "cache"
    first = summary_of(run(hub.endpoint, cache, MODEL_ID=TINY_REPO))
    hub.clear_log()
    by_commit = summary_of(run(hub.endpoint, cache, MODEL_ID=TINY_REPO, MODEL_REVISION=first["commit"]))
    assert by_commit["cached"] is False and by_commit["commit"] == first["commit"]
    assert hub.requests("GET", "/resolve/"), "a new revision folder is downloaded"


def test_connection_cut_mid_file_is_resumed_with_a_range_request(hub, tmp_path):
    cache = tmp_path / "cache"
    hub.cut_next("model.safetensors", after_bytes=12 * 1024 * 1024)
    summary = summary_of(run(hub.endpoint, cache, MODEL_ID=BIG_REPO))
    weights = Path(summary["path"]) / "model.safetensors"
    assert weights.read_bytes() == hub.repos[BIG_REPO].files["model.safetensors"]
    gets = hub.requests("GET", "model.safetensors")
    assert gets[0].body_bytes == 12 * 1024 * 1024
    resumed = [r for r in gets if r.range]
    assert resumed and resumed[0].status == 206 and resumed[0].range.startswith("bytes=")
    assert 0 < int(resumed[0].range.split("=")[1].rstrip("-")) < BIG_WEIGHTS_BYTES
    # Only the missing tail travelled again.
    assert sum(r.body_bytes for r in gets) < 2 * BIG_WEIGHTS_BYTES - 10 * 1024 * 1024


def test_killed_run_keeps_finished_files_and_the_next_run_completes(hub, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    hub.throttle("model.safetensors", chunk=8192, delay=0.05)  # ~5 s for the tiny weights
    proc = subprocess.Popen([str(SCRIPT)], env=script_env(hub.endpoint, cache, MODEL_ID=TINY_REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not hub.sending("model.safetensors"):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the weights download never started"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    target = cache / "scibox--tiny-llama" / "main"
    assert not (target / downloader.MARKER).exists()
    assert (target / "config.json").is_file(), "configs are fetched before weights"

    hub.clear_faults()
    hub.clear_log()
    summary = summary_of(run(hub.endpoint, cache, MODEL_ID=TINY_REPO))
    assert summary["cached"] is False
    fetched = {r.path.rsplit("/", 1)[1] for r in hub.requests("GET", "/resolve/")}
    assert fetched == {"model.safetensors"}, "files finished before the kill are not fetched again"
    assert (target / downloader.MARKER).is_file()


@pytest.mark.parametrize("extra,code,message", [
    ({"MODEL_ID": "scibox/no-such-model"}, "not_found", "Repository Not Found"),
    ({"MODEL_ID": TINY_REPO, "MODEL_REVISION": "v9"}, "not_found", "Revision Not Found"),
    ({"MODEL_ID": GATED_REPO}, "unauthorized", "HF_TOKEN is not set"),
    ({"MODEL_ID": GATED_REPO, "HF_TOKEN": "hf_wrong"}, "unauthorized", "HF_TOKEN was refused"),
    ({}, "bad_config", "MODEL_ID is not set"),
    ({"MODEL_ID": "../../etc/passwd"}, "bad_config", "repo id like org/name"),
])
def test_failures_exit_with_distinct_codes_and_one_clear_line(hub, tmp_path, extra, code, message):
    cache = tmp_path / "cache"
    done = run(hub.endpoint, cache, **extra)
    assert done.returncode == EXIT[code], done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"download failed [{code}]: ") and message in last, last
    assert "hf_wrong" not in done.stderr + done.stdout, "the token is never printed"
    assert json.loads((cache / "termination-log").read_text())["error"] == code


def test_gated_repo_downloads_with_the_right_token(hub, tmp_path):
    summary = summary_of(run(hub.endpoint, tmp_path / "cache", MODEL_ID=GATED_REPO, HF_TOKEN=GATED_TOKEN))
    assert summary["file_count"] >= 2
    assert all(r.authorized for r in hub.requests(contains="/resolve/"))


def test_unreachable_mirror_exits_6(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = run(f"http://127.0.0.1:{port}", tmp_path / "cache", MODEL_ID=TINY_REPO)
    assert done.returncode == EXIT["unreachable"], done.stderr
    assert "cannot reach the hub" in done.stderr


def test_full_disk_exits_5(hub, tmp_path):
    """A 300 KiB tmpfs (in a private mount namespace) holds the configs but not the weights."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare to mount a small tmpfs")
    cache = tmp_path / "cache"
    cache.mkdir()
    env = script_env(hub.endpoint, cache, MODEL_ID=TINY_REPO, TERMINATION_LOG=str(tmp_path / "termination-log"))
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs -o size=300k tmpfs "$CACHE_DIR" && exec "$0"', str(SCRIPT)],
        env=env, capture_output=True, text=True, timeout=300)
    if "mount:" in done.stderr and done.returncode != EXIT["disk_full"]:
        pytest.skip(f"cannot mount tmpfs here: {done.stderr.strip()}")
    assert done.returncode == EXIT["disk_full"], done.stderr
    assert "download failed [disk_full]: no space left" in done.stderr


# --- the file choice, as a pure function ------------------------------------------------------------

def test_choose_files_prefers_safetensors_and_follows_the_index():
    names = ["config.json", "tokenizer.json", "tokenizer.model", "model.safetensors.index.json",
             "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "consolidated.safetensors",
             "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "original/consolidated.00.pth",
             "model.gguf", "README.md", ".gitattributes", "chat_template.jinja", "merges.txt"]
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    configs, weights = downloader.choose_files(names, index)
    assert weights == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert configs == ["chat_template.jinja", "config.json", "merges.txt", "model.safetensors.index.json",
                       "tokenizer.json", "tokenizer.model"]
    _, no_index = downloader.choose_files(names, None)
    assert "consolidated.safetensors" in no_index and "pytorch_model.bin" not in no_index


def test_choose_files_falls_back_to_bin_and_refuses_repos_without_weights():
    assert downloader.choose_files(["config.json", "pytorch_model.bin"], None)[1] == ["pytorch_model.bin"]
    with pytest.raises(downloader.DownloadError) as info:
        downloader.choose_files(["config.json", "model.gguf"], None)
    assert info.value.kind == "no_weights" and "model.gguf" in info.value.message


def test_no_termination_log_is_invented_outside_kubernetes(hub, tmp_path):
    default = Path("/dev/termination-log")
    if default.exists():
        pytest.skip("this machine has a /dev/termination-log")
    summary_of(run(hub.endpoint, tmp_path / "cache", MODEL_ID=TINY_REPO, TERMINATION_LOG=""))
    assert not default.exists()


def test_a_tokenizer_repo_is_fetched_beside_the_model_tokenizer_files_only(hub, hub_model_dir, tmp_path):
    """Issue 19: TOKENIZER_ID (model.tokenizer naming a hub repo) lands in its own cache folder,
    without weights, and the offline server's tokenizer loader reads it from there."""
    from tests.fixtures.hub import TOKENIZER_REPO

    cache = tmp_path / "cache"
    summary = summary_of(run(hub.endpoint, cache, MODEL_ID=TINY_REPO, TOKENIZER_ID=TOKENIZER_REPO))
    folder = cache / "scibox--tiny-tokenizer" / "main"
    assert summary["tokenizer"]["path"] == str(folder) and summary["tokenizer"]["cached"] is False
    assert (folder / "tokenizer.json").read_bytes() == (hub_model_dir / "tokenizer.json").read_bytes()
    assert not list(folder.glob("*.safetensors")) and not (folder / "README.md").exists()
    assert (cache / "scibox--tiny-llama" / "main" / "model.safetensors").is_file(), "the model as before"
    marker = json.loads((folder / downloader.MARKER).read_text())
    assert marker["repo"] == TOKENIZER_REPO and marker["tokenizer_only"] is True

    loaded = subprocess.run([PYTHON, "-c", "import sys; from transformers import AutoTokenizer; "
                             "print(AutoTokenizer.from_pretrained(sys.argv[1]).tokenize('hello world'))", str(folder)],
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
                            capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr[-2000:]

    # Again: both come from their markers, no request for either repo.
    hub.clear_log()
    again = summary_of(run(hub.endpoint, cache, MODEL_ID=TINY_REPO, TOKENIZER_ID=TOKENIZER_REPO))
    assert again["cached"] is True and again["tokenizer"]["cached"] is True
    assert not hub.requests(contains=TOKENIZER_REPO) and not hub.requests(contains=TINY_REPO)
    # A tokenizer-only folder never passes for the model of the same repo (its weights are missing).
    assert downloader.read_marker(folder, TOKENIZER_REPO, "main") is None
    assert downloader.read_marker(folder, TOKENIZER_REPO, "main", tokenizer_only=True) is not None


def test_without_tokenizer_id_nothing_else_is_fetched_and_a_missing_tokenizer_fails_as_not_found(hub, tmp_path):
    cache = tmp_path / "cache"
    summary = summary_of(run(hub.endpoint, cache, MODEL_ID=TINY_REPO))
    assert "tokenizer" not in summary and not (cache / "scibox--tiny-tokenizer").exists()
    done = run(hub.endpoint, cache, MODEL_ID=TINY_REPO, TOKENIZER_ID="scibox/no-such-tokenizer")
    assert done.returncode == EXIT["not_found"], done.stderr
    assert json.loads((cache / "termination-log").read_text())["error"] == "not_found"
