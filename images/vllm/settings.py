"""The vLLM image's settings loader and command line: vLLM's argv from vllm_config.yaml and the
environment, with the operator's own argument contract (scibox_operator.engine).

start.sh runs `python3 settings.py --config $VLLM_CONFIG --print-args` and health_check.sh
`... --print-probe`; the operator never runs this file.  It needs no operator dependencies: the
image copies scibox_operator/engine/ (stdlib only) next to it (images/vllm/Dockerfile); in the
repository the package is found under operator/.  PyYAML is imported lazily, and only to read a
YAML file (the vLLM image has it).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# In the image scibox_operator/engine/ sits next to this file; in the repo it is the operator package.
for _candidate in (HERE, HERE.parent.parent / "operator"):
    if (_candidate / "scibox_operator" / "engine" / "vllm_args.py").is_file():
        sys.path.insert(0, str(_candidate))
        break

from scibox_operator.engine.cache_layout import DEFAULT_MODEL_CACHE_DIR, model_cache_path  # noqa: E402
from scibox_operator.engine.vllm_args import (  # noqa: E402
    SETTING_BY_ENV,
    SETTINGS_ENV,
    EngineSettings,
    Setting,
    SettingsError,
    render_vllm_args,
    validate_settings,
)

__all__ = ["settings_from_env", "settings_as_dict", "main"]

_YAML_SECTIONS: dict[str, dict[str, Setting]] = {}
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


# --- settings from env + YAML ---------------------------------------------------------------------


def _near_miss(name: str) -> str | None:
    """Our variable that `name` most likely misspells, or None."""
    ours = list(SETTING_BY_ENV)
    stripped = name.removeprefix("VLLM_").removeprefix("SCIBOX_")
    if stripped in SETTING_BY_ENV and stripped != name:
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
        if name in SETTING_BY_ENV:
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
        setting = SETTING_BY_ENV[name]
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
    if not any(n.startswith("VLLM_") and n not in SETTING_BY_ENV and n not in _OTHER_KNOWN_ENV for n in env):
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
