"""Model facts from a Hugging Face `config.json` (and its safetensors index).

Identifies the model type, rejects what the planner cannot count or a garbled config,
and hands the config to its family (`families/`) for the parameter count.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .errors import PlanError
from .facts import ModelFacts
from .families.registry import ARCH_TO_TYPE, SUPPORTED_MODEL_TYPES, TYPE_TO_ARCH, family_facts
from .safetensors_index import weights_from_index


def model_facts_from_config(config: dict, safetensors_index: dict | None = None, *,
                            name: str | None = None) -> ModelFacts:
    """Facts of a Hugging Face model from its config.json (and safetensors index).

    `name` (e.g. the Hugging Face repo id) is what plan reasons call the model; without
    it the config's `_name_or_path`, else its architecture, is used.

    Raises PlanError(UnsupportedArchitecture) for a family the planner cannot count and
    PlanError(InvalidModelConfig) for a config that is not a usable model description.
    """
    if not isinstance(config, dict):
        raise PlanError("InvalidModelConfig", "config.json must hold a JSON object")
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list):
        raise PlanError("InvalidModelConfig", "config.architectures must be a list")
    architecture = str(architectures[0]) if architectures else None
    if not model_type and architecture:
        model_type = ARCH_TO_TYPE.get(architecture)
    if not isinstance(model_type, str) or not model_type:
        raise PlanError("InvalidModelConfig", "config.json has neither model_type nor a known architecture")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise PlanError(
            "UnsupportedArchitecture",
            f"model type {model_type!r} ({architecture or 'no architecture'}) is not supported by "
            f"the planner; supported: {', '.join(SUPPORTED_MODEL_TYPES)}",
        )
    architecture = architecture or TYPE_TO_ARCH[model_type]
    _check_plausible_depth(config)

    facts = family_facts(config, model_type, architecture)

    if not name:
        name = config.get("_name_or_path")
    changes: dict[str, Any] = {"name": name if isinstance(name, str) and name else None}
    if safetensors_index is not None:
        changes["safetensors_weight_bytes"] = weights_from_index(facts, safetensors_index)
    return replace(facts, **changes)


# No served model has more than a few hundred layers; a bigger number is a garbled config
# (and would make the pipeline search needlessly long).
MAX_LAYERS = 1024


def _check_plausible_depth(config: dict) -> None:
    for scope in (config, config.get("text_config")):
        if not isinstance(scope, dict):
            continue
        for key in ("num_hidden_layers", "n_layer"):
            value = scope.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > MAX_LAYERS:
                raise PlanError("InvalidModelConfig", f"{key} {value} is implausible (more than {MAX_LAYERS})")
