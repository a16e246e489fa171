"""The cluster administrator's policy: which hubs, images and code paths a VLLMDeployment may use.

A tenant who may create VLLMDeployments must not be able to make the operator act for them with
the operator's own rights (a confused deputy): send a hub token it read from a Secret to a URL
the tenant picked, or run code in the server pod past `forbidTrustRemoteCode`. So these choices
belong to the administrator, are read once at start-up (`AdminPolicy.from_settings`) and are
checked by one pure function (`policy_violation`) before anything is read, requested or rendered
for an object.

Settings (environment, chart values `security.*`):
  SCIBOX_ALLOWED_HUB_ENDPOINTS   comma-separated scheme://host[:port]; unset: only SCIBOX_HUB_ENDPOINT
  SCIBOX_ALLOWED_IMAGE_PREFIXES  comma-separated image prefixes; unset or empty: any image
  SCIBOX_FORBID_TRUST_REMOTE_CODE (read by controller.Settings) also refuses CODE_LOADING_ENV
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from scibox_operator.api.spec import VLLMDeployment

ALLOWED_HUB_ENDPOINTS_ENV = "SCIBOX_ALLOWED_HUB_ENDPOINTS"
ALLOWED_IMAGE_PREFIXES_ENV = "SCIBOX_ALLOWED_IMAGE_PREFIXES"

ENDPOINT_NOT_ALLOWED = "EndpointNotAllowed"
TRUST_REMOTE_CODE_FORBIDDEN = "TrustRemoteCodeForbidden"
CODE_LOADING_ENV_FORBIDDEN = "CodeLoadingEnvForbidden"
IMAGE_NOT_ALLOWED = "ImageNotAllowed"

# Environment variables that make a process load code chosen by whoever sets them: with
# trustRemoteCode forbidden, a repo's `sitecustomize.py` (the downloader fetches root-level
# *.py files) must not become importable through them. The one list; tests/security pins it.
CODE_LOADING_ENV: dict[str, str] = {
    # CPython start-up: module search path, an interactive start-up file, the stdlib itself,
    # the user site directory (sitecustomize/usercustomize), an inspect hook, bytecode caches,
    # a callable imported by name on breakpoint(), a warning category imported by name.
    "PYTHONPATH": "adds directories to Python's import path",
    "PYTHONSTARTUP": "runs a Python file at interpreter start",
    "PYTHONHOME": "replaces Python's standard library",
    "PYTHONUSERBASE": "moves the user site directory (sitecustomize, .pth files)",
    "PYTHONINSPECT": "keeps an interactive interpreter open after the program",
    "PYTHONPYCACHEPREFIX": "loads compiled bytecode from another directory",
    "PYTHONPLATLIBDIR": "changes where Python's platform libraries are imported from",
    "PYTHONEXECUTABLE": "changes the interpreter path Python reports to child processes",
    "PYTHONBREAKPOINT": "imports a callable by name",
    "PYTHONWARNINGS": "can import a warning category module by name",
    # Other interpreters and shells the images run (start.sh is a shell script).
    "BASH_ENV": "a file every non-interactive bash sources",
    "ENV": "a file sh sources at start",
    "PERL5LIB": "adds directories to Perl's module path",
    "PERL5OPT": "adds Perl command-line options (-M loads a module)",
    "NODE_OPTIONS": "adds Node.js options (--require loads a module)",
    # glibc: iconv modules are shared objects loaded by path.
    "GCONV_PATH": "loads iconv shared objects from another directory",
    # Caches from which compiled code is loaded and run (Python modules, shared objects).
    "HF_MODULES_CACHE": "transformers adds it to Python's import path",
    "TORCHINDUCTOR_CACHE_DIR": "torch.compile loads generated Python modules from it",
    "TRITON_CACHE_DIR": "Triton loads compiled kernels (shared objects) from it",
    "VLLM_CACHE_ROOT": "vLLM loads its torch.compile artifacts from it",
}
# Every variable of the dynamic loader (LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT, ...) chooses
# which shared objects a process maps, so the whole family is refused.
CODE_LOADING_ENV_PREFIXES: dict[str, str] = {
    "LD_": "the dynamic loader's variables choose which shared objects a process loads",
}

_DEFAULT_PORTS = {"http": 80, "https": 443}
# A host name or an IPv6 literal, an optional port: nothing a second URL parser (curl, requests,
# huggingface_hub in the download Job) could read as another host.
_NETLOC = re.compile(r"^(?P<host>[a-z0-9]([a-z0-9.-]*[a-z0-9])?|\[[0-9a-f:.]+\])(:(?P<port>[0-9]{1,5}))?$")
_SAFE_PATH = re.compile(r"^(/[A-Za-z0-9._~-]+)*/?$")
_SHOWN = 120


class PolicyError(ValueError):
    """The administrator's settings are unusable: the operator refuses to start with them."""


Origin = tuple[str, str, int]  # (scheme, host, port)


def endpoint_origin(url: str) -> Origin | None:
    """(scheme, host, port) of a hub URL, or None when the URL is anything but a plain
    http(s)://host[:port][/path]: no user info, query, fragment, escapes or odd characters,
    so that every client the operator and its Jobs use agrees on where it goes."""
    if not url.isascii() or any(ch.isspace() or ord(ch) < 0x20 or ch in "\\@?#%" for ch in url):
        return None
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    netloc = _NETLOC.fullmatch(parts.netloc.lower())
    if scheme not in _DEFAULT_PORTS or netloc is None or not _SAFE_PATH.fullmatch(parts.path):
        return None
    port = int(netloc["port"]) if netloc["port"] else _DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        return None
    return scheme, netloc["host"], port


def _allowed_origin(entry: str) -> Origin:
    origin = endpoint_origin(entry)
    if origin is None or urlsplit(entry).path not in ("", "/"):
        raise PolicyError(f"{ALLOWED_HUB_ENDPOINTS_ENV}: {entry!r} is not scheme://host[:port] (http or https, "
                          "no path, user info, query or fragment)")
    return origin


def _qualified_image(ref: str) -> str:
    """An image reference with its registry written out, as the container runtime resolves it:
    `vllm/vllm-openai` is `docker.io/vllm/vllm-openai`, `ubuntu` is `docker.io/library/ubuntu`."""
    first, slash, _ = ref.partition("/")
    if not slash:
        return f"docker.io/library/{ref}"
    if "." in first or ":" in first or first == "localhost":
        return ref
    return f"docker.io/{ref}"


def _qualified_prefix(prefix: str) -> str:
    # A prefix without '/' names a registry (`registry.local`), not an image of docker.io.
    return prefix if "/" not in prefix else _qualified_image(prefix)


def image_allowed(image: str, prefixes: tuple[str, ...]) -> bool:
    """Whether `image` starts with one of `prefixes` at a boundary: `ghcr.io/scibox` admits
    `ghcr.io/scibox/vllm:1` but not `ghcr.io/scibox-evil/vllm` nor `ghcr.io.evil.com/...`; a
    registry prefix (`registry.local`) admits neither another port nor another host."""
    if not prefixes:
        return True
    ref = _qualified_image(image)
    for prefix in prefixes:
        if ref == prefix:
            return True
        if not ref.startswith(prefix):
            continue
        boundary = "/:@" if "/" in prefix else "/"
        if prefix[-1] in boundary or ref[len(prefix)] in boundary:
            return True
    return False


def _split_list(raw: str | None) -> list[str]:
    return [part.strip() for part in re.split(r"[,\s]+", raw or "") if part.strip()]


def _shown(text: str) -> str:
    return repr(text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "...")


@dataclass(frozen=True)
class AdminPolicy:
    """What the administrator allows. Built once at start-up; never changed by a VLLMDeployment."""

    hub_origins: frozenset[Origin]
    hub_endpoints: tuple[str, ...]  # as the administrator wrote them, for messages
    image_prefixes: tuple[str, ...] = ()
    forbid_trust_remote_code: bool = False

    @classmethod
    def build(cls, *, default_hub_endpoint: str, default_image: str, allowed_hub_endpoints: list[str] | None,
              image_prefixes: list[str], forbid_trust_remote_code: bool) -> AdminPolicy:
        """Raises PolicyError when the operator's own defaults would break the policy: an
        operator that refused every model for its own default hub or image must not start."""
        endpoints = list(allowed_hub_endpoints) if allowed_hub_endpoints else [default_hub_endpoint]
        origins = frozenset(_allowed_origin(e) for e in endpoints)
        default = endpoint_origin(default_hub_endpoint)
        if default is None or default not in origins:
            raise PolicyError(f"the default hub endpoint SCIBOX_HUB_ENDPOINT={default_hub_endpoint!r} is not in "
                              f"{ALLOWED_HUB_ENDPOINTS_ENV} ({', '.join(endpoints)})")
        prefixes = tuple(_qualified_prefix(p) for p in image_prefixes)
        if prefixes and not image_allowed(default_image, prefixes):
            raise PolicyError(f"the default vLLM image SCIBOX_VLLM_IMAGE={default_image!r} does not match "
                              f"{ALLOWED_IMAGE_PREFIXES_ENV} ({', '.join(image_prefixes)})")
        return cls(origins, tuple(e.rstrip("/") for e in endpoints), prefixes, forbid_trust_remote_code)

    @classmethod
    def from_settings(cls, settings: Any, env: Mapping[str, str] | None = None) -> AdminPolicy:
        """`settings` is the controller's Settings (hub_endpoint, vllm_image,
        forbid_trust_remote_code: their one home); the allowlists come from the environment."""
        env = os.environ if env is None else env
        return cls.build(default_hub_endpoint=settings.hub_endpoint, default_image=settings.vllm_image,
                         allowed_hub_endpoints=_split_list(env.get(ALLOWED_HUB_ENDPOINTS_ENV)),
                         image_prefixes=_split_list(env.get(ALLOWED_IMAGE_PREFIXES_ENV)),
                         forbid_trust_remote_code=bool(settings.forbid_trust_remote_code))

    def endpoint_allowed(self, url: str) -> bool:
        return endpoint_origin(url) in self.hub_origins


def code_loading_reason(name: str) -> str | None:
    """Why setting env `name` loads code chosen by its value, or None."""
    if name in CODE_LOADING_ENV:
        return CODE_LOADING_ENV[name]
    return next((why for prefix, why in CODE_LOADING_ENV_PREFIXES.items() if name.startswith(prefix)), None)


def policy_violation(vd: VLLMDeployment, policy: AdminPolicy) -> tuple[str, str] | None:
    """(reason, message) of the first thing in `vd` the administrator does not allow, or None.
    Pure: called before any Secret is read, any hub request made or any child rendered."""
    spec = vd.spec
    endpoint = spec.cache.endpoint
    if endpoint is not None and not policy.endpoint_allowed(endpoint):
        return ENDPOINT_NOT_ALLOWED, (
            f"cache.endpoint {_shown(endpoint)} is not a hub endpoint this cluster's administrator allows "
            f"(allowed: {', '.join(policy.hub_endpoints)}); nothing is requested from it and no token is sent")
    if policy.forbid_trust_remote_code:
        if spec.model.trust_remote_code:
            return TRUST_REMOTE_CODE_FORBIDDEN, "this cluster's administrator forbids model.trustRemoteCode=true"
        loading = [(e.name, code_loading_reason(e.name)) for e in spec.engine.env if code_loading_reason(e.name)]
        if loading:
            name, why = loading[0]
            names = ", ".join(n for n, _ in loading)
            return CODE_LOADING_ENV_FORBIDDEN, (
                f"engine.env {names}: {name} {why}; this cluster's administrator forbids remote code "
                "(as with model.trustRemoteCode)")
    for field, image in (("image", spec.image), ("cache.downloadImage", spec.cache.download_image)):
        if image is not None and not image_allowed(image, policy.image_prefixes):
            return IMAGE_NOT_ALLOWED, (
                f"{field} {_shown(image)} is not from a registry or repository this cluster's administrator "
                f"allows (allowed prefixes: {', '.join(policy.image_prefixes)})")
    return None
