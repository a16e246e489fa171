"""images/vllm/start.sh and health_check.sh: argv plumbing, and a real vLLM CPU server.

The real server serves the tiny model as downloaded by download_model.sh from the local hub
mirror, so the same run proves the downloaded folder is servable by vLLM.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.envfile import read_env_file
from tests.fixtures.hub import TINY_REPO

REPO = Path(__file__).resolve().parents[2]
IMAGE = REPO / "images" / "vllm"
START = IMAGE / "start.sh"
HEALTH = IMAGE / "health_check.sh"
DOWNLOAD = IMAGE / "download_model.sh"
CPU_ENV = Path(__file__).with_name("cpu.env")
PYTHON = sys.executable
SETTINGS_VARS = {"MODEL_NAME", "MODEL_ID", "VLLM_PORT", "VLLM_HOST", "EXTRA_ARGS", "VLLM_CONFIG", "VLLM_API_KEY"}


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in SETTINGS_VARS and not k.startswith(("HF_", "MODEL_", "HEALTH_"))}
    env["VLLM_PYTHON"] = PYTHON
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- argv plumbing, with a stand-in for the server module (fast) -------------------------------------

@pytest.fixture
def echo_server_module(tmp_path):
    """A module start.sh can exec instead of vLLM: it records its argv and environment."""
    (tmp_path / "echo_argv.py").write_text(
        "import json, os, sys\n"
        "json.dump({'argv': sys.argv[1:], 'VLLM_PORT': os.environ.get('VLLM_PORT')}, sys.stdout)\n")
    return {"PYTHONPATH": str(tmp_path), "VLLM_SERVER_MODULE": "echo_argv"}


def test_start_sh_execs_the_server_with_the_rendered_argv_unsplit(echo_server_module, tmp_path):
    env = base_env(**echo_server_module, MODEL_NAME="/models/with space/*", VLLM_PORT="8123",
                   EXTRA_ARGS="--chat-template-content-format 'string'")
    done = subprocess.run([str(START), "--seed", "7"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["argv"][0] == "--model=/models/with space/*"
    assert "--port=8123" in seen["argv"] and seen["argv"][-2:] == ["--seed", "7"]
    # the shipped config file was read (its max_model_len), and the env overrode its port
    assert "--max-model-len=4096" in seen["argv"]
    assert seen["VLLM_PORT"] is None, "vLLM must not see VLLM_PORT (it reads it as its own base port)"


@pytest.mark.parametrize("env_extra,args,message", [
    ({"MODEL_NAME": "/m", "EXTRA_ARGS": "--api-key sk-leak"}, [], "--api-key is not allowed"),
    ({"MODEL_NAME": "/m"}, ["-tp", "4"], "set by the engine settings"),
    ({"MODEL_NAME": "/m", "MAX_NUM_SEQS": "many"}, [], "MAX_NUM_SEQS must be an integer"),
    ({"MODEL_NAME": "/m", "VLLM_CONFIG": "/nonexistent.yaml"}, [], "does not exist"),
])
def test_start_sh_refuses_bad_settings_before_starting_anything(echo_server_module, env_extra, args, message):
    done = subprocess.run([str(START), *args], env=base_env(**echo_server_module, **env_extra),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stdout == "", "the server module must not have run"
    assert message in done.stderr


def test_health_check_fails_clearly_when_nothing_listens():
    port = free_port()
    done = subprocess.run([str(HEALTH)], env=base_env(MODEL_NAME="/m", VLLM_PORT=str(port)),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"127.0.0.1:{port}/health unreachable" in done.stdout


# --- the real server ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def downloaded_cache(hub_mirror, tmp_path_factory):
    cache = tmp_path_factory.mktemp("model-cache")
    env = base_env(MODEL_ID=TINY_REPO, CACHE_DIR=str(cache), HF_ENDPOINT=hub_mirror.endpoint,
                   TERMINATION_LOG=str(cache / "termination-log"))
    done = subprocess.run([str(DOWNLOAD)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return cache


@pytest.fixture(scope="module")
def started_server(downloaded_cache, tmp_path_factory):
    port = free_port()
    env = base_env(**read_env_file(CPU_ENV), VLLM_PORT=str(port), CACHE_DIR=str(downloaded_cache))
    log_path = tmp_path_factory.mktemp("start-sh") / "vllm.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(START)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    health_env = {**env}
    deadline = time.monotonic() + 400
    last = None
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"start.sh exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            last = subprocess.run([str(HEALTH)], env=health_env, capture_output=True, text=True, timeout=60)
            if last.returncode == 0:
                break
            time.sleep(2)
        else:
            pytest.fail(f"not healthy in time; last check: {last.stdout}\n{log_path.read_text()[-4000:]}")
        yield {"proc": proc, "env": env, "port": port, "log": log_path, "healthy": last}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


@pytest.mark.vllm
@pytest.mark.slow
def test_start_sh_serves_the_downloaded_model_and_health_check_follows_it(started_server):
    env, port = started_server["env"], started_server["port"]
    assert "healthy" in started_server["healthy"].stdout and "'tiny-llama'" in started_server["healthy"].stdout
    log = started_server["log"].read_text()
    assert f"--model={env['CACHE_DIR']}/scibox--tiny-llama/main" in log, "start.sh logs the argv it execs"
    assert "sk-scibox-test" not in log, "the API key is not an argument"

    # A real completion (a 200 from /health alone does not prove the model runs).
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions",
        data=json.dumps({"model": "tiny-llama", "prompt": "hello world", "max_tokens": 4}).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer sk-scibox-test"})
    with urllib.request.urlopen(request, timeout=120) as response:
        body = json.loads(response.read())
    assert body["choices"][0]["text"] is not None and body["usage"]["completion_tokens"] >= 1

    wrong_key = subprocess.run([str(HEALTH)], env={**env, "VLLM_API_KEY": "sk-wrong"}, capture_output=True,
                               text=True, timeout=60)
    assert wrong_key.returncode != 0 and "answered 401" in wrong_key.stdout
    wrong_model = subprocess.run([str(HEALTH)], env={**env, "HEALTH_MODEL": "other-model"}, capture_output=True,
                                 text=True, timeout=60)
    assert wrong_model.returncode != 0 and "does not list 'other-model'" in wrong_model.stdout

    proc = started_server["proc"]
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=120)
    stopped = subprocess.run([str(HEALTH)], env=env, capture_output=True, text=True, timeout=60)
    assert stopped.returncode != 0 and "unreachable" in stopped.stdout
