"""images/vllm/settings.py, the image's settings loader (a script, not a package module), loaded
once for the tests the way start.sh runs it: it finds scibox_operator.engine by itself."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PATH = Path(__file__).resolve().parents[2] / "images" / "vllm" / "settings.py"
_NAME = "scibox_image_settings"


def _load():
    if _NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(_NAME, PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = module  # registered first, as an import would (dataclasses look it up)
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[_NAME]
            raise
    return sys.modules[_NAME]


settings = _load()
