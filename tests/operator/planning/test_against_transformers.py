"""The planner's parameter count against transformers' own model classes.

Each fixture config is instantiated with AutoModelForCausalLM.from_config under torch's
meta device: the real module tree, no memory for weights. The planner (pure Python, no
torch) must agree within 1 %. Quantization configs are dropped for the instantiation:
they change storage, not the parameter count, and their quantizers want a GPU.
"""

from __future__ import annotations

import pytest

from .conftest import load_config, load_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def _meta_parameter_count(config: dict) -> int:
    values = {k: v for k, v in config.items() if k not in ("quantization_config", "_name_or_path", "model_type")}
    hf_config = transformers.AutoConfig.for_model(config["model_type"], **values)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_config)
    # parameters() yields a tied embedding/LM-head matrix once, as the checkpoint stores it.
    return sum(p.numel() for p in model.parameters())


def test_parameter_count_agrees_with_transformers(config_name):
    config = load_config(config_name)
    ours = load_model(config_name).total_params
    theirs = _meta_parameter_count(config)
    assert ours == pytest.approx(theirs, rel=0.01)
    # In practice the counts are exact; DeepSeek-V3's router score-correction bias is the
    # one difference (a checkpoint tensor vLLM loads, a buffer in transformers).
    assert abs(ours - theirs) <= 256 * 61
