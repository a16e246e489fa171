"""The operator's vLLM argument contract: the one mapping from SciBox engine settings to vLLM's
command line, and the checks of what a user may add to it.

Used in two places, with no second implementation anywhere:
  * the operator renders a Deployment's container args with `render_vllm_args(EngineSettings(...))`
    and checks user input with `validate_extra_args` / `validate_env`;
  * the vLLM image copies this package next to start.sh, whose settings loader
    (images/vllm/settings.py: `python settings.py --config vllm_config.yaml --print-args`) builds
    the argv from the YAML file and the environment with the tables here (`SETTINGS_ENV`).

So this package is stdlib only.  Target: vLLM 0.32 (`python -m vllm.entrypoints.openai.api_server`);
tests/operator/engine/test_vllm_args.py feeds every rendered argv to vLLM's own argument parser.

Secrets are never arguments: vLLM 0.32 reads the API key from the environment variable
VLLM_API_KEY (vllm/entrypoints/serve/middleware/register.py: `args.api_key or
[envs.VLLM_API_KEY]`), and huggingface_hub reads HF_TOKEN.  An argument would be visible in
`ps`, in the pod spec and in logs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import values as check
from .values import DTYPES, KV_CACHE_DTYPES, LOAD_FORMATS, RUNNERS
from .vllm_flags import MANY_VALUE_FLAGS, NO_VALUE_FLAGS

__all__ = [
    "EngineSettings",
    "SettingsError",
    "Setting",
    "render_vllm_args",
    "validate_settings",
    "validate_extra_args",
    "validate_env",
    "OWNED_FLAGS",
    "FORBIDDEN_FLAGS",
    "SHORT_ALIASES",
    "SERVICE_ENV",
    "SETTINGS_ENV",
    "SETTING_BY_ENV",
    "DTYPES",
    "RUNNERS",
    "KV_CACHE_DTYPES",
    "PLANNED_FLAGS",
    "validate_planned_extra_args",
    "LOAD_FORMATS",
    "SPEC_FLAGS",
    "validate_spec_extra_args",
]

@dataclass(frozen=True)
class EngineSettings:
    """What SciBox lets a user choose about one vLLM server.  None = leave vLLM's default."""

    model: str
    served_model_name: str | None = None
    host: str = "0.0.0.0"
    port: int = 8000
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    enable_prefix_caching: bool | None = None
    enable_chunked_prefill: bool | None = None
    trust_remote_code: bool = False
    dtype: str | None = None
    quantization: str | None = None
    kv_cache_dtype: str | None = None
    tokenizer: str | None = None
    revision: str | None = None
    runner: str | None = None  # "generate" / "pooling" (vLLM's --runner); None: vLLM's own choice
    disable_log_stats: bool = False
    extra_args: tuple[str, ...] = ()
    # LoRA: --enable-lora with these when max_loras is set (adapters are loaded at runtime).
    max_loras: int | None = None
    max_lora_rank: int | None = None


class SettingsError(ValueError):
    """Bad settings; `.errors` holds one human sentence per problem."""

    def __init__(self, errors: list[str]):
        self.errors = list(errors)
        super().__init__("; ".join(self.errors))


# --- flags the settings own ---------------------------------------------------------------------

# Long flag -> EngineSettings field.  Every spelling of these (with `=value`, `--no-` negation,
# underscores, dotted JSON keys, argparse abbreviations, short aliases) is refused in extra args:
# the settings are the only way to set them, so what the operator shows is what runs.
_FLAG_OF_FIELD: dict[str, str] = {
    "model": "--model",
    "served_model_name": "--served-model-name",
    "host": "--host",
    "port": "--port",
    "tensor_parallel_size": "--tensor-parallel-size",
    "pipeline_parallel_size": "--pipeline-parallel-size",
    "max_model_len": "--max-model-len",
    "gpu_memory_utilization": "--gpu-memory-utilization",
    "max_num_batched_tokens": "--max-num-batched-tokens",
    "max_num_seqs": "--max-num-seqs",
    "enable_prefix_caching": "--enable-prefix-caching",
    "enable_chunked_prefill": "--enable-chunked-prefill",
    "trust_remote_code": "--trust-remote-code",
    "dtype": "--dtype",
    "quantization": "--quantization",
    "tokenizer": "--tokenizer",
    "revision": "--revision",
    "runner": "--runner",
    "disable_log_stats": "--disable-log-stats",
    "max_loras": "--max-loras",
    "max_lora_rank": "--max-lora-rank",
}

# Other long names vLLM 0.32 registers for the same destinations.
_LONG_ALIASES = {"--device-memory-utilization": "--gpu-memory-utilization"}

# vLLM 0.32's single-dash aliases of owned flags.
SHORT_ALIASES: dict[str, str] = {
    "-tp": "--tensor-parallel-size",
    "-pp": "--pipeline-parallel-size",
    "-q": "--quantization",
}

OWNED_FLAGS: frozenset[str] = frozenset(_FLAG_OF_FIELD.values()) | frozenset(_LONG_ALIASES)

# Flags no settings field maps to but that a user must still not pass, with the reason shown.
_CODE = "loads Python code by name; as dangerous as --trust-remote-code"
_LISTENER = "the service owns the HTTP listener (Service, probes and TLS at the ingress depend on it)"
FORBIDDEN_FLAGS: dict[str, str] = {
    "--enable-lora": "LoRA is set by spec.adapters and engine.maxLoras",
    "--lora-modules": "adapters come from spec.adapters (loaded at runtime, no restart)",
    "--api-key": "the API key comes from the VLLM_API_KEY environment variable (a Secret), never argv",
    "--hf-token": "the Hugging Face token comes from the HF_TOKEN environment variable (a Secret), never argv",
    "--config": "a vLLM config file could set any owned flag behind this check",
    "--middleware": _CODE,
    "--worker-cls": _CODE,
    "--worker-extension-cls": _CODE,
    "--logits-processors": _CODE,
    "--tool-parser-plugin": _CODE,
    "--reasoning-parser-plugin": _CODE,
    "--io-processor-plugin": _CODE,
    "--allowed-local-media-path": "would let API callers read files from the server's disk",
    "--uds": _LISTENER,
    "--grpc": _LISTENER,
    "--grpc-port": _LISTENER,
    "--ssl-keyfile": _LISTENER,
    "--ssl-certfile": _LISTENER,
    "--ssl-ca-certs": _LISTENER,
    "--ssl-cert-reqs": _LISTENER,
    "--ssl-ciphers": _LISTENER,
    "--enable-ssl-refresh": _LISTENER,
}

_REFUSED_LONG: dict[str, str] = {
    **{flag: "is set by the engine settings" for flag in OWNED_FLAGS},
    **{flag: f"is not allowed: {why}" for flag, why in FORBIDDEN_FLAGS.items()},
}
_REFUSED_LONG_NAMES = sorted(f[2:] for f in _REFUSED_LONG)

# Flags the operator's planner sizes memory from (EngineSettings field -> flag). They are not
# owned by the image's settings contract (its EXTRA_ARGS may carry them: nothing plans there),
# but the operator renders them from the spec and refuses them in a spec's extra args: a KV
# dtype the planner never saw would make its memory estimate wrong.
PLANNED_FLAGS: dict[str, str] = {"kv_cache_dtype": "--kv-cache-dtype"}
_PLANNED_LONG = {flag: "is set by the engine settings (the planner sizes memory from it)"
                 for flag in PLANNED_FLAGS.values()}
_PLANNED_LONG_NAMES = sorted(f[2:] for f in _PLANNED_LONG)
# Real vLLM 0.32 flags that happen to be prefixes of refused ones: argparse matches them exactly,
# so they are not abbreviations (the tests list every such flag from vLLM's parser).
_EXACT_FLAGS_PREFIXING_REFUSED = frozenset({"reasoning-parser"})


def _setting_hint(flag: str) -> str:
    owned = {**_FLAG_OF_FIELD, **PLANNED_FLAGS}
    field = next((f for f, fl in owned.items() if fl == _LONG_ALIASES.get(flag, flag)), None)
    return f" (use the `{field}` setting)" if field else ""


def _is_negative_number(token: str) -> bool:
    return re.fullmatch(r"-\d+(\.\d+)?([eE][-+]?\d+)?", token) is not None


def _refusal_for_long(token: str, refused: Mapping[str, str] = _REFUSED_LONG,
                      names: list[str] = _REFUSED_LONG_NAMES) -> str | None:
    """Why a `--...` token is refused, or None.  Mirrors FlexibleArgumentParser's rewriting."""
    name = token[2:].split("=", 1)[0]
    # `--json-arg.key value` becomes `--json-arg '{"key": value}'`; `--x+` appends to a list.
    name = name.split(".", 1)[0].rstrip("+").replace("_", "-").lower()
    if not name:
        return f"{token!r} is not a flag"
    candidates = [name]
    if name.startswith("no-"):
        candidates.append(name[3:])
    for cand in candidates:
        flag = "--" + cand
        if flag in refused:
            return f"{token!r}: {flag} {refused[flag]}{_setting_hint(flag)}"
    # argparse accepts unambiguous prefixes (allow_abbrev is on in vLLM's parser).
    for cand in candidates:
        if cand in _EXACT_FLAGS_PREFIXING_REFUSED:
            continue
        hits = [n for n in names if n.startswith(cand)]
        if hits:
            return f"{token!r} abbreviates --{hits[0]}, which {refused['--' + hits[0]]}"
    return None


def _refusal_for_short(token: str) -> str | None:
    name = token.split("=", 1)[0]
    for alias, long_flag in SHORT_ALIASES.items():
        # `-t` is an argparse prefix of `-tp`; `-tp4` / `-qawq` attach the value to the alias.
        if alias.startswith(name) or name.startswith(alias):
            return f"{token!r} sets {long_flag} (alias {alias}), which is set by the engine settings{_setting_hint(long_flag)}"
    return None


_MANY = -1


def _values_taken(flag: str) -> int:
    """How many value tokens may follow `flag` in vLLM's parser (_MANY: any number)."""
    if "=" in flag or flag in NO_VALUE_FLAGS:
        return 0
    if not flag.startswith("--") and len(flag) > 2 and flag not in MANY_VALUE_FLAGS:
        return 0  # a short flag with its value attached (-O3)
    return _MANY if flag in MANY_VALUE_FLAGS else 1


def validate_extra_args(args: Iterable[str]) -> list[str]:
    """Human-readable problems with user-supplied extra vLLM arguments ([] = acceptable).

    Accepted shape: a sequence of flags, each optionally followed by value tokens, e.g.
    ["--enforce-eager", "--kv-cache-dtype", "fp8", "--seed=1"].  Refused: any spelling of a flag
    the settings own, the FORBIDDEN_FLAGS, a bare token before the first flag (vLLM would take it
    as the positional model), `--` (ends option parsing) and tokens no shell could pass.
    """
    if isinstance(args, (str, bytes)):
        return ["extra args must be a list of separate tokens, not one string"]
    errors: list[str] = []
    tokens = list(args)
    values_left = 0  # value tokens the last flag may still take (vllm_flags)
    for index, token in enumerate(tokens):
        if not isinstance(token, str):
            errors.append(f"extra arg #{index + 1} is {type(token).__name__}, not a string")
            continue
        if token == "":
            errors.append(f"extra arg #{index + 1} is empty")
            continue
        if "\x00" in token:
            errors.append(f"extra arg #{index + 1} contains a NUL byte")
            continue
        if token == "--":
            errors.append("'--' would end option parsing and turn what follows into positional arguments")
            continue
        if token.startswith("--"):
            problem = _refusal_for_long(token)
            values_left = _values_taken(token)
        elif token.startswith("-") and token != "-" and not _is_negative_number(token):
            problem = _refusal_for_short(token)
            values_left = _values_taken(token)
        else:
            problem = None
            if index == 0:
                problem = f"extra args must start with a flag, got {token!r} (vLLM would read it as the model)"
            elif values_left == 0:
                problem = (f"extra arg {token!r} is no flag's value ({tokens[index - 1]!r} takes no more), "
                           "so vLLM would read it as the model")
            values_left = max(0, values_left - 1) if values_left != _MANY else _MANY
        if problem:
            errors.append(problem)
    return errors


# Flags the operator's spec sets through a field of its own (not part of the image's settings
# contract): refused in a spec's extra args so that the field is the one place they are set.
SPEC_FLAGS: dict[str, str] = {"load_format": "--load-format"}
_SPEC_LONG = {"--load-format": "is set by the spec's engine.loadFormat"}
_SPEC_LONG_NAMES = sorted(f[2:] for f in _SPEC_LONG)


def validate_spec_extra_args(args: Iterable[str]) -> list[str]:
    """Problems of extra args that set a flag the spec has its own field for (SPEC_FLAGS)."""
    if isinstance(args, (str, bytes)):
        return []
    return [problem for token in args if isinstance(token, str) and token.startswith("--")
            and (problem := _refusal_for_long(token, _SPEC_LONG, _SPEC_LONG_NAMES)) is not None]


def validate_planned_extra_args(args: Iterable[str]) -> list[str]:
    """Problems of extra args that set a flag the planner reads (PLANNED_FLAGS), [] if none.
    Only long flags: none of them has a short alias in vLLM 0.32."""
    if isinstance(args, (str, bytes)):
        return []  # validate_extra_args reports the shape
    return [problem for token in args if isinstance(token, str) and token.startswith("--")
            and (problem := _refusal_for_long(token, _PLANNED_LONG, _PLANNED_LONG_NAMES)) is not None]


# --- environment variables ------------------------------------------------------------------------

# Environment variables the service itself sets; a user-supplied env must not override them.
SERVICE_ENV: dict[str, str] = {
    "VLLM_API_KEY": "the API key comes from the service's Secret",
    "HF_TOKEN": "the Hugging Face token comes from the service's Secret",
    "HUGGING_FACE_HUB_TOKEN": "the Hugging Face token comes from the service's Secret",
    "HF_ENDPOINT": "the model source (hub or mirror) is set by the service",
    "HF_HUB_OFFLINE": "offline loading from the model cache is set by the service",
    "HF_HOME": "the model cache location is set by the service",
    "HF_HUB_CACHE": "the model cache location is set by the service",
    "VLLM_HOST_IP": "vLLM's distributed networking is set by the service",
    "VLLM_CONFIG": "the config file path is set by the service",
    "VLLM_PYTHON": "the interpreter is set by the image",
    "CACHE_DIR": "the model cache location is set by the service",
    # Set by the operator on every server pod (render/deployment.py server_env):
    "HOME": "the writable home under the read-only root filesystem is set by the service",
    "VLLM_NO_USAGE_STATS": "usage statistics stay off: the service sends nothing outside the cluster",
    "VLLM_DO_NOT_TRACK": "usage statistics stay off: the service sends nothing outside the cluster",
    "DO_NOT_TRACK": "usage statistics stay off: the service sends nothing outside the cluster",
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "runtime adapter loading is set by spec.adapters and engine.maxLoras",
    # The compile cache folder is keyed by the configuration (render/compile_cache.py): a path
    # chosen by hand could share a cache between configurations it is not valid for.
    "VLLM_CACHE_ROOT": "the compile cache location is set by the service (keyed by model, vLLM and flags)",
}


@dataclass(frozen=True)
class Setting:
    """One engine setting as the image's settings loader reads it (images/vllm/settings.py)."""

    env: str
    yaml: tuple[str, str]  # (section, key) in vllm_config.yaml
    field: str | None  # EngineSettings field, or None for values handled specially
    parse: Callable[[Any, str], Any]
    doc: str


SETTINGS_ENV: tuple[Setting, ...] = (
    Setting("MODEL_NAME", ("model", "name"), "model", check.text, "model path or hub repo id passed as --model"),
    Setting("MODEL_ID", ("model", "id"), None, check.repo_id,
            "serve the downloaded copy of this hub repo from CACHE_DIR (instead of MODEL_NAME)"),
    Setting("MODEL_CACHE_DIR", ("model", "cache_dir"), None, check.text, "where the download job put MODEL_ID (default /models)"),
    Setting("MODEL_REVISION", ("model", "revision"), "revision", check.word, "hub branch, tag or commit"),
    Setting("SERVED_MODEL_NAME", ("model", "served_name"), "served_model_name", check.word, "name clients put in requests"),
    Setting("TOKENIZER", ("model", "tokenizer"), "tokenizer", check.text, "tokenizer path or repo id, if not the model's"),
    Setting("DTYPE", ("model", "dtype"), "dtype", check.dtype, "weights/activations dtype"),
    Setting("MAX_MODEL_LEN", ("model", "max_model_len"), "max_model_len", check.integer(1), "prompt + completion tokens"),
    Setting("MAX_INPUT_LENGTH", ("model", "max_input_length"), None, check.integer(1),
            "checked only: must be <= MAX_MODEL_LEN (vLLM has no such flag; it refuses longer prompts itself)"),
    Setting("VLLM_HOST", ("server", "host"), "host", check.host, "listen address"),
    Setting("VLLM_PORT", ("server", "port"), "port", check.integer(1, 65535), "listen port"),
    Setting("EXTRA_ARGS", ("server", "extra_args"), "extra_args", check.extra_args, "more vLLM flags (owned ones refused)"),
    Setting("TENSOR_PARALLEL_SIZE", ("parallelism", "tensor_parallel_size"), "tensor_parallel_size", check.integer(1), "GPUs per pipeline stage"),
    Setting("PIPELINE_PARALLEL_SIZE", ("parallelism", "pipeline_parallel_size"), "pipeline_parallel_size", check.integer(1), "pipeline stages"),
    Setting("GPU_MEMORY_UTILIZATION", ("memory", "gpu_memory_utilization"), "gpu_memory_utilization", check.fraction, "share of GPU memory vLLM may use"),
    Setting("MAX_NUM_BATCHED_TOKENS", ("memory", "max_num_batched_tokens"), "max_num_batched_tokens", check.integer(1), "tokens per scheduler step"),
    Setting("MAX_NUM_SEQS", ("memory", "max_num_seqs"), "max_num_seqs", check.integer(1), "sequences per scheduler step"),
    Setting("ENABLE_PREFIX_CACHING", ("memory", "enable_prefix_caching"), "enable_prefix_caching", check.boolean, "reuse KV cache of shared prefixes"),
    Setting("ENABLE_CHUNKED_PREFILL", ("memory", "enable_chunked_prefill"), "enable_chunked_prefill", check.boolean, "split long prefills"),
    Setting("QUANTIZATION", ("quantization", "method"), "quantization", check.quantization, "quantization method (awq, gptq, fp8, ...)"),
    Setting("TRUST_REMOTE_CODE", ("security", "trust_remote_code"), "trust_remote_code", check.boolean, "run Python code shipped with the model"),
    Setting("DISABLE_LOG_STATS", ("monitoring", "disable_log_stats"), "disable_log_stats", check.boolean, "stop periodic stats logging (metrics stay)"),
)

SETTING_BY_ENV: dict[str, Setting] = {s.env: s for s in SETTINGS_ENV}


def validate_env(env: Mapping[str, str]) -> list[str]:
    """Problems with a user-supplied container environment ([] = acceptable).

    The service owns secrets, the model cache and every engine setting: those come from the
    resource's fields, so they cannot be overridden (or leaked into a pod spec) through env.
    """
    errors = []
    for name in sorted(env):
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            errors.append(f"{name!r} is not a valid environment variable name")
        elif name in SERVICE_ENV:
            errors.append(f"env {name} cannot be set: {SERVICE_ENV[name]}")
        elif name in SETTING_BY_ENV:
            errors.append(f"env {name} cannot be set: it is an engine setting, use the resource's field for it")
    return errors


# --- rendering --------------------------------------------------------------------------------------


def validate_settings(s: EngineSettings) -> list[str]:
    """Problems with an EngineSettings built by code (the operator) rather than from env."""
    checks: list[tuple[str, Any, Callable[[Any, str], Any]]] = [
        ("model", s.model, check.text),
        ("host", s.host, check.host),
        ("port", s.port, check.integer(1, 65535)),
        ("tensor_parallel_size", s.tensor_parallel_size, check.integer(1)),
        ("pipeline_parallel_size", s.pipeline_parallel_size, check.integer(1)),
    ]
    optional: list[tuple[str, Any, Callable[[Any, str], Any]]] = [
        ("served_model_name", s.served_model_name, check.word),
        ("max_model_len", s.max_model_len, check.integer(1)),
        ("gpu_memory_utilization", s.gpu_memory_utilization, check.fraction),
        ("max_num_batched_tokens", s.max_num_batched_tokens, check.integer(1)),
        ("max_num_seqs", s.max_num_seqs, check.integer(1)),
        ("enable_prefix_caching", s.enable_prefix_caching, check.boolean),
        ("enable_chunked_prefill", s.enable_chunked_prefill, check.boolean),
        ("dtype", s.dtype, check.dtype),
        ("quantization", s.quantization, check.quantization),
        ("kv_cache_dtype", s.kv_cache_dtype, check.kv_cache_dtype),
        ("tokenizer", s.tokenizer, check.text),
        ("revision", s.revision, check.word),
        ("runner", s.runner, check.runner),
        ("max_loras", s.max_loras, check.integer(1)),
        ("max_lora_rank", s.max_lora_rank, check.integer(1)),
    ]
    errors = []
    for name, value, parse in checks + [c for c in optional if c[1] is not None]:
        try:
            parsed = parse(value, name)
        except ValueError as exc:
            errors.append(str(exc))
            continue
        # Rendering uses the value as given, so it must already be in its parsed form.
        if isinstance(value, str) and isinstance(parsed, str) and parsed != value:
            errors.append(f"{name} must be written as {parsed!r}, got {value!r}")
    for name in ("trust_remote_code", "disable_log_stats"):
        if not isinstance(getattr(s, name), bool):
            errors.append(f"{name} must be true or false, got {getattr(s, name)!r}")
    if isinstance(s.gpu_memory_utilization, str):
        errors.append(f"gpu_memory_utilization must be a number, got {s.gpu_memory_utilization!r}")
    if not isinstance(s.extra_args, (tuple, list)):
        errors.append("extra_args must be a tuple (or list) of strings")
    else:
        errors.extend(validate_extra_args(s.extra_args))
        # Set twice, vLLM would take the last: the extra arg, not what the settings say.
        if s.kv_cache_dtype is not None:
            errors.extend(validate_planned_extra_args(s.extra_args))
    return errors


def render_vllm_args(s: EngineSettings) -> list[str]:
    """vLLM OpenAI server arguments for `s`, in a fixed order; raises SettingsError if invalid.

    Values use the `--flag=value` form so a value starting with '-' can never be read as a flag.
    Settings left at None are omitted so vLLM applies its own (model-dependent) default.
    """
    problems = validate_settings(s)
    if problems:
        raise SettingsError(problems)
    args = [f"--model={s.model}"]
    if s.served_model_name is not None:
        args.append(f"--served-model-name={s.served_model_name}")
    args += [f"--host={s.host}", f"--port={int(s.port)}"]
    args += [f"--tensor-parallel-size={int(s.tensor_parallel_size)}",
             f"--pipeline-parallel-size={int(s.pipeline_parallel_size)}"]
    for field in ("max_model_len", "max_num_batched_tokens", "max_num_seqs"):
        value = getattr(s, field)
        if value is not None:
            args.append(f"{_FLAG_OF_FIELD[field]}={int(value)}")
    if s.gpu_memory_utilization is not None:
        args.append(f"--gpu-memory-utilization={float(s.gpu_memory_utilization)!r}")
    for field in ("enable_prefix_caching", "enable_chunked_prefill"):
        value = getattr(s, field)
        if value is not None:
            flag = _FLAG_OF_FIELD[field]
            args.append(flag if value else "--no-" + flag[2:])
    if s.trust_remote_code:
        args.append("--trust-remote-code")
    for field in ("dtype", "quantization", "tokenizer", "revision", "runner"):
        value = getattr(s, field)
        if value is not None:
            args.append(f"{_FLAG_OF_FIELD[field]}={value}")
    if s.kv_cache_dtype is not None:
        args.append(f"{PLANNED_FLAGS['kv_cache_dtype']}={s.kv_cache_dtype}")
    if s.disable_log_stats:
        args.append("--disable-log-stats")
    if s.max_loras is not None:
        args += ["--enable-lora", f"--max-loras={int(s.max_loras)}"]
        if s.max_lora_rank is not None:
            args.append(f"--max-lora-rank={int(s.max_lora_rank)}")
    args += list(s.extra_args)
    return args
