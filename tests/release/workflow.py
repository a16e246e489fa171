"""Reading .github/workflows/release.yml the way GitHub evaluates the parts we rely on: which
images each job pushes, with `${{ needs.<job>.outputs.<key> }}` followed back to the step that
computed it (release.py's `github-output`, whose values we can compute here too)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from scibox_operator import release

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
RELEASE_WORKFLOW = WORKFLOWS / "release.yml"
EXPRESSION = re.compile(r"^\$\{\{\s*([\w.-]+)\s*\}\}$")


def load(path: Path = RELEASE_WORKFLOW) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    # YAML 1.1 (PyYAML) reads the key `on` as the boolean True.
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def _step_output(job: dict, step_id: str, key: str) -> str:
    step = next((s for s in job.get("steps", []) if s.get("id") == step_id), None)
    if step is None:
        raise LookupError(f"no step with id {step_id!r}")
    if "release.py github-output" not in step.get("run", ""):
        raise LookupError(f"step {step_id!r} does not print release.py's names: {step.get('run')!r}")
    outputs = release.github_outputs()
    if key not in outputs:
        raise LookupError(f"release.py github-output prints no {key!r}")
    return outputs[key]


def resolve(workflow: dict, job_id: str, value: str) -> str:
    """A literal, or one `${{ needs.X.outputs.Y }}` / `${{ steps.X.outputs.Y }}` reference."""
    match = EXPRESSION.match(value.strip())
    if not match:
        if "${{" in value:
            raise LookupError(f"cannot evaluate {value!r}")
        return value.strip()
    parts = match.group(1).split(".")
    job = workflow["jobs"][job_id]
    if len(parts) == 4 and parts[0] == "needs" and parts[2] == "outputs":
        needed = job.get("needs", [])
        needed = [needed] if isinstance(needed, str) else needed
        if parts[1] not in needed:
            raise LookupError(f"job {job_id} reads needs.{parts[1]} without needing it")
        return resolve(workflow, parts[1], workflow["jobs"][parts[1]]["outputs"][parts[3]])
    if len(parts) == 4 and parts[0] == "steps" and parts[2] == "outputs":
        return _step_output(job, parts[1], parts[3])
    raise LookupError(f"cannot evaluate {value!r}")


def pushed_images(workflow: dict) -> dict[str, tuple[str, str]]:
    """image -> (job, Dockerfile) for every docker/build-push-action step that pushes."""
    out: dict[str, tuple[str, str]] = {}
    for job_id, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            if not str(step.get("uses", "")).startswith("docker/build-push-action@"):
                continue
            with_ = step.get("with", {})
            if with_.get("push") is not True:
                continue
            for tag in re.split(r"[,\n]", str(with_["tags"])):
                if tag.strip():
                    out[resolve(workflow, job_id, tag)] = (job_id, with_["file"])
    return out
