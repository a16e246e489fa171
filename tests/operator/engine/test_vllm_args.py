"""The operator's vLLM argument contract (scibox_operator.engine.vllm_args), checked against
vLLM 0.32's own argument parser."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from scibox_operator.engine import vllm_args
from scibox_operator.engine.vllm_args import (
    EngineSettings,
    SettingsError,
    render_vllm_args,
    validate_env,
    validate_extra_args,
)
from scibox_operator.engine.vllm_flags import NO_VALUE_FLAGS
from tests.vllm_parser import parse, vllm_parser  # noqa: F401 - vllm_parser is a fixture


def test_rendering_is_deterministic_and_omits_unset_settings():
    s = EngineSettings(model="/m")
    assert render_vllm_args(s) == render_vllm_args(EngineSettings(model="/m"))
    assert render_vllm_args(s) == [
        "--model=/m", "--host=0.0.0.0", "--port=8000", "--tensor-parallel-size=1", "--pipeline-parallel-size=1"]
    full = render_vllm_args(EngineSettings(model="/m", enable_prefix_caching=False, enable_chunked_prefill=True,
                                           gpu_memory_utilization=0.5, extra_args=("--enforce-eager",)))
    assert "--no-enable-prefix-caching" in full and "--enable-chunked-prefill" in full
    assert "--gpu-memory-utilization=0.5" in full and full[-1] == "--enforce-eager"



@pytest.mark.vllm
def test_api_key_is_read_by_vllm_from_the_environment():
    """vLLM 0.32 takes VLLM_API_KEY from the environment when --api-key is absent."""
    import inspect

    import vllm.envs
    from vllm.entrypoints.serve.middleware import register

    assert "VLLM_API_KEY" in vllm.envs.environment_variables
    assert "envs.VLLM_API_KEY" in inspect.getsource(register)



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
    (["--runner", "pooling"], "runner"),
    (["--runner=generate"], "runner"),
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
    refused = set(vllm_args.OWNED_FLAGS) | set(vllm_args.FORBIDDEN_FLAGS)
    refused |= {"--no-" + f[2:] for f in refused}
    checked = 0
    for action in vllm_parser._actions:
        for option in action.option_strings:
            if option.startswith("--") and option not in refused and option != "--help":
                # a value only where the flag takes one: after a no-value flag "1" would be vLLM's model
                tokens = [option] if option in NO_VALUE_FLAGS else [option, "1"]
                assert validate_extra_args(tokens) == [], option
                checked += 1
    assert checked > 100


@pytest.mark.vllm
def test_owned_and_forbidden_flags_exist_in_vllm(vllm_parser):
    """Guards against typos and renames in a vLLM upgrade."""
    known = set(vllm_parser._option_string_actions)
    for flag in [*vllm_args.OWNED_FLAGS, *vllm_args.FORBIDDEN_FLAGS, *vllm_args.SHORT_ALIASES]:
        assert flag in known, flag
    for short, long_flag in vllm_args.SHORT_ALIASES.items():
        assert vllm_parser._option_string_actions[short] is vllm_parser._option_string_actions[long_flag]
    dtype_action = vllm_parser._option_string_actions["--dtype"]
    assert tuple(dtype_action.choices) == vllm_args.DTYPES
    assert tuple(sorted(vllm_parser._option_string_actions["--runner"].choices)) == vllm_args.RUNNERS


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



# --- property: anything render_vllm_args accepts, vLLM parses to the same values ---------------------


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
    dtype=_maybe(st.sampled_from(vllm_args.DTYPES)),
    quantization=_maybe(st.sampled_from(["awq", "gptq", "fp8", "bitsandbytes", "compressed-tensors"])),
    tokenizer=_maybe(_path_text),
    revision=_maybe(st.from_regex(r"[0-9a-f]{40}|main|v[0-9]\.[0-9]", fullmatch=True)),
    runner=_maybe(st.sampled_from(vllm_args.RUNNERS)),
    disable_log_stats=st.booleans(),
    extra_args=st.lists(st.sampled_from([("--enforce-eager",), ("--seed", "-3"), ("--max-logprobs=2",),
                                         ("--kv-cache-dtype", "fp8"), ("--load-format", "safetensors")]),
                        max_size=3).map(lambda groups: tuple(t for g in groups for t in g)),
)


@pytest.mark.vllm
@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(s=engine_settings)
def test_property_vllm_parses_every_rendered_argv_back_to_the_settings(vllm_parser, s):
    if vllm_args.validate_settings(s):
        with pytest.raises(SettingsError):
            render_vllm_args(s)
        return
    ns = parse(vllm_parser, render_vllm_args(s))
    assert (ns.model, ns.host, ns.port) == (s.model, s.host, s.port)
    assert (ns.tensor_parallel_size, ns.pipeline_parallel_size) == (s.tensor_parallel_size, s.pipeline_parallel_size)
    assert ns.served_model_name == ([s.served_model_name] if s.served_model_name else None)
    for field in ("max_model_len", "gpu_memory_utilization", "max_num_batched_tokens", "max_num_seqs",
                  "enable_prefix_caching", "enable_chunked_prefill", "dtype", "quantization", "tokenizer",
                  "revision", "runner"):
        if getattr(s, field) is not None:
            assert getattr(ns, field) == getattr(s, field), field
    assert ns.trust_remote_code is s.trust_remote_code and ns.api_key is None


@pytest.mark.vllm
def test_an_embed_task_reaches_vllm_as_the_pooling_runner(vllm_parser):
    """model.task embed -> --runner=pooling, read by vLLM's own parser; an unknown runner is refused."""
    ns = parse(vllm_parser, render_vllm_args(EngineSettings(model="/m", runner="pooling")))
    assert ns.runner == "pooling"
    assert parse(vllm_parser, render_vllm_args(EngineSettings(model="/m"))).runner == "auto"
    with pytest.raises(SettingsError, match="runner"):
        render_vllm_args(EngineSettings(model="/m", runner="embed"))


# --- the KV-cache dtype: rendered from the settings, planned by the operator (issue 19) -------------


def test_kv_cache_dtype_is_rendered_when_set_and_gone_when_unset():
    with_kv = render_vllm_args(EngineSettings(model="/m", kv_cache_dtype="fp8"))
    assert "--kv-cache-dtype=fp8" in with_kv
    without = render_vllm_args(EngineSettings(model="/m"))
    assert not [a for a in without if a.startswith("--kv-cache-dtype")]
    assert [a for a in with_kv if not a.startswith("--kv-cache-dtype")] == without


def test_kv_cache_dtype_set_twice_is_refused_and_unknown_values_too():
    with pytest.raises(SettingsError, match="kv-cache-dtype"):
        render_vllm_args(EngineSettings(model="/m", kv_cache_dtype="fp8", extra_args=("--kv-cache-dtype", "auto")))
    with pytest.raises(SettingsError, match="kv_cache_dtype"):
        render_vllm_args(EngineSettings(model="/m", kv_cache_dtype="int3"))
    # The image's own contract (EXTRA_ARGS, nothing planned there) still lets it through.
    assert validate_extra_args(["--kv-cache-dtype", "fp8"]) == []
    assert vllm_args.validate_planned_extra_args(["--kv-cache-dtype", "fp8"])
    assert vllm_args.validate_planned_extra_args(["--kv-cache-dtype-skip-layers", "0"]) == []


@pytest.mark.vllm
@pytest.mark.parametrize("kv", vllm_args.KV_CACHE_DTYPES)
def test_every_planned_kv_cache_dtype_is_one_vllm_parses(vllm_parser, kv):
    action = vllm_parser._option_string_actions["--kv-cache-dtype"]
    assert kv in action.choices
    parsed = parse(vllm_parser, render_vllm_args(EngineSettings(model="/m", kv_cache_dtype=kv)))
    assert parsed.kv_cache_dtype == kv


@pytest.mark.vllm
def test_the_planned_flags_exist_in_vllm(vllm_parser):
    for flag in vllm_args.PLANNED_FLAGS.values():
        assert flag in vllm_parser._option_string_actions, flag


@pytest.mark.vllm
@pytest.mark.parametrize("fmt", vllm_args.LOAD_FORMATS)
def test_every_offered_load_format_is_one_vllm_parses_and_has_a_loader(vllm_parser, fmt):
    from vllm.config.load import LoadConfig
    from vllm.model_executor.model_loader import get_model_loader

    parsed = parse(vllm_parser, render_vllm_args(EngineSettings(model="/m", extra_args=(f"--load-format={fmt}",))))
    assert parsed.load_format == fmt
    # vLLM's own loader registry resolves it (an unknown name raises here)
    assert get_model_loader(LoadConfig(load_format=parsed.load_format)) is not None
