"""The model cache layout shared by the download Job and the server: where a downloaded repo
revision lives, the completion marker, the download script's exit codes and its JSON report.

images/vllm/download_model.py writes this layout and the operator (and images/vllm/settings.py)
read it, so both sides use this module.  Stdlib only: the vLLM image copies this package.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from . import values as check

__all__ = [
    "DEFAULT_MODEL_CACHE_DIR",
    "MODEL_CACHE_MARKER",
    "DOWNLOAD_EXIT_CODES",
    "model_cache_path",
    "parse_download_report",
    "pod_download_report",
]

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
    # a LoRA adapter that cannot serve on its base: files missing, rank over the limit, shapes
    # or modules the base model does not have
    "bad_adapter": 9,
}


def model_cache_path(cache_dir: str, repo_id: str, revision: str | None) -> str:
    """Stable folder of one downloaded repo revision: {cache_dir}/{org}--{name}/{revision}
    ({cache_dir}/{name}/{revision} for a bare name; repo ids never contain "--").

    The download Job writes there and the server loads from there, so both use this function.
    """
    check.repo_id(repo_id, "model id")
    rev = check.word(revision or "main", "model revision")
    safe_rev = re.sub(r"[^A-Za-z0-9._\-]", "-", rev.replace("/", "--"))
    if safe_rev in {".", ".."}:
        raise ValueError(f"model revision {rev!r} is not usable as a folder name")
    return os.path.join(cache_dir, repo_id.replace("/", "--"), safe_rev)


def parse_download_report(message: str | None) -> dict[str, Any] | None:
    """The JSON report download_model.py leaves as its container's termination message, or None.

    The report is one JSON object on the message's last line: on success the summary
    (`bytes`, `downloaded_bytes`, `file_count`, `duration_seconds`, `cached`, ...), on failure
    {"error": kind, "message": ..., "exit_code": n}.  The last line, because the pods use
    terminationMessagePolicy FallbackToLogsOnError: a failure that wrote no report leaves the log
    tail there instead.
    """
    lines = (message or "").strip().splitlines()
    if not lines:
        return None
    try:
        report = json.loads(lines[-1])
    except ValueError:
        return None
    return report if isinstance(report, dict) else None


def pod_download_report(pod: Any) -> dict[str, Any] | None:
    """The JSON line download_model.sh leaves in its terminated container's message, if any."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated") or {}
        message = (terminated.get("message") or "").strip()
        if not message:
            continue
        return parse_download_report(message)
    return None
