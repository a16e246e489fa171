"""The one settings -> vLLM argv mapping, checked against vLLM 0.32's own argument parser."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.envfile import read_env_file
import yaml

from scibox_operator import engine_args as ea
from scibox_operator.engine_args import (
    EngineSettings,
    SettingsError,
    render_vllm_args,
    settings_from_env,
    validate_env,
    validate_extra_args,
)

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "images" / "vllm" / "config"


@pytest.fixture(scope="module")
def vllm_parser():
    """The exact parser `python -m vllm.entrypoints.openai.api_server` builds (no server)."""
    pytest.importorskip("vllm")
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser(description="test"))


def parse(parser, args):
    """Parse like vLLM's main(); argparse errors become a failed assertion with the message."""
    try:
        return parser.parse_args(list(args))
    except SystemExit as exc:  # argparse reports through sys.exit
        raise AssertionError(f"vLLM's parser refused {args}") from exc


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


def test_rendering_is_deterministic_and_omits_unset_settings():
    s = EngineSettings(model="/m")
    assert render_vllm_args(s) == render_vllm_args(EngineSettings(model="/m"))
    assert render_vllm_args(s) == [
        "--model=/m", "--host=0.0.0.0", "--port=8000", "--tensor-parallel-size=1", "--pipeline-parallel-size=1"]
    full = render_vllm_args(EngineSettings(model="/m", enable_prefix_caching=False, enable_chunked_prefill=True,
                                           gpu_memory_utilization=0.5, extra_args=("--enforce-eager",)))
    assert "--no-enable-prefix-caching" in full and "--enable-chunked-prefill" in full
    assert "--gpu-memory-utilization=0.5" in full and full[-1] == "--enforce-eager"


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
    assert ea.model_cache_path("/c", "org/name", None) == "/c/org--name/main"


def test_bare_legacy_repo_names_get_their_own_folder():
    assert ea.model_cache_path("/c", "gpt2", "main") == "/c/gpt2/main"
    s = settings_from_env({"MODEL_ID": "distilgpt2", "CACHE_DIR": "/c"}, None)
    assert s.model == "/c/distilgpt2/main" and s.served_model_name == "distilgpt2"


@pytest.mark.parametrize("repo_id, message", [
    ("org/tiny--llama", "'--'"),          # would share a folder with org--tiny/llama
    ("org--tiny/llama", "'--'"),
    ("org/x..y", "'..'"),
    ("org/model.git", ".git"),
    ("a" * 97, "96 characters"),
    ("org/name/extra", "repo id like org/name or name"),
    ("/abs/path", "repo id like org/name or name"),
])
def test_ids_the_hub_refuses_are_refused_here(repo_id, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ea.model_cache_path("/c", repo_id, None)


@pytest.mark.vllm
def test_api_key_is_read_by_vllm_from_the_environment():
    """vLLM 0.32 takes VLLM_API_KEY from the environment when --api-key is absent."""
    import inspect

    import vllm.envs
    from vllm.entrypoints.serve.middleware import register

    assert "VLLM_API_KEY" in vllm.envs.environment_variables
    assert "envs.VLLM_API_KEY" in inspect.getsource(register)


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


# (extra args, what vLLM would have done with them) -- each must be refused.
SMUGGLING = [
    (["--model", "/other"], "model"),
    (["--model=/other"], "model"),
    (["--model.foo", "bar"], "model"),
    (["--served_model_name", "x"], "served_model_name"),
    (["--tensor-parallel-size", "8"], "tensor_parallel_size"),
    (["--tensor-parallel", "8"], "tensor_parallel_size"),
    (["-tp", "8"], "tensor_parallel_size"),
    (["-tp=8"], "tensor_parallel_size"),
    (["-t", "8"], "tensor_parallel_size"),
    (["-pp", "2"], "pipeline_parallel_size"),
    (["-q", "awq"], "quantization"),
    (["-qawq"], "quantization"),
    (["--quantization=awq"], "quantization"),
    (["--max-model-len", "999999"], "max_model_len"),
    (["--max_model_len=999999"], "max_model_len"),
    (["--device-memory-utilization", "0.99"], "gpu_memory_utilization"),
    (["--gpu-memory-util", "0.99"], "gpu_memory_utilization"),
    (["--no-enable-prefix-caching"], "enable_prefix_caching"),
    (["--enable-chunked-prefill"], "enable_chunked_prefill"),
    (["--trust-remote-code"], "trust_remote_code"),
    (["--trust-remote"], "trust_remote_code"),
    (["--no-trust-remote-code"], None),  # inert today, refused as a spelling of an owned flag
    (["--api-key", "sk-leak"], "api_key"),
    (["--api_key=sk-leak"], "api_key"),
    (["--hf-token", "hf_x"], "hf_token"),
    (["--host", "0.0.0.0"], "host"),
    (["--port=1"], "port"),
    (["--uds", "/tmp/s"], "uds"),
    (["--config", "{evil_yaml}"], "tensor_parallel_size"),
    (["--middleware", "os.system"], "middleware"),
    (["--worker-extension-cls", "evil.Cls"], "worker_extension_cls"),
    (["--allowed-local-media-path", "/"], "allowed_local_media_path"),
    (["--dtype", "float32"], "dtype"),
    (["--revision", "main"], "revision"),
    (["--tokenizer", "x"], "tokenizer"),
    (["--disable-log-stats"], "disable_log_stats"),
]

SMUGGLING_WITHOUT_PARSER_MEANING = [
    ["/other/model"],  # positional model tag
    ["--enforce-eager", "--", "--model", "/x"],
    ["--seed", ""],
    ["-tp8"],  # vLLM 0.32 refuses it too; argparse versions differ on attached values
    "--enforce-eager",  # one string, not a token list
]


@pytest.mark.parametrize("extra,dest", SMUGGLING, ids=[" ".join(s) for s, _ in SMUGGLING])
def test_validate_extra_args_refuses_smuggled_owned_flags(extra, dest):
    assert validate_extra_args(extra), f"{extra} must be refused"
    with pytest.raises(SettingsError):
        render_vllm_args(EngineSettings(model="/m", extra_args=tuple(extra)))


MEANINGFUL_SMUGGLING = [case for case in SMUGGLING if case[1] is not None]


@pytest.mark.vllm
@pytest.mark.parametrize("extra,dest", MEANINGFUL_SMUGGLING, ids=[" ".join(s) for s, _ in MEANINGFUL_SMUGGLING])
def test_each_smuggling_case_really_reaches_the_owned_setting_in_vllm(vllm_parser, tmp_path, extra, dest):
    """The table is meaningful: without the check, vLLM's parser would have changed `dest`."""
    evil = tmp_path / "evil.yaml"
    evil.write_text("tensor-parallel-size: 8\n")
    extra = [t.replace("{evil_yaml}", str(evil)) for t in extra]
    baseline = vars(parse(vllm_parser, ["--model=/m"]))
    smuggled = vars(parse(vllm_parser, ["--model=/m", *extra]))
    assert smuggled[dest] != baseline[dest]


@pytest.mark.parametrize("extra", SMUGGLING_WITHOUT_PARSER_MEANING, ids=str)
def test_validate_extra_args_refuses_malformed_sequences(extra):
    assert validate_extra_args(extra)


@pytest.mark.vllm
def test_every_other_vllm_flag_passes_validation(vllm_parser):
    """No over-blocking: each real long flag that is not owned or forbidden is accepted."""
    refused = set(ea.OWNED_FLAGS) | set(ea.FORBIDDEN_FLAGS)
    refused |= {"--no-" + f[2:] for f in refused}
    checked = 0
    for action in vllm_parser._actions:
        for option in action.option_strings:
            if option.startswith("--") and option not in refused and option != "--help":
                assert validate_extra_args([option, "1"]) == [], option
                checked += 1
    assert checked > 100


@pytest.mark.vllm
def test_owned_and_forbidden_flags_exist_in_vllm(vllm_parser):
    """Guards against typos and renames in a vLLM upgrade."""
    known = set(vllm_parser._option_string_actions)
    for flag in [*ea.OWNED_FLAGS, *ea.FORBIDDEN_FLAGS, *ea.SHORT_ALIASES]:
        assert flag in known, flag
    for short, long_flag in ea.SHORT_ALIASES.items():
        assert vllm_parser._option_string_actions[short] is vllm_parser._option_string_actions[long_flag]
    dtype_action = vllm_parser._option_string_actions["--dtype"]
    assert tuple(dtype_action.choices) == ea.DTYPES


def test_validate_env_rejects_service_owned_variables():
    problems = validate_env({"VLLM_API_KEY": "x", "HF_TOKEN": "y", "MAX_MODEL_LEN": "5", "OMP_NUM_THREADS": "4",
                             "bad-name": "1"})
    text = "\n".join(problems)
    assert "VLLM_API_KEY" in text and "HF_TOKEN" in text and "MAX_MODEL_LEN" in text and "bad-name" in text
    assert "OMP_NUM_THREADS" not in text
    assert validate_env({"VLLM_CPU_KVCACHE_SPACE": "4"}) == []


def test_render_refuses_invalid_settings_built_in_code():
    with pytest.raises(SettingsError, match="port"):
        render_vllm_args(EngineSettings(model="/m", port=0))
    with pytest.raises(SettingsError, match="served_model_name"):
        render_vllm_args(EngineSettings(model="/m", served_model_name="two words"))
    with pytest.raises(SettingsError, match="model must not be empty"):
        render_vllm_args(EngineSettings(model=""))


def run_cli(*args, env):
    script = Path(ea.__file__)
    clean = {k: v for k, v in os.environ.items() if k not in {s.env for s in ea.SETTINGS_ENV}}
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


# --- property: anything render_vllm_args accepts, vLLM parses to the same values ---------------------

from hypothesis import HealthCheck, given, settings as hsettings, strategies as st  # noqa: E402

_path_text = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF, blacklist_characters="\x7f"),
                     min_size=1, max_size=30)
_maybe = lambda strategy: st.none() | strategy  # noqa: E731

engine_settings = st.builds(
    EngineSettings,
    model=_path_text,
    served_model_name=_maybe(_path_text),
    host=st.sampled_from(["0.0.0.0", "127.0.0.1", "::", "vllm.internal"]),
    port=st.integers(1, 65535),
    tensor_parallel_size=st.integers(1, 64),
    pipeline_parallel_size=st.integers(1, 16),
    max_model_len=_maybe(st.integers(1, 1 << 20)),
    gpu_memory_utilization=_maybe(st.floats(0.01, 1.0)),
    max_num_batched_tokens=_maybe(st.integers(1, 1 << 20)),
    max_num_seqs=_maybe(st.integers(1, 4096)),
    enable_prefix_caching=_maybe(st.booleans()),
    enable_chunked_prefill=_maybe(st.booleans()),
    trust_remote_code=st.booleans(),
    dtype=_maybe(st.sampled_from(ea.DTYPES)),
    quantization=_maybe(st.sampled_from(["awq", "gptq", "fp8", "bitsandbytes", "compressed-tensors"])),
    tokenizer=_maybe(_path_text),
    revision=_maybe(st.from_regex(r"[0-9a-f]{40}|main|v[0-9]\.[0-9]", fullmatch=True)),
    disable_log_stats=st.booleans(),
    extra_args=st.lists(st.sampled_from([("--enforce-eager",), ("--seed", "-3"), ("--max-logprobs=2",),
                                         ("--kv-cache-dtype", "fp8"), ("--load-format", "safetensors")]),
                        max_size=3).map(lambda groups: tuple(t for g in groups for t in g)),
)


@pytest.mark.vllm
@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(s=engine_settings)
def test_property_vllm_parses_every_rendered_argv_back_to_the_settings(vllm_parser, s):
    if ea.validate_settings(s):
        with pytest.raises(SettingsError):
            render_vllm_args(s)
        return
    ns = parse(vllm_parser, render_vllm_args(s))
    assert (ns.model, ns.host, ns.port) == (s.model, s.host, s.port)
    assert (ns.tensor_parallel_size, ns.pipeline_parallel_size) == (s.tensor_parallel_size, s.pipeline_parallel_size)
    assert ns.served_model_name == ([s.served_model_name] if s.served_model_name else None)
    for field in ("max_model_len", "gpu_memory_utilization", "max_num_batched_tokens", "max_num_seqs",
                  "enable_prefix_caching", "enable_chunked_prefill", "dtype", "quantization", "tokenizer",
                  "revision"):
        if getattr(s, field) is not None:
            assert getattr(ns, field) == getattr(s, field), field
    assert ns.trust_remote_code is s.trust_remote_code and ns.api_key is None
