"""Real public model configs (tests/operator/planning/configs/*.json) as fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scibox_operator.planning import model_facts_from_config

CONFIG_DIR = Path(__file__).parent / "configs"
CONFIG_NAMES = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_config(name: str) -> dict:
    """A fixture config by file stem ("meta-llama--Llama-3.1-8B-Instruct") or model id."""
    return json.loads((CONFIG_DIR / f"{name.replace('/', '--')}.json").read_text())


def load_model(name: str):
    return model_facts_from_config(load_config(name))


@pytest.fixture(params=CONFIG_NAMES)
def config_name(request) -> str:
    return request.param
