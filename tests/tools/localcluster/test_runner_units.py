"""Unit tests of the real runner's pure parts: how a pod's container becomes a host process."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from tools.localcluster import runner
from tools.localcluster.runner import (
    CLOSED_HUB_ENDPOINT,
    ConfigError,
    StartError,
    adapt_for_this_host,
    allocate_ip,
    egress_violations,
    expand_references,
    host_command,
    map_path,
    parse_taint,
    pod_phase,
    resolve_env,
    resolve_executable,
    resolve_port,
    returncode_to_exit_code,
    rewrite_value,
    set_flag,
    termination_message,
)

REPO = Path(__file__).resolve().parents[3]
PY = "/venv/bin/python"


def pod(name="p", ns="ns", uid="u-1", **spec) -> dict:
    return {"metadata": {"name": name, "namespace": ns, "uid": uid, "labels": {"app": "x"}},
            "spec": {"nodeName": "real-0", **spec}}


def no_secret(name):
    return None


# ---- addresses -------------------------------------------------------------------------------

def test_allocate_ip_takes_the_lowest_free_loopback_address():
    assert allocate_ip(set()) == "127.200.0.2"
    assert allocate_ip({"127.200.0.2", "127.200.0.3"}) == "127.200.0.4"
    assert allocate_ip({"127.200.0.2"}, "127.201.0.0/30") == "127.201.0.2"


def test_allocate_ip_refuses_a_cidr_outside_loopback():
    with pytest.raises(ValueError, match="127.0.0.0/8"):
        allocate_ip(set(), "10.0.0.0/24")


def test_allocate_ip_says_when_the_range_is_full():
    with pytest.raises(RuntimeError, match="no free pod IP"):
        allocate_ip({"127.0.0.2"}, "127.0.0.0/30")


# ---- paths -------------------------------------------------------------------------------

MOUNTS = [("/models", "/state/volumes/ns/cache"), ("/tmp", "/state/pods/p/tmp"),
          ("/models/sub", "/elsewhere"), ("/opt/scibox", str(REPO / "images" / "vllm"))]


@pytest.mark.parametrize("inside, host", [
    ("/models", "/state/volumes/ns/cache"),
    ("/models/org--name/main", "/state/volumes/ns/cache/org--name/main"),
    ("/models/sub/x", "/elsewhere/x"),  # the longest mount path wins
    ("/tmp/hf", "/state/pods/p/tmp/hf"),
    ("/models2/x", None),  # a prefix of a name is not a parent folder
    ("/etc/passwd", None),
])
def test_map_path(inside, host):
    assert map_path(inside, MOUNTS) == host


@pytest.mark.parametrize("value, expected", [
    ("--model=/models/a/main", "--model=/state/volumes/ns/cache/a/main"),
    ("/tmp", "/state/pods/p/tmp"),
    ("--port=8000", "--port=8000"),
    ("--model=relative/path", "--model=relative/path"),
    ("--config=/etc/x.yaml", "--config=/etc/x.yaml"),
    ("tiny", "tiny"),
])
def test_rewrite_value(value, expected):
    assert rewrite_value(value, MOUNTS) == expected


def test_expand_references_as_kubernetes_does():
    env = {"A": "1", "POD_IP": "127.200.0.2"}
    assert expand_references("--host=$(POD_IP)", env) == "--host=127.200.0.2"
    assert expand_references("$(MISSING)/x", env) == "$(MISSING)/x"
    assert expand_references("$$(A) $(A)", env) == "$(A) 1"


# ---- environment -------------------------------------------------------------------------

def test_resolve_env_in_order_with_secrets_fields_and_env_from():
    container = {
        "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
        "env": [
            {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "api-key"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "URL", "value": "http://$(IP):8000"},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": True}}},
        ],
    }
    env = resolve_env(container, pod(), pod_ip="127.200.0.9", host_ip="127.0.1.200",
                      secret=lambda n: {"api-key": "sekret"} if n == "s" else None,
                      config_map=lambda n: {"a": "1"} if n == "cm" else None)
    assert env == {"CM_a": "1", "KEY": "sekret", "IP": "127.200.0.9", "APP": "x",
                   "URL": "http://127.200.0.9:8000"}


def test_resolve_env_missing_secret_or_key_is_a_config_error():
    missing = {"env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}
    with pytest.raises(ConfigError, match='secret "s" not found'):
        resolve_env(missing, pod(), pod_ip="", host_ip="", secret=no_secret, config_map=no_secret)
    with pytest.raises(ConfigError, match="couldn't find key k"):
        resolve_env(missing, pod(), pod_ip="", host_ip="", secret=lambda n: {"other": "v"}, config_map=no_secret)


# ---- executables and host adaptations ----------------------------------------------------

def test_executables_map_to_the_repo_image_files_and_the_venv_python():
    assert resolve_executable("python3", PY) == PY
    assert resolve_executable("/opt/scibox/download_model.sh", PY) == str(REPO / "images/vllm/download_model.sh")
    with pytest.raises(StartError, match="no such file"):
        resolve_executable("/opt/scibox/not-there.sh", PY)
    with pytest.raises(StartError, match="runs only"):
        resolve_executable("/bin/sh", PY)


@pytest.mark.parametrize("argv, expected_host", [
    (["python3", "-m", "vllm.entrypoints.openai.api_server", "--host=0.0.0.0", "--port=8000"], ["--host=127.200.0.5"]),
    (["python3", "-m", "vllm.entrypoints.openai.api_server", "--host", "::"], ["--host", "127.200.0.5"]),
    (["python3", "-m", "vllm.entrypoints.openai.api_server", "--port=8000"], ["--host=127.200.0.5"]),
])
def test_a_vllm_server_listens_on_its_pod_ip_only(argv, expected_host):
    out, env = adapt_for_this_host(argv, {"HTTPS_PROXY": "http://proxy:3128"}, "127.200.0.5")
    joined = " ".join(out)
    assert " ".join(expected_host) in joined and "0.0.0.0" not in joined and "::" not in out
    assert env["VLLM_HOST_IP"] == "127.200.0.5"
    assert env["HF_HUB_OFFLINE"] == "1" and env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert "HTTPS_PROXY" not in env and env["NO_PROXY"].startswith("127.0.0.0/8")


def test_other_programs_keep_their_arguments_and_never_default_to_the_public_hub():
    argv = ["/opt/scibox/download_model.sh", "--host=0.0.0.0"]
    out, env = adapt_for_this_host(argv, {"MODEL_ID": "a/b"}, "127.200.0.5")
    assert out == argv
    assert env["HF_ENDPOINT"] == CLOSED_HUB_ENDPOINT and "HF_HUB_OFFLINE" not in env
    _, env = adapt_for_this_host(argv, {"HF_ENDPOINT": "http://127.0.0.1:4000"}, "127.200.0.5")
    assert env["HF_ENDPOINT"] == "http://127.0.0.1:4000"


def test_set_flag():
    assert set_flag(["a", "--x=1", "b"], "--x", "2") == ["a", "--x=2", "b"]
    assert set_flag(["a", "--x", "1"], "--x", "2") == ["a", "--x", "2"]
    assert set_flag(["a"], "--x", "2") == ["a", "--x=2"]


@pytest.mark.parametrize("url, bad", [
    ("http://127.0.0.1:9", False), ("http://127.200.3.4:8000/v1", False), ("http://localhost:1", False),
    ("https://huggingface.co", True), ("http://10.0.0.1:80", True), ("http://[::1]:80", False),
])
def test_egress_guard(url, bad):
    assert bool(egress_violations([], {"HF_ENDPOINT": url})) is bad
    assert bool(egress_violations([f"--endpoint={url}"], {})) is bad


# ---- the operator's real manifests, mapped --------------------------------------------------

def _rendered():
    from scibox_operator.api.spec import parse
    from scibox_operator.planning.serving_plan import decide_serving_plan
    from scibox_operator.render.cache import render_download_job
    from scibox_operator.render.deployment import render_deployment

    vd = parse({"metadata": {"name": "tiny", "namespace": "ns", "uid": "u", "generation": 1}, "spec": {
        "model": {"name": "scibox/tiny-llama", "dtype": "bfloat16", "maxModelLen": 256},
        "resources": {"gpus": 1}, "cache": {"endpoint": "http://127.0.0.1:4567", "size": "1Gi"},
        "auth": {"apiKeySecretRef": {"name": "key"}}}})
    plan = decide_serving_plan(vd, config=None, safetensors_index=None, nodes=[], cache_shared=False)
    return render_deployment(vd, plan), render_download_job(vd, plan, [vd])


def _mounts(container, volumes):
    pairs = [("/opt/scibox", str(REPO / "images" / "vllm")), ("/dev/termination-log", "/state/term")]
    return pairs + [(m["mountPath"], volumes[m["name"]]) for m in container["volumeMounts"]]


def test_the_rendered_server_runs_the_venv_vllm_on_the_pod_ip_with_the_pv_folder():
    deployment, _ = _rendered()
    template = deployment["spec"]["template"]
    container = template["spec"]["containers"][0]
    volumes = {"model-cache": "/state/volumes/ns/cache", "tmp": "/state/pods/p/tmp", "dshm": "/dev/shm/x"}
    argv, env, cwd = host_command(
        container, pod(**template["spec"]), pod_ip="127.200.0.7", host_ip="127.0.1.200",
        mounts=_mounts(container, volumes), python=PY, scratch="/state/pods/p/root", termination_file="/state/term",
        secret=lambda n: {"api-key": "k1"} if n == "key" else None, config_map=no_secret)
    assert argv[:3] == [PY, "-m", "vllm.entrypoints.openai.api_server"]
    assert "--model=/state/volumes/ns/cache/scibox--tiny-llama/main" in argv
    assert "--host=127.200.0.7" in argv and "--port=8000" in argv
    assert "--dtype=bfloat16" in argv and "--max-model-len=256" in argv  # from the spec, untouched
    assert env["VLLM_API_KEY"] == "k1"  # from the Secret, through the environment only
    assert env["HOME"] == "/state/pods/p/tmp" and env["HF_HOME"] == "/state/pods/p/tmp/hf"
    assert env["TMPDIR"] == "/state/pods/p/tmp" and env["TERMINATION_LOG"] == "/state/term"
    assert env["VLLM_HOST_IP"] == "127.200.0.7" and env["PATH"].startswith("/venv/bin:")
    assert cwd == "/state/pods/p/root"


def test_the_rendered_download_job_runs_the_repo_script_into_the_pv_folder():
    _, job = _rendered()
    spec = job["spec"]["template"]["spec"]
    container = spec["containers"][0]
    volumes = {"model-cache": "/state/volumes/ns/cache", "tmp": "/state/pods/j/tmp"}
    argv, env, _ = host_command(
        container, pod(**spec), pod_ip="127.200.0.8", host_ip="127.0.1.200", mounts=_mounts(container, volumes),
        python=PY, scratch="/state/pods/j/root", termination_file="/state/term", secret=no_secret,
        config_map=no_secret)
    assert argv == [str(REPO / "images/vllm/download_model.sh")]
    assert env["CACHE_DIR"] == "/state/volumes/ns/cache" and env["MODEL_ID"] == "scibox/tiny-llama"
    assert env["HF_ENDPOINT"] == "http://127.0.0.1:4567" and env["VLLM_PYTHON"] == PY
    assert "HF_HUB_OFFLINE" not in env  # the downloader must reach the (local) hub


def test_a_pod_pointing_at_a_public_hub_is_refused():
    container = {"name": "d", "command": ["/opt/scibox/download_model.sh"],
                 "env": [{"name": "HF_ENDPOINT", "value": "https://huggingface.co"}]}
    with pytest.raises(StartError, match="leave 127.0.0.0/8"):
        host_command(container, pod(), pod_ip="127.200.0.8", host_ip="", mounts=[], python=PY, scratch="/s",
                     termination_file="/t", secret=no_secret, config_map=no_secret)


def test_a_container_without_command_is_refused():
    with pytest.raises(StartError, match="no command"):
        host_command({"name": "c", "image": "x"}, pod(), pod_ip="127.200.0.8", host_ip="", mounts=[], python=PY,
                     scratch="/s", termination_file="/t", secret=no_secret, config_map=no_secret)


# ---- status -------------------------------------------------------------------------------

RUN = {"running": {"startedAt": "t"}}
WAIT = {"waiting": {"reason": "ContainerCreating"}}


def term(code):
    return {"terminated": {"exitCode": code}}


@pytest.mark.parametrize("policy, states, phase", [
    ("Never", [WAIT], "Pending"),
    ("Always", [RUN], "Running"),
    ("Never", [term(0)], "Succeeded"),
    ("Never", [term(3)], "Failed"),
    ("Never", [term(0), RUN], "Running"),
    ("OnFailure", [term(1)], "Running"),
    ("OnFailure", [term(0)], "Succeeded"),
    ("Always", [term(0)], "Running"),
    ("Always", [dict(WAIT, lastTerminated=1)], "Running"),  # CrashLoopBackOff
    ("Always", [WAIT, RUN], "Pending"),
])
def test_pod_phase_as_kubelet_computes_it(policy, states, phase):
    assert pod_phase(policy, states) == phase


def test_termination_message_prefers_the_file_then_falls_back_to_the_log_on_error():
    log = "\n".join(f"line {i}" for i in range(200))
    assert termination_message('{"error": "not_found"}', log, 3, "FallbackToLogsOnError") == '{"error": "not_found"}'
    fallback = termination_message("", log, 3, "FallbackToLogsOnError")
    assert fallback.endswith("line 199") and "line 119" not in fallback and len(fallback) <= 2048
    assert termination_message("", log, 3, "File") == ""
    assert termination_message("", log, 0, "FallbackToLogsOnError") == ""
    assert len(termination_message("x" * 10000, "", 1, "File")) == 4096


def test_exit_codes_of_signals_are_128_plus_the_signal():
    assert returncode_to_exit_code(-9) == 137 and returncode_to_exit_code(-15) == 143
    assert returncode_to_exit_code(3) == 3


def test_probe_ports_resolve_by_name_or_number():
    container = {"name": "vllm", "ports": [{"name": "http", "containerPort": 8000}]}
    assert resolve_port("http", container) == 8000 and resolve_port(9000, container) == 9000
    with pytest.raises(ValueError, match="names no port"):
        resolve_port("metrics", container)


def test_parse_taint():
    assert parse_taint("scibox.io/real-runner=true:NoSchedule") == {
        "key": "scibox.io/real-runner", "value": "true", "effect": "NoSchedule"}
    assert parse_taint("gpu:NoExecute") == {"key": "gpu", "effect": "NoExecute"}
    with pytest.raises(argparse.ArgumentTypeError):
        parse_taint("gpu=x:Sometimes")


def test_marked_processes_finds_children_by_their_environment(tmp_path):
    import subprocess

    env = {runner.MARK_STATE: str(tmp_path), runner.MARK_NODE: "n", runner.MARK_POD: "uid-1", "PATH": "/usr/bin"}
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    try:
        assert child.pid in runner.marked_processes(tmp_path)
        assert child.pid in runner.marked_processes(tmp_path, "n", "uid-1")
        assert child.pid not in runner.marked_processes(tmp_path, "n", "uid-2")
        assert child.pid not in runner.marked_processes(tmp_path / "other")
        assert child.pid in runner.kill_leftovers(tmp_path)
        assert child.wait(timeout=10) == -9
    finally:
        child.kill()


def test_kill_leftovers_removes_only_this_state_dirs_memory_volumes_and_tmp_links(tmp_path, monkeypatch):
    shm, links = tmp_path / "shm", tmp_path / "links"
    monkeypatch.setattr(runner, "SHM_ROOT", shm)
    monkeypatch.setattr(runner, "SHORT_TMP_ROOT", links)
    state, other = (tmp_path / "state").resolve(), (tmp_path / "other").resolve()
    for owner, uid in ((state, "a"), (other, "b")):
        volume = shm / f"scibox-runner-{uid}"
        (volume / "dshm").mkdir(parents=True)
        (volume / runner.SHM_OWNER_FILE).write_text(str(owner))
        target = owner / "runner" / "n" / "pods" / uid / "volumes" / "tmp"
        target.mkdir(parents=True)
        links.mkdir(exist_ok=True)
        (links / f"{uid}-0").symlink_to(target)
    runner.kill_leftovers(state)
    assert not (shm / "scibox-runner-a").exists() and not (links / "a-0").is_symlink()
    assert (shm / "scibox-runner-b" / "dshm").is_dir() and (links / "b-0").is_symlink()


def test_the_rendered_router_runs_the_bootstrapped_vllm_router_on_the_pod_ip(monkeypatch, tmp_path):
    """A VLLMGateway's router pod: the router image's `vllm-router` is the binary of the router
    virtualenv; its API and metrics bind to the pod IP only; the workers' key comes in through the
    environment and the kubelet's $(VAR) expansion."""
    from scibox_operator.api.gateway import parse_gateway
    from scibox_operator.render.gateway import render_router_deployment

    binary = tmp_path / "vllm-router"
    binary.write_text("#!/bin/sh\n")
    monkeypatch.setenv(runner.ROUTER_BIN_ENV, str(binary))
    gw = parse_gateway({"metadata": {"name": "gw", "namespace": "ns", "uid": "u"},
                        "spec": {"auth": {"apiKeySecretRef": {"name": "key"}}}})
    template = render_router_deployment(gw, "router:1")["spec"]["template"]
    container = template["spec"]["containers"][0]
    argv, env, _ = host_command(
        container, pod(**template["spec"]), pod_ip="127.200.0.9", host_ip="127.0.1.200",
        mounts=[("/dev/termination-log", "/state/term")], python=PY, scratch="/state/pods/p/root",
        termination_file="/state/term", secret=lambda n: {"api-key": "k1"} if n == "key" else None,
        config_map=no_secret)
    assert argv[0] == str(binary)
    assert argv[argv.index("--host") + 1] == "127.200.0.9"
    assert argv[argv.index("--prometheus-host") + 1] == "127.200.0.9"
    assert argv[argv.index("--api-key") + 1] == "k1" and env["VLLM_ROUTER_API_KEY"] == "k1"
    assert argv[argv.index("--service-discovery-namespace") + 1] == "ns"
    monkeypatch.setenv(runner.ROUTER_BIN_ENV, str(tmp_path / "absent"))
    with pytest.raises(StartError, match="bootstrap"):
        resolve_executable("vllm-router", PY)


def test_a_pod_ip_another_runner_on_this_host_listens_on_is_skipped():
    """Runners of other clusters on the same host allocate from the same range."""
    import socket

    from tools.localcluster.runner import listening_addresses

    with socket.socket() as taken:
        taken.bind(("127.200.250.2", 0))  # far from where the runners start
        taken.listen()
        assert "127.200.250.2" in listening_addresses()
        assert allocate_ip(listening_addresses(), "127.200.250.0/29") == "127.200.250.3"


def test_cluster_down_kills_what_a_killed_runner_left_running(tmp_path):
    """A pod process whose runner was killed before it had stopped it dies with the cluster."""
    import subprocess

    from tools.localcluster.local import Cluster

    state = tmp_path / "c"
    (state / "pids").mkdir(parents=True)
    env = {runner.MARK_STATE: str(state), runner.MARK_NODE: "n", runner.MARK_POD: "uid-1", "PATH": "/usr/bin"}
    child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                              "signal.SIG_IGN); time.sleep(60)"], env=env)
    try:
        Cluster(name="c", state_dir=state).down()
        assert child.wait(timeout=10) == -9
        assert not state.exists()
    finally:
        child.kill()
