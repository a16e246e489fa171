"""The one mapping from SciBox engine settings to vLLM's command line.

Used in two places, with no second implementation anywhere:
  * the operator renders a Deployment's container args with `render_vllm_args(EngineSettings(...))`
    and checks user input with `validate_extra_args` / `validate_env`;
  * the vLLM image copies this file next to start.sh, which runs
    `python engine_args.py --config vllm_config.yaml --print-args` to build the argv from the YAML
    file and the environment (`settings_from_env`).

So this module is stdlib only (PyYAML is imported lazily by the command line, and only there:
the vLLM image has it).  Target: vLLM 0.32 (`python -m vllm.entrypoints.openai.api_server`);
tests/operator/test_engine_args.py feeds every rendered argv to vLLM's own argument parser.

Secrets are never arguments: vLLM 0.32 reads the API key from the environment variable
VLLM_API_KEY (vllm/entrypoints/serve/middleware/register.py: `args.api_key or
[envs.VLLM_API_KEY]`), and huggingface_hub reads HF_TOKEN.  An argument would be visible in
`ps`, in the pod spec and in logs.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import shlex
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Callable

__all__ = [
    "EngineSettings",
    "SettingsError",
    "render_vllm_args",
    "validate_settings",
    "validate_extra_args",
    "validate_env",
    "settings_from_env",
    "model_cache_path",
    "OWNED_FLAGS",
    "FORBIDDEN_FLAGS",
    "SHORT_ALIASES",
    "SERVICE_ENV",
    "SETTINGS_ENV",
    "DTYPES",
    "MODEL_CACHE_MARKER",
    "DOWNLOAD_EXIT_CODES",
]

# vLLM 0.32's `--dtype` choices (checked against the real parser in the tests).
DTYPES = ("auto", "bfloat16", "float", "float16", "float32", "half")


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
    tokenizer: str | None = None
    revision: str | None = None
    disable_log_stats: bool = False
    extra_args: tuple[str, ...] = ()


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
    "disable_log_stats": "--disable-log-stats",
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
# Real vLLM 0.32 flags that happen to be prefixes of refused ones: argparse matches them exactly,
# so they are not abbreviations (the tests list every such flag from vLLM's parser).
_EXACT_FLAGS_PREFIXING_REFUSED = frozenset({"reasoning-parser"})


def _setting_hint(flag: str) -> str:
    field = next((f for f, fl in _FLAG_OF_FIELD.items() if fl == _LONG_ALIASES.get(flag, flag)), None)
    return f" (use the `{field}` setting)" if field else ""


def _is_negative_number(token: str) -> bool:
    return re.fullmatch(r"-\d+(\.\d+)?([eE][-+]?\d+)?", token) is not None


def _refusal_for_long(token: str) -> str | None:
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
        if flag in _REFUSED_LONG:
            return f"{token!r}: {flag} {_REFUSED_LONG[flag]}{_setting_hint(flag)}"
    # argparse accepts unambiguous prefixes (allow_abbrev is on in vLLM's parser).
    for cand in candidates:
        if cand in _EXACT_FLAGS_PREFIXING_REFUSED:
            continue
        hits = [n for n in _REFUSED_LONG_NAMES if n.startswith(cand)]
        if hits:
            return f"{token!r} abbreviates --{hits[0]}, which {_REFUSED_LONG['--' + hits[0]]}"
    return None


def _refusal_for_short(token: str) -> str | None:
    name = token.split("=", 1)[0]
    for alias, long_flag in SHORT_ALIASES.items():
        # `-t` is an argparse prefix of `-tp`; `-tp4` / `-qawq` attach the value to the alias.
        if alias.startswith(name) or name.startswith(alias):
            return f"{token!r} sets {long_flag} (alias {alias}), which is set by the engine settings{_setting_hint(long_flag)}"
    return None


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
        elif token.startswith("-") and token != "-" and not _is_negative_number(token):
            problem = _refusal_for_short(token)
        else:
            problem = None
            if index == 0:
                problem = f"extra args must start with a flag, got {token!r} (vLLM would read it as the model)"
        if problem:
            errors.append(problem)
    return errors


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
}


@dataclass(frozen=True)
class _Setting:
    env: str
    yaml: tuple[str, str]  # (section, key) in vllm_config.yaml
    field: str | None  # EngineSettings field, or None for values handled specially
    parse: Callable[[Any, str], Any]
    doc: str


def _text(value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{what} must be a string, got {value!r}")
    text = str(value).strip()
    if not text:
        raise ValueError(f"{what} must not be empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError(f"{what} must not contain control characters")
    return text


def _word(value: Any, what: str) -> str:
    text = _text(value, what)
    if any(c.isspace() for c in text):
        raise ValueError(f"{what} must not contain spaces, got {text!r}")
    return text


def _int(minimum: int, maximum: int | None = None) -> Callable[[Any, str], int]:
    def parse(value: Any, what: str) -> int:
        if isinstance(value, bool):
            raise ValueError(f"{what} must be an integer, got {value!r}")
        if isinstance(value, int):
            number = value
        elif isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            number = int(value)
        else:
            raise ValueError(f"{what} must be an integer, got {value!r}")
        if number < minimum or (maximum is not None and number > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise ValueError(f"{what} must be {bound}, got {number}")
        return number

    return parse


def _fraction(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number) or not 0 < number <= 1:
        raise ValueError(f"{what} must be in (0, 1], got {value!r}")
    return number


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{what} must be true or false, got {value!r}")


def _dtype(value: Any, what: str) -> str:
    text = _word(value, what).lower()
    if text not in DTYPES:
        raise ValueError(f"{what} must be one of {', '.join(DTYPES)}, got {value!r}")
    return text


def _quantization(value: Any, what: str) -> str:
    text = _word(value, what)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", text):
        raise ValueError(f"{what} must be a quantization method name like awq or fp8, got {value!r}")
    return text


def _host(value: Any, what: str) -> str:
    text = _word(value, what)
    if not re.fullmatch(r"[A-Za-z0-9.:\-\[\]]+", text):
        raise ValueError(f"{what} must be an IP address or host name, got {value!r}")
    return text


def _repo_id(value: Any, what: str) -> str:
    text = _word(value, what)
    if not _REPO_ID.fullmatch(text):
        raise ValueError(f"{what} must be a Hugging Face repo id like org/name or name, got {value!r}")
    # The hub refuses these too; "--" would also make two ids share one cache folder.
    for part in ("--", ".."):
        if part in text:
            raise ValueError(f"{what} {text!r} contains {part!r}, which Hugging Face repo ids may not")
    if text.endswith(".git") or len(text) > 96:
        raise ValueError(f"{what} {text!r} is not a Hugging Face repo id (at most 96 characters, "
                         "not ending in .git)")
    return text


def _extra_args(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            tokens = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"{what} is not a valid shell-quoted string: {exc}") from None
    elif isinstance(value, list) and all(isinstance(t, (str, int, float)) and not isinstance(t, bool) for t in value):
        tokens = [str(t) for t in value]
    else:
        raise ValueError(f"{what} must be a list of strings or a shell-quoted string, got {value!r}")
    return tuple(tokens)


SETTINGS_ENV: tuple[_Setting, ...] = (
    _Setting("MODEL_NAME", ("model", "name"), "model", _text, "model path or hub repo id passed as --model"),
    _Setting("MODEL_ID", ("model", "id"), None, _repo_id,
             "serve the downloaded copy of this hub repo from CACHE_DIR (instead of MODEL_NAME)"),
    _Setting("MODEL_CACHE_DIR", ("model", "cache_dir"), None, _text, "where the download job put MODEL_ID (default /models)"),
    _Setting("MODEL_REVISION", ("model", "revision"), "revision", _word, "hub branch, tag or commit"),
    _Setting("SERVED_MODEL_NAME", ("model", "served_name"), "served_model_name", _word, "name clients put in requests"),
    _Setting("TOKENIZER", ("model", "tokenizer"), "tokenizer", _text, "tokenizer path or repo id, if not the model's"),
    _Setting("DTYPE", ("model", "dtype"), "dtype", _dtype, "weights/activations dtype"),
    _Setting("MAX_MODEL_LEN", ("model", "max_model_len"), "max_model_len", _int(1), "prompt + completion tokens"),
    _Setting("MAX_INPUT_LENGTH", ("model", "max_input_length"), None, _int(1),
             "checked only: must be <= MAX_MODEL_LEN (vLLM has no such flag; it refuses longer prompts itself)"),
    _Setting("VLLM_HOST", ("server", "host"), "host", _host, "listen address"),
    _Setting("VLLM_PORT", ("server", "port"), "port", _int(1, 65535), "listen port"),
    _Setting("EXTRA_ARGS", ("server", "extra_args"), "extra_args", _extra_args, "more vLLM flags (owned ones refused)"),
    _Setting("TENSOR_PARALLEL_SIZE", ("parallelism", "tensor_parallel_size"), "tensor_parallel_size", _int(1), "GPUs per pipeline stage"),
    _Setting("PIPELINE_PARALLEL_SIZE", ("parallelism", "pipeline_parallel_size"), "pipeline_parallel_size", _int(1), "pipeline stages"),
    _Setting("GPU_MEMORY_UTILIZATION", ("memory", "gpu_memory_utilization"), "gpu_memory_utilization", _fraction, "share of GPU memory vLLM may use"),
    _Setting("MAX_NUM_BATCHED_TOKENS", ("memory", "max_num_batched_tokens"), "max_num_batched_tokens", _int(1), "tokens per scheduler step"),
    _Setting("MAX_NUM_SEQS", ("memory", "max_num_seqs"), "max_num_seqs", _int(1), "sequences per scheduler step"),
    _Setting("ENABLE_PREFIX_CACHING", ("memory", "enable_prefix_caching"), "enable_prefix_caching", _bool, "reuse KV cache of shared prefixes"),
    _Setting("ENABLE_CHUNKED_PREFILL", ("memory", "enable_chunked_prefill"), "enable_chunked_prefill", _bool, "split long prefills"),
    _Setting("QUANTIZATION", ("quantization", "method"), "quantization", _quantization, "quantization method (awq, gptq, fp8, ...)"),
    _Setting("TRUST_REMOTE_CODE", ("security", "trust_remote_code"), "trust_remote_code", _bool, "run Python code shipped with the model"),
    _Setting("DISABLE_LOG_STATS", ("monitoring", "disable_log_stats"), "disable_log_stats", _bool, "stop periodic stats logging (metrics stay)"),
)

_SETTING_BY_ENV = {s.env: s for s in SETTINGS_ENV}
_YAML_SECTIONS: dict[str, dict[str, _Setting]] = {}
for _s in SETTINGS_ENV:
    _YAML_SECTIONS.setdefault(_s.yaml[0], {})[_s.yaml[1]] = _s
# Sections present in the shipped YAML whose keys are documented but never mapped to vLLM flags.
_YAML_FORBIDDEN_KEYS = {
    ("security", "api_key"): "never put the API key in the config file: set VLLM_API_KEY from a Secret",
    ("security", "hf_token"): "never put the Hugging Face token in the config file: set HF_TOKEN from a Secret",
}

# Variables the image's scripts read that are not engine settings; allowed in the environment.
_OTHER_KNOWN_ENV = frozenset(
    {"VLLM_API_KEY", "VLLM_CONFIG", "VLLM_PYTHON", "VLLM_SERVER_MODULE", "SCIBOX_ENGINE_ARGS", "CACHE_DIR",
     "HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_HOME", "HEALTH_HOST", "HEALTH_PORT", "HEALTH_MODEL",
     "HEALTH_TIMEOUT"}
)

# org/name, or a bare name for the hub's legacy top-level models (gpt2, distilgpt2).
_REPO_ID = re.compile(r"([A-Za-z0-9][A-Za-z0-9._\-]*/)?[A-Za-z0-9][A-Za-z0-9._\-]*")

DEFAULT_MODEL_CACHE_DIR = "/models"
MODEL_CACHE_MARKER = ".scibox-download.json"
# Exit codes of images/vllm/download_model.sh; the operator reads them from the Job's pod.
DOWNLOAD_EXIT_CODES: dict[str, int] = {
    "ok": 0,
    "bad_config": 2,
    "not_found": 3,
    "unauthorized": 4,
    "disk_full": 5,
    "unreachable": 6,
    "failed": 7,
    "no_weights": 8,
}


def model_cache_path(cache_dir: str, repo_id: str, revision: str | None) -> str:
    """Stable folder of one downloaded repo revision: {cache_dir}/{org}--{name}/{revision}
    ({cache_dir}/{name}/{revision} for a bare name; repo ids never contain "--").

    The download Job writes there and the server loads from there, so both use this function.
    """
    _repo_id(repo_id, "model id")
    rev = _word(revision or "main", "model revision")
    safe_rev = re.sub(r"[^A-Za-z0-9._\-]", "-", rev.replace("/", "--"))
    if safe_rev in {".", ".."}:
        raise ValueError(f"model revision {rev!r} is not usable as a folder name")
    return os.path.join(cache_dir, repo_id.replace("/", "--"), safe_rev)


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
        elif name in _SETTING_BY_ENV:
            errors.append(f"env {name} cannot be set: it is an engine setting, use the resource's field for it")
    return errors


# --- settings from env + YAML ---------------------------------------------------------------------


def _near_miss(name: str) -> str | None:
    """Our variable that `name` most likely misspells, or None."""
    ours = list(_SETTING_BY_ENV)
    stripped = name.removeprefix("VLLM_").removeprefix("SCIBOX_")
    if stripped in _SETTING_BY_ENV and stripped != name:
        return stripped
    match = difflib.get_close_matches(stripped, ours, n=1, cutoff=0.85)
    return match[0] if match else None


def settings_from_env(
    env: Mapping[str, str],
    yaml_config: dict | None = None,
    *,
    vllm_env_names: Iterable[str] = (),
) -> EngineSettings:
    """Single-host settings from the YAML config (images/vllm/config/vllm_config.yaml) and env.

    The environment overrides the YAML; an empty environment value means "not set".  Raises
    SettingsError listing every problem: unknown YAML sections/keys, values of the wrong type or
    out of range, and environment variables that look like a misspelt setting (e.g.
    MAX_MODEL_LENGTH, VLLM_MAX_MODEL_LEN) or are VLLM_* names neither SciBox nor vLLM knows
    (pass vLLM's own names as `vllm_env_names`, from vllm.envs.environment_variables).
    """
    errors: list[str] = []
    raw: dict[str, tuple[Any, str]] = {}  # env name -> (value, where it came from)

    if yaml_config is not None:
        if not isinstance(yaml_config, dict):
            raise SettingsError(["the config file must be a mapping of sections (model:, server:, ...)"])
        for section, body in yaml_config.items():
            if section not in _YAML_SECTIONS:
                hint = difflib.get_close_matches(str(section), list(_YAML_SECTIONS), n=1)
                errors.append(
                    f"unknown config section {section!r}"
                    + (f" (did you mean {hint[0]!r}?)" if hint else f"; known: {', '.join(_YAML_SECTIONS)}")
                )
                continue
            if body is None:
                continue
            if not isinstance(body, dict):
                errors.append(f"config section {section!r} must be a mapping, got {body!r}")
                continue
            for key, value in body.items():
                if (section, key) in _YAML_FORBIDDEN_KEYS:
                    errors.append(f"config key {section}.{key}: {_YAML_FORBIDDEN_KEYS[(section, key)]}")
                    continue
                setting = _YAML_SECTIONS[section].get(key)
                if setting is None:
                    hint = difflib.get_close_matches(str(key), list(_YAML_SECTIONS[section]), n=1)
                    errors.append(
                        f"unknown config key {section}.{key}"
                        + (f" (did you mean {section}.{hint[0]}?)" if hint else
                           f"; known in {section}: {', '.join(_YAML_SECTIONS[section])}")
                    )
                    continue
                if value is not None:
                    raw[setting.env] = (value, f"config key {section}.{key}")

    vllm_known = frozenset(vllm_env_names)
    for name, value in env.items():
        if name in _SETTING_BY_ENV:
            if value is not None and str(value).strip() != "":
                raw[name] = (value, f"env {name}")
            continue
        if name in _OTHER_KNOWN_ENV or name in vllm_known:
            continue
        guess = _near_miss(name)
        if guess:
            errors.append(f"unknown setting env {name} (did you mean {guess}?)")
        elif name.startswith("VLLM_") and vllm_known:
            errors.append(f"unknown env {name}: neither a SciBox setting nor a vLLM environment variable")

    # MODEL_NAME and MODEL_ID are two ways to say the same thing: the environment's choice beats the
    # file's (e.g. MODEL_ID in env over the shipped model.name); both in one layer is an error below.
    if "MODEL_NAME" in raw and "MODEL_ID" in raw:
        from_env = {n: raw[n][1].startswith("env ") for n in ("MODEL_NAME", "MODEL_ID")}
        if from_env["MODEL_NAME"] != from_env["MODEL_ID"]:
            del raw["MODEL_ID" if from_env["MODEL_NAME"] else "MODEL_NAME"]

    values: dict[str, Any] = {}
    for name, (value, where) in raw.items():
        setting = _SETTING_BY_ENV[name]
        try:
            values[name] = setting.parse(value, where)
        except ValueError as exc:
            if name in ("VLLM_PORT", "VLLM_HOST") and re.match(r"(tcp|udp)://", str(value)):
                exc = ValueError(f"{where} is {value!r}: Kubernetes injected it for a Service named 'vllm'; "
                                 "set enableServiceLinks: false on the pod or rename that Service")
            errors.append(str(exc))

    fields: dict[str, Any] = {s.field: values[s.env] for s in SETTINGS_ENV if s.field and s.env in values}

    if "MODEL_ID" in values:
        if "MODEL_NAME" in values:
            errors.append("set MODEL_NAME (a path or repo id to load) or MODEL_ID (a downloaded repo), not both")
        else:
            cache_dir = values.get("MODEL_CACHE_DIR") or env.get("CACHE_DIR") or DEFAULT_MODEL_CACHE_DIR
            try:
                fields["model"] = model_cache_path(cache_dir, values["MODEL_ID"], values.get("MODEL_REVISION"))
            except ValueError as exc:
                errors.append(str(exc))
            # The revision picked the downloaded folder; --revision would make vLLM ask the hub.
            fields.pop("revision", None)
            fields.setdefault("served_model_name", values["MODEL_ID"])
    elif "model" not in fields and not errors:
        errors.append("no model: set MODEL_NAME (path or hub repo id) or MODEL_ID (downloaded repo), "
                      "or model.name in the config file")

    max_input = values.get("MAX_INPUT_LENGTH")
    if max_input is not None:
        max_len = values.get("MAX_MODEL_LEN")
        if max_len is None:
            errors.append("MAX_INPUT_LENGTH needs MAX_MODEL_LEN: vLLM limits prompt + completion to MAX_MODEL_LEN")
        elif max_input > max_len:
            errors.append(f"MAX_INPUT_LENGTH ({max_input}) must be <= MAX_MODEL_LEN ({max_len})")

    if errors:
        raise SettingsError(errors)
    settings = EngineSettings(**fields)
    problems = validate_settings(settings)
    if problems:
        raise SettingsError(problems)
    return settings


# --- rendering --------------------------------------------------------------------------------------


def validate_settings(s: EngineSettings) -> list[str]:
    """Problems with an EngineSettings built by code (the operator) rather than from env."""
    checks: list[tuple[str, Any, Callable[[Any, str], Any]]] = [
        ("model", s.model, _text),
        ("host", s.host, _host),
        ("port", s.port, _int(1, 65535)),
        ("tensor_parallel_size", s.tensor_parallel_size, _int(1)),
        ("pipeline_parallel_size", s.pipeline_parallel_size, _int(1)),
    ]
    optional: list[tuple[str, Any, Callable[[Any, str], Any]]] = [
        ("served_model_name", s.served_model_name, _word),
        ("max_model_len", s.max_model_len, _int(1)),
        ("gpu_memory_utilization", s.gpu_memory_utilization, _fraction),
        ("max_num_batched_tokens", s.max_num_batched_tokens, _int(1)),
        ("max_num_seqs", s.max_num_seqs, _int(1)),
        ("enable_prefix_caching", s.enable_prefix_caching, _bool),
        ("enable_chunked_prefill", s.enable_chunked_prefill, _bool),
        ("dtype", s.dtype, _dtype),
        ("quantization", s.quantization, _quantization),
        ("tokenizer", s.tokenizer, _text),
        ("revision", s.revision, _word),
    ]
    errors = []
    for name, value, check in checks + [c for c in optional if c[1] is not None]:
        try:
            parsed = check(value, name)
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
    for field in ("dtype", "quantization", "tokenizer", "revision"):
        value = getattr(s, field)
        if value is not None:
            args.append(f"{_FLAG_OF_FIELD[field]}={value}")
    if s.disable_log_stats:
        args.append("--disable-log-stats")
    args += list(s.extra_args)
    return args


def settings_as_dict(s: EngineSettings) -> dict[str, Any]:
    data = dataclasses.asdict(s)
    data["extra_args"] = list(s.extra_args)
    return data


# --- command line (used by start.sh and health_check.sh inside the image) ---------------------------


def _load_yaml(path: str) -> dict | None:
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise SettingsError([f"config file {path} does not exist"]) from None
    except OSError as exc:
        raise SettingsError([f"cannot read config file {path}: {exc.strerror}"]) from None
    if path.endswith(".json"):
        loaded = json.loads(text)
    else:
        try:
            import yaml  # the vLLM image and the venv have PyYAML; this module stays importable without it
        except ImportError:
            raise SettingsError([f"reading {path} needs PyYAML (pip install pyyaml)"]) from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SettingsError([f"config file {path} is not valid YAML: {exc}"]) from None
    return loaded or {}


def _vllm_env_names(env: Mapping[str, str]) -> frozenset[str]:
    """vLLM's own environment variable names, imported only when some unknown VLLM_* is set."""
    if not any(n.startswith("VLLM_") and n not in _SETTING_BY_ENV and n not in _OTHER_KNOWN_ENV for n in env):
        return frozenset()
    try:
        import vllm.envs  # heavy (imports torch): only paid when needed

        return frozenset(vllm.envs.environment_variables)
    except Exception:  # noqa: BLE001 - without vLLM we cannot tell its variables from typos
        return frozenset()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        description="Build vLLM's argv from vllm_config.yaml and the environment (SciBox).")
    parser.add_argument("--config", default=os.environ.get("VLLM_CONFIG", ""),
                        help="YAML (or .json) settings file; the environment overrides it")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--print-args", action="store_true", help="print the argv, one NUL-terminated token each")
    out.add_argument("--print-json", action="store_true", help="print the argv as a JSON list")
    out.add_argument("--print-settings", action="store_true", help="print the resolved settings as JSON")
    out.add_argument("--print-probe", action="store_true",
                     help="print host, port and served model name on three lines (for health checks)")
    opts = parser.parse_args(argv)

    env = dict(os.environ)
    try:
        # Only the start path pays for importing vLLM to tell its variables from typos; probes stay fast.
        starting = not (opts.print_probe or opts.print_settings)
        vllm_names = _vllm_env_names(env) if starting else frozenset()
        settings = settings_from_env(env, _load_yaml(opts.config), vllm_env_names=vllm_names)
        args = render_vllm_args(settings)
    except SettingsError as exc:
        for message in exc.errors:
            print(f"engine settings error: {message}", file=sys.stderr)
        return 2
    except (ValueError, json.JSONDecodeError) as exc:
        print(f"engine settings error: {exc}", file=sys.stderr)
        return 2

    if opts.print_settings:
        print(json.dumps(settings_as_dict(settings), indent=2, sort_keys=True))
    elif opts.print_probe:
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "[::]") else settings.host
        print(host)
        print(settings.port)
        print(settings.served_model_name or settings.model)
    elif opts.print_json:
        print(json.dumps(args))
    else:
        sys.stdout.write("".join(token + "\0" for token in args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
