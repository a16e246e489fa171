"""Typed, validated reads from a config.json dict: every bad value is a PlanError."""

from __future__ import annotations

from typing import Any

from .errors import PlanError

_MISSING = object()


class ConfigReader:
    """Typed, validated reads from a config dict; every failure is a PlanError."""

    def __init__(self, data: dict, where: str = "config") -> None:
        self.data = data
        self.where = where

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def int(self, *keys: str, default: Any = _MISSING, minimum: int = 1) -> int:
        for key in keys:
            if key in self.data and self.data[key] is not None:
                return self._check_int(key, self.data[key], minimum)
        if default is _MISSING:
            raise PlanError("InvalidModelConfig",
                            f"{self.where} lacks {' or '.join(keys)}")
        return default

    def opt_int(self, key: str, default: Any = None, minimum: int = 1) -> int | None:
        """An integer that may be explicitly null (null means 'off', e.g. q_lora_rank)."""
        if key not in self.data:
            return default
        value = self.data[key]
        return None if value is None else self._check_int(key, value, minimum)

    def bool(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise PlanError("InvalidModelConfig", f"{self.where}.{key} must be true or false, got {value!r}")
        return value

    def int_list(self, key: str) -> list[int]:
        value = self.data.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise PlanError("InvalidModelConfig", f"{self.where}.{key} must be a list of integers")
        return value

    def _check_int(self, key: str, value: Any, minimum: int) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise PlanError("InvalidModelConfig", f"{self.where}.{key} must be an integer, got {value!r}")
        if value < minimum:
            raise PlanError("InvalidModelConfig", f"{self.where}.{key} must be >= {minimum}, got {value}")
        return value
