"""metav1.Condition dicts as the operator writes them in status (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

# metav1.Condition limits (apimachinery validation): the message is capped at 32768 characters.
_MAX_CONDITION_MESSAGE = 32768


def _rfc3339(now: datetime) -> str:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (e.g. datetime.now(timezone.utc))")
    return now.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_condition(
    type_: str,
    status: str,
    reason: str,
    message: str,
    *,
    now: datetime,
    previous: Mapping[str, Any] | None = None,
    observed_generation: int | None = None,
) -> dict[str, Any]:
    """Build a metav1.Condition dict; lastTransitionTime is kept from `previous` if status held."""
    if status not in ("True", "False", "Unknown"):
        raise ValueError(f"condition status must be 'True', 'False' or 'Unknown', got {status!r}")
    if not reason:
        raise ValueError("condition reason must not be empty")
    if previous is not None and previous.get("status") == status and previous.get("lastTransitionTime"):
        transition = str(previous["lastTransitionTime"])
    else:
        transition = _rfc3339(now)
    if len(message) > _MAX_CONDITION_MESSAGE:
        message = message[: _MAX_CONDITION_MESSAGE - 3] + "..."
    condition: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition,
    }
    if observed_generation is not None:
        condition["observedGeneration"] = observed_generation
    return condition
