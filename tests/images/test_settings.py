"""The image's settings loader (images/vllm/settings.py): vllm_config.yaml and the environment
to vLLM's argv through the operator's contract, checked against vLLM 0.32's own argument parser."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scibox_operator.engine import cache_layout, vllm_args
from scibox_operator.engine.vllm_args import SettingsError, render_vllm_args
from tests.envfile import read_env_file
from tests.images.image_settings import settings as image_settings
from tests.vllm_parser import parse, vllm_parser  # noqa: F401 - vllm_parser is a fixture

settings_from_env = image_settings.settings_from_env

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "images" / "vllm" / "config"


SHIPPED_YAML = yaml.safe_load((CONFIG_DIR / "vllm_config.yaml").read_text())

# (name, env, yaml) -> settings_from_env must succeed and vLLM must accept the argv.
ACCEPTED_CASES = [
    ("shipped yaml alone", {}, SHIPPED_YAML),
    ("shipped env file over shipped yaml", read_env_file(CONFIG_DIR / ".env.example"), SHIPPED_YAML),
    ("minimal env", {"MODEL_NAME": "/models/tiny"}, None),
    ("cpu test env", {
        "MODEL_NAME": "/tmp/tiny", "VLLM_HOST": "127.0.0.1", "VLLM_PORT": "18123", "MAX_MODEL_LEN": "256",
        "DTYPE": "bfloat16", "ENABLE_PREFIX_CACHING": "false", "MAX_NUM_SEQS": "4",
    }, None),
    ("everything set", {
        "MODEL_NAME": "meta-llama/Llama-3.1-70B-Instruct", "SERVED_MODEL_NAME": "llama-70b",
        "MODEL_REVISION": "0123456789abcdef0123456789abcdef01234567", "TOKENIZER": "meta-llama/Llama-3.1-70B-Instruct",
        "DTYPE": "float16", "MAX_MODEL_LEN": "32768", "MAX_INPUT_LENGTH": "30000", "VLLM_HOST": "::",
        "VLLM_PORT": "8080", "TENSOR_PARALLEL_SIZE": "4", "PIPELINE_PARALLEL_SIZE": "2",
        "GPU_MEMORY_UTILIZATION": "0.95", "MAX_NUM_BATCHED_TOKENS": "8192", "MAX_NUM_SEQS": "128",
        "ENABLE_PREFIX_CACHING": "yes", "ENABLE_CHUNKED_PREFILL": "on", "QUANTIZATION": "fp8",
        "TRUST_REMOTE_CODE": "true", "DISABLE_LOG_STATS": "1",
        "EXTRA_ARGS": "--enforce-eager --kv-cache-dtype fp8 --seed=7 --max-logprobs 5",
    }, None),
    ("downloaded repo", {"MODEL_ID": "scibox/tiny-llama", "MODEL_REVISION": "v1", "CACHE_DIR": "/cache"}, None),
    ("yaml extra args list with negatives", {}, {
        "model": {"name": "/m"}, "server": {"extra_args": ["--seed", "-1", "--enforce-eager"]},
        "memory": {"enable_prefix_caching": False, "enable_chunked_prefill": False}}),
    ("model path starting with a dash", {"MODEL_NAME": "-weird-dir"}, None),
    ("path with dots and equals", {"MODEL_NAME": "/models/a.b=c/v1.0"}, None),
]


@pytest.mark.vllm
@pytest.mark.parametrize("name,env,config", ACCEPTED_CASES, ids=[c[0] for c in ACCEPTED_CASES])
def test_rendered_args_are_accepted_by_vllm_and_mean_the_settings(vllm_parser, name, env, config):
    settings = settings_from_env(env, config)
    args = render_vllm_args(settings)
    ns = parse(vllm_parser, args)
    assert ns.model == settings.model
    assert ns.host == settings.host and ns.port == settings.port
    assert ns.tensor_parallel_size == settings.tensor_parallel_size
    assert ns.pipeline_parallel_size == settings.pipeline_parallel_size
    if settings.served_model_name:
        assert ns.served_model_name == [settings.served_model_name]
    for field in ("max_model_len", "max_num_batched_tokens", "max_num_seqs", "gpu_memory_utilization",
                  "enable_prefix_caching", "enable_chunked_prefill", "dtype", "quantization", "tokenizer",
                  "revision"):
        if getattr(settings, field) is not None:
            assert getattr(ns, field) == getattr(settings, field), field
    assert ns.trust_remote_code is settings.trust_remote_code
    assert ns.disable_log_stats is settings.disable_log_stats
    assert ns.api_key is None, "the API key must never be an argument"



def test_env_overrides_yaml_and_empty_env_means_unset():
    config = {"model": {"name": "/from-yaml", "max_model_len": 1024}, "server": {"port": 9000}}
    s = settings_from_env({"MAX_MODEL_LEN": "2048", "VLLM_PORT": ""}, config)
    assert (s.model, s.max_model_len, s.port) == ("/from-yaml", 2048, 9000)


def test_model_id_in_env_beats_the_files_model_name_and_vice_versa():
    config = {"model": {"name": "Qwen/Qwen2.5-0.5B-Instruct"}}
    assert settings_from_env({"MODEL_ID": "org/x"}, config).model == "/models/org--x/main"
    assert settings_from_env({"MODEL_NAME": "/m"}, {"model": {"id": "org/x"}}).model == "/m"
    with pytest.raises(SettingsError, match="not both"):
        settings_from_env({}, {"model": {"name": "/m", "id": "org/x"}})


def test_model_id_serves_the_downloaded_folder_under_its_repo_name():
    s = settings_from_env({"MODEL_ID": "org/name", "MODEL_REVISION": "refs/pr/1", "CACHE_DIR": "/c"}, None)
    assert s.model == "/c/org--name/refs--pr--1"
    assert s.served_model_name == "org/name" and s.revision is None
    assert cache_layout.model_cache_path("/c", "org/name", None) == "/c/org--name/main"


def test_bare_legacy_repo_names_get_their_own_folder():
    assert cache_layout.model_cache_path("/c", "gpt2", "main") == "/c/gpt2/main"
    s = settings_from_env({"MODEL_ID": "distilgpt2", "CACHE_DIR": "/c"}, None)
    assert s.model == "/c/distilgpt2/main" and s.served_model_name == "distilgpt2"



BAD_ENV_CASES = [
    ({"MODEL_NAME": "/m", "VLLM_PORT": "eighty"}, "VLLM_PORT must be an integer"),
    ({"MODEL_NAME": "/m", "VLLM_PORT": "70000"}, "between 1 and 65535"),
    ({"MODEL_NAME": "/m", "VLLM_PORT": "tcp://10.0.0.7:8000"}, "enableServiceLinks: false"),
    ({"MODEL_NAME": "/m", "TENSOR_PARALLEL_SIZE": "0"}, "TENSOR_PARALLEL_SIZE must be >= 1"),
    ({"MODEL_NAME": "/m", "GPU_MEMORY_UTILIZATION": "1.5"}, "must be in (0, 1]"),
    ({"MODEL_NAME": "/m", "GPU_MEMORY_UTILIZATION": "nan"}, "must be in (0, 1]"),
    ({"MODEL_NAME": "/m", "ENABLE_PREFIX_CACHING": "maybe"}, "must be true or false"),
    ({"MODEL_NAME": "/m", "DTYPE": "int3"}, "DTYPE must be one of"),
    ({"MODEL_NAME": "/m", "MAX_MODEL_LEN": "256", "MAX_INPUT_LENGTH": "512"}, "MAX_INPUT_LENGTH (512) must be <="),
    ({"MODEL_NAME": "/m", "MAX_INPUT_LENGTH": "512"}, "MAX_INPUT_LENGTH needs MAX_MODEL_LEN"),
    ({"MODEL_NAME": "/m", "MAX_MODEL_LENGTH": "512"}, "did you mean MAX_MODEL_LEN"),
    ({"MODEL_NAME": "/m", "VLLM_MAX_MODEL_LEN": "512"}, "did you mean MAX_MODEL_LEN"),
    ({"MODEL_NAME": "/m", "TENSOR_PARALEL_SIZE": "2"}, "did you mean TENSOR_PARALLEL_SIZE"),
    ({"MODEL_NAME": "/m", "EXTRA_ARGS": "--tp 2 'unclosed"}, "not a valid shell-quoted string"),
    ({"MODEL_NAME": "/m", "EXTRA_ARGS": "-tp 2"}, "-tp"),
    ({"MODEL_NAME": "/m", "MODEL_ID": "a/b"}, "not both"),
    ({"MODEL_ID": "../../etc"}, "repo id like org/name"),
    ({}, "no model"),
]


@pytest.mark.parametrize("env,message", BAD_ENV_CASES, ids=[m for _, m in BAD_ENV_CASES])
def test_bad_env_is_a_clear_error(env, message):
    with pytest.raises(SettingsError) as info:
        settings_from_env(env, None)
    assert any(message in e for e in info.value.errors), info.value.errors


@pytest.mark.parametrize("config,message", [
    ({"modle": {"name": "/m"}}, "unknown config section 'modle' (did you mean 'model'?)"),
    ({"model": {"name": "/m", "max_len": 5}}, "unknown config key model.max_len"),
    ({"model": {"name": "/m"}, "security": {"api_key": "sk-1"}}, "never put the API key in the config file"),
    ({"model": {"name": "/m"}, "memory": {"max_num_seqs": "lots"}}, "config key memory.max_num_seqs must be an integer"),
    ({"model": {"name": "/m"}, "memory": {"max_num_seqs": True}}, "must be an integer"),
    ({"model": {"name": "/m"}, "parallelism": [1, 2]}, "must be a mapping"),
    (["model"], "must be a mapping of sections"),
])
def test_bad_yaml_is_a_clear_error(config, message):
    with pytest.raises(SettingsError) as info:
        settings_from_env({}, config)
    assert any(message in e for e in info.value.errors), info.value.errors


@pytest.mark.vllm
def test_unknown_vllm_variables_are_errors_only_when_vllm_does_not_know_them():
    import vllm.envs

    names = vllm.envs.environment_variables
    ok = settings_from_env({"MODEL_NAME": "/m", "VLLM_CPU_KVCACHE_SPACE": "1"}, None, vllm_env_names=names)
    assert ok.model == "/m"
    with pytest.raises(SettingsError, match="VLLM_CPU_KV_CACHE_SPACE"):
        settings_from_env({"MODEL_NAME": "/m", "VLLM_CPU_KV_CACHE_SPACE": "1"}, None, vllm_env_names=names)




def run_cli(*args, env):
    script = Path(image_settings.__file__)
    clean = {k: v for k, v in os.environ.items() if k not in {s.env for s in vllm_args.SETTINGS_ENV}}
    return subprocess.run([sys.executable, str(script), *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


def test_cli_prints_nul_separated_argv_that_survives_spaces():
    done = run_cli("--print-args", env={"MODEL_NAME": "/models/with space", "EXTRA_ARGS": "--chat-template-content-format 'a b'"})
    assert done.returncode == 0, done.stderr
    tokens = done.stdout.split("\0")
    assert tokens[-1] == "" and tokens[0] == "--model=/models/with space" and tokens[-2] == "a b"


def test_cli_reads_the_shipped_yaml_and_reports_errors_with_exit_2(tmp_path):
    done = run_cli("--config", str(CONFIG_DIR / "vllm_config.yaml"), "--print-json", env={})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0] == "--model=Qwen/Qwen2.5-0.5B-Instruct"
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: /m\nmemroy: {}\n")
    done = run_cli("--config", str(bad), "--print-args", env={"VLLM_PORT": "x"})
    assert done.returncode == 2 and done.stdout == ""
    assert "unknown config section 'memroy'" in done.stderr and "VLLM_PORT must be an integer" in done.stderr
    done = run_cli("--config", str(tmp_path / "missing.yaml"), env={})
    assert done.returncode == 2 and "does not exist" in done.stderr



def test_the_image_layout_runs_without_the_operator_or_site_packages(tmp_path):
    """As the Dockerfile copies them: settings.py and download_model.py beside scibox_operator/engine/
    only, run by a Python without site-packages (the engine package is stdlib only)."""
    engine = REPO / "operator" / "scibox_operator" / "engine"
    (tmp_path / "scibox_operator" / "engine").mkdir(parents=True)
    (tmp_path / "scibox_operator" / "__init__.py").write_text((engine.parent / "__init__.py").read_text())
    for module in engine.glob("*.py"):
        (tmp_path / "scibox_operator" / "engine" / module.name).write_text(module.read_text())
    for script in ("settings.py", "download_model.py"):
        (tmp_path / script).write_text((REPO / "images" / "vllm" / script).read_text())
    env = {"PATH": os.environ.get("PATH", ""), "MODEL_ID": "org/name", "CACHE_DIR": "/c"}
    done = subprocess.run([sys.executable, "-I", "-S", str(tmp_path / "settings.py"), "--print-json"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[:2] == ["--model=/c/org--name/main", "--served-model-name=org/name"]
    done = subprocess.run([sys.executable, "-I", "-S", str(tmp_path / "download_model.py")],
                          env={"PATH": env["PATH"], "TERMINATION_LOG": str(tmp_path / "log")},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == cache_layout.DOWNLOAD_EXIT_CODES["bad_config"], done.stderr
    assert "MODEL_ID is not set" in done.stderr
