"""Model-cache downloader run by the operator's download Job (through download_model.sh).

Fetches one hub repo revision into {CACHE_DIR}/{org}--{name}/{revision} (cache_layout.model_cache_path,
the same function the server side uses to find it), and only what vLLM loads:
  * config/tokenizer files at the repo root: *.json, tokenizer.model, *.tiktoken, *.txt, *.jinja, *.py
  * weights at the repo root: *.safetensors (only the shards the index names, when there is an index);
    *.bin / *.pt only when the repo has no safetensors.  Never .gguf/.msgpack/.h5 or subfolders
    such as original/ (duplicates vLLM would not read).

A second repo, TOKENIZER_ID at TOKENIZER_REVISION (default main), is fetched after the model when set
(the spec's model.tokenizer names a hub repo): its config/tokenizer files only, no weights, into its
own folder by the same layout, so the server (offline) loads it with --tokenizer=<that folder>.

Environment: MODEL_ID (required, org/name or a bare legacy name like gpt2), MODEL_REVISION (default main),
TOKENIZER_ID, TOKENIZER_REVISION, CACHE_DIR (default /models), HF_TOKEN (gated/private repos; never printed), HF_ENDPOINT (mirror), DOWNLOAD_MAX_WORKERS
(default 4), TERMINATION_LOG (default /dev/termination-log, used when it exists and is writable).

LoRA adapters (the operator's adapter Jobs): with ADAPTER_MAX_RANK set, MODEL_ID is a peft adapter
repo: adapter_config.json and adapter_model.safetensors (or .bin) are required, and after the fetch
the adapter is checked against the server: its rank `r` must be <= ADAPTER_MAX_RANK, and when
ADAPTER_BASE_DIR names the base model's folder (same cache), every lora_A/lora_B tensor must wrap a
weight the base has, with matching shapes (a wrong base architecture fails here, not in the server).
Any of these fails with kind bad_adapter.

Idempotent and resumable: configs are fetched before weights; files completed by an interrupted
run are kept and not fetched again (huggingface_hub's local_dir metadata), a connection cut
mid-file is resumed with an HTTP Range request.  When the completion marker for this repo and
revision exists and its files are present, it exits 0 without any network request.

Output: one JSON summary line on stdout (also written to TERMINATION_LOG when writable, so the
operator can read it from the pod's termination message); failures print one line
"download failed [kind]: message" to stderr, write {"error": kind, ...} to TERMINATION_LOG and
exit with cache_layout.DOWNLOAD_EXIT_CODES[kind] (scibox_operator.engine.cache_layout).
"""

from __future__ import annotations

import errno
import glob
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# In the image scibox_operator/engine/ sits next to this file; in the repo it is the operator package.
for candidate in (HERE, HERE.parent.parent / "operator"):
    if (candidate / "scibox_operator" / "engine" / "cache_layout.py").is_file():
        sys.path.insert(0, str(candidate))
        break
from scibox_operator.engine import cache_layout  # noqa: E402

EXIT = cache_layout.DOWNLOAD_EXIT_CODES
MARKER = cache_layout.MODEL_CACHE_MARKER

CONFIG_SUFFIXES = (".json", ".model", ".tiktoken", ".txt", ".jinja", ".py")


class DownloadError(Exception):
    def __init__(self, kind: str, message: str):
        assert kind in EXIT, kind
        self.kind, self.message = kind, message
        super().__init__(message)


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def choose_adapter_files(names: list[str]) -> tuple[list[str], list[str]]:
    """(config files, weight files) of a peft adapter repo; pure."""
    root = sorted(n for n in names if "/" not in n)
    missing = [n for n in ("adapter_config.json",) if n not in root]
    weights = [n for n in ADAPTER_WEIGHTS if n in root][:1]
    if not weights:
        missing.append("adapter_model.safetensors")
    if missing:
        raise DownloadError("bad_adapter", f"not a LoRA adapter: the repo lacks {', '.join(missing)}; "
                                           f"files: {', '.join(root[:10]) or 'none'}")
    return [n for n in root if n.endswith(".json") and not n.startswith(".")], weights


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors file's header (the weights are not read)."""
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        if not 0 < size <= 100 * 1024 * 1024:
            raise ValueError(f"{path.name} is not a safetensors file")
        header = json.loads(handle.read(size))
    return {k: list(v.get("shape") or []) for k, v in header.items() if k != "__metadata__"}


def check_adapter(target: Path, max_rank: int, base_dir: Path | None) -> dict:
    """Will this adapter serve on the base? Raises DownloadError("bad_adapter", why)."""
    try:
        config = json.loads((target / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise DownloadError("bad_adapter", f"adapter_config.json unreadable: {exc}") from None
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise DownloadError("bad_adapter", f"adapter_config.json has no rank r (got {rank!r})")
    pattern = config.get("rank_pattern") or {}
    if isinstance(pattern, dict):  # per-module ranks: vLLM takes the largest
        rank = max([rank, *(r for r in pattern.values() if isinstance(r, int))])
    if rank > max_rank:
        raise DownloadError("bad_adapter", f"adapter rank {rank} is over the server's limit {max_rank} "
                                           "(engine.maxLoraRank)")
    checked = {"rank": rank, "base_checked": False}
    weights = target / "adapter_model.safetensors"
    base_files = sorted(base_dir.glob("*.safetensors")) if base_dir is not None and base_dir.is_dir() else []
    if not weights.is_file() or not base_files:
        return checked  # .bin adapters and bases without safetensors: vLLM checks them when loading
    try:
        lora = safetensors_shapes(weights)
        base: dict[str, list[int]] = {}
        for f in base_files:
            base.update(safetensors_shapes(f))
    except (OSError, ValueError) as exc:
        raise DownloadError("bad_adapter", f"cannot read the adapter's or the base's tensors: {exc}") from None
    problems = []
    for name, shape in sorted(lora.items()):
        for part, side in ((".lora_A.weight", "A"), (".lora_B.weight", "B")):
            if not name.endswith(part):
                continue
            module = name.removesuffix(part).removeprefix("base_model.model.")
            wrapped = base.get(module + ".weight")
            if wrapped is None or len(wrapped) != 2 or len(shape) != 2:
                problems.append(f"{module}: the base model has no such linear weight")
            elif (side == "A" and shape[1] != wrapped[1]) or (side == "B" and shape[0] != wrapped[0]):
                problems.append(f"{module}: lora_{side} {shape} does not fit the base weight {wrapped}")
    if not any(n.endswith(".lora_A.weight") for n in lora):
        problems.append("adapter_model.safetensors holds no lora_A tensors")
    if problems:
        raise DownloadError("bad_adapter", "the adapter does not fit the base model (wrong base architecture?): "
                                           + "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)"
                                                                        if len(problems) > 3 else ""))
    return {**checked, "base_checked": True}


def choose_files(names: list[str], index: dict | None, *, tokenizer_only: bool = False) -> tuple[list[str], list[str]]:
    """(config files, weight files) vLLM needs from a repo's file names; pure, for the tests too.
    A tokenizer repo gives its config and tokenizer files only (weights are never read from it)."""
    root = sorted(n for n in names if "/" not in n)
    configs = [n for n in root if n.endswith(CONFIG_SUFFIXES) and not n.startswith(".")]
    if tokenizer_only:
        if not configs:
            raise DownloadError("no_weights", "the tokenizer repo has no tokenizer or config files at its root; "
                                              f"files: {', '.join(root[:10]) or 'none'}")
        return configs, []
    safetensors = [n for n in root if n.endswith(".safetensors")]
    if safetensors:
        if index is not None:
            listed = set(index.get("weight_map", {}).values())
            missing = sorted(listed - set(safetensors))
            if missing:
                raise DownloadError("no_weights", f"the safetensors index names files the repo lacks: {missing[:3]}")
            safetensors = sorted(listed)
        return configs, safetensors
    for suffix in (".bin", ".pt"):
        weights = [n for n in root if n.endswith(suffix)]
        if weights:
            if index is not None and suffix == ".bin":
                weights = sorted(set(index.get("weight_map", {}).values()))
            return configs, weights
    raise DownloadError("no_weights", "the repo has no weights vLLM can load here (*.safetensors, *.bin or *.pt "
                                      f"at its root); files: {', '.join(root[:10]) or 'none'}")


def classify(exc: BaseException, token_set: bool) -> DownloadError:
    """Map any failure (huggingface_hub, httpx/requests, OS) to one of the exit kinds."""
    if isinstance(exc, DownloadError):
        return exc
    chain, seen = [], set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        chain.append(node)
        node = node.__cause__ or node.__context__
    for err in chain:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return DownloadError("disk_full", f"no space left on the model cache volume ({err.filename or 'write'})")
    for err in chain:
        response = getattr(err, "response", None)
        status = getattr(response, "status_code", None)
        name = type(err).__name__
        if status == 404 or name in ("RepositoryNotFoundError", "RevisionNotFoundError", "RemoteEntryNotFoundError"):
            return DownloadError("not_found", _first_line(err, "repository, revision or file not found"))
        if status in (401, 403) or name == "GatedRepoError":
            hint = ("HF_TOKEN was refused or lacks access to this repo" if token_set else
                    "the repo is gated or private and HF_TOKEN is not set")
            return DownloadError("unauthorized", f"HTTP {status or 401}: {hint}")
        if status is not None and (status >= 500 or status == 429):
            return DownloadError("unreachable", f"the hub answered HTTP {status}; try again later")
    for err in chain:
        name = type(err).__name__
        if name in ("ConnectError", "ConnectTimeout", "ReadTimeout", "TimeoutException", "PoolTimeout",
                    "ConnectionError", "NetworkError", "ProxyError") or isinstance(err, (ConnectionError, TimeoutError)):
            return DownloadError("unreachable", f"cannot reach the hub ({name}: {_first_line(err, '')})")
        if name == "OfflineModeIsEnabled":
            return DownloadError("bad_config", "HF_HUB_OFFLINE is set: the downloader needs the hub")
    return DownloadError("failed", f"{type(exc).__name__}: {_first_line(exc, 'unexpected error')}")


def _first_line(err: BaseException, default: str) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return " ".join(lines[:2])[:300] or default


def read_marker(target: Path, repo_id: str, revision: str, *, tokenizer_only: bool = False) -> dict | None:
    try:
        marker = json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if marker.get("repo") != repo_id or marker.get("revision") != revision:
        return None
    if marker.get("tokenizer_only") and not tokenizer_only:
        return None  # the same repo was fetched as a tokenizer only: its weights are missing
    sizes = marker.get("sizes") or {}
    for name in marker.get("files", []):
        path = target / name
        if not path.is_file() or (name in sizes and path.stat().st_size != sizes[name]):
            return None  # something changed the folder since: download again
    return marker


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def report(line: dict, termination_log: str | None) -> None:
    if termination_log is None:
        return
    text = json.dumps(line, sort_keys=True)
    try:
        with open(termination_log, "w") as handle:  # k8s keeps at most 4096 bytes of it
            handle.write(text[:4000])
    except OSError:
        pass  # outside Kubernetes there is no termination log; stdout/stderr still carry it


def download(repo_id: str, revision: str, target: Path, token: str | None, endpoint: str | None,
             workers: int, *, tokenizer_only: bool = False, adapter: bool = False) -> dict:
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if os.environ.pop("HF_HUB_OFFLINE", None) not in (None, "", "0"):
        print("note: ignoring HF_HUB_OFFLINE for the downloader", file=sys.stderr)
    from huggingface_hub import HfApi, snapshot_download

    started = time.monotonic()
    before = {p: p.stat().st_size for p in target.rglob("*") if p.is_file()} if target.exists() else {}
    api = HfApi(endpoint=endpoint, token=token or False)
    info = api.model_info(repo_id, revision=revision, files_metadata=True)
    commit = info.sha
    names = [s.rfilename for s in (info.siblings or [])]
    expected = {s.rfilename: s.size for s in (info.siblings or []) if s.size is not None}
    # validates there are weights (or tokenizer files) before fetching anything
    configs, _ = choose_adapter_files(names) if adapter else choose_files(names, None, tokenizer_only=tokenizer_only)

    # huggingface_hub trusts a local file whose recorded commit matches; one whose size is wrong
    # (truncated, edited) is removed here so it is fetched again.
    for name in names:
        path = target / name
        if name in expected and path.is_file() and path.stat().st_size != expected[name]:
            print(f"note: {name} has the wrong size, downloading it again", file=sys.stderr)
            path.unlink()

    def fetch(files: list[str]) -> None:
        if files:
            snapshot_download(repo_id, revision=commit, local_dir=str(target), endpoint=endpoint,
                              token=token or False, allow_patterns=[glob.escape(f) for f in files],
                              max_workers=workers)

    target.mkdir(parents=True, exist_ok=True)
    fetch(configs)
    index = None
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (target / index_name).is_file():
            index = json.loads((target / index_name).read_text())
            break
    configs, weights = (choose_adapter_files(names) if adapter else
                        choose_files(names, index, tokenizer_only=tokenizer_only))
    fetch(weights)

    files = configs + weights
    missing = [f for f in files if not (target / f).is_file()]
    if missing:
        raise DownloadError("failed", f"download finished but files are missing: {missing[:3]}")
    sizes = {f: (target / f).stat().st_size for f in files}
    wrong = [f for f in files if f in expected and sizes[f] != expected[f]]
    if wrong:
        raise DownloadError("failed", f"downloaded files do not have the hub's sizes: {wrong[:3]}")
    downloaded = sum(size for f, size in sizes.items() if before.get(target / f) != size)
    marker = {
        "repo": repo_id, "revision": revision, "commit": commit, "endpoint": endpoint or "https://huggingface.co",
        "files": files, "sizes": sizes, "file_count": len(files), "bytes": sum(sizes.values()),
        **({"tokenizer_only": True} if tokenizer_only else {}),
        "duration_seconds": round(time.monotonic() - started, 3),
        "completed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_atomically(target / MARKER, json.dumps(marker, indent=2, sort_keys=True) + "\n")
    seconds = time.monotonic() - started
    # throughput of this run (status.startup.downloadBytesPerSecond is computed the same way)
    return {**marker, "downloaded_bytes": downloaded, "workers": workers,
            "bytes_per_second": int(downloaded / seconds) if seconds > 0 else 0}


def fetch_repo(repo_id: str, revision: str, target: Path, token: str | None, endpoint: str | None,
               workers: int, *, tokenizer_only: bool = False, adapter: bool = False) -> dict:
    """One repo revision into `target`: nothing fetched when its completion marker holds."""
    marker = read_marker(target, repo_id, revision, tokenizer_only=tokenizer_only)
    if marker is not None:
        return {**marker, "downloaded_bytes": 0, "cached": True, "path": str(target), "duration_seconds": 0.0}
    return {**download(repo_id, revision, target, token, endpoint, workers, tokenizer_only=tokenizer_only,
                       adapter=adapter),
            "cached": False, "path": str(target)}


def main() -> int:
    # Kubernetes creates /dev/termination-log in every container; elsewhere it is not invented.
    termination_log = os.environ.get("TERMINATION_LOG") or (
        "/dev/termination-log" if os.access("/dev/termination-log", os.W_OK) else None)
    token = os.environ.get("HF_TOKEN") or None
    try:
        repo_id = (os.environ.get("MODEL_ID") or "").strip()
        if not repo_id:
            raise DownloadError("bad_config", "MODEL_ID is not set (expected org/name or name)")
        revision = (os.environ.get("MODEL_REVISION") or "main").strip()
        cache_dir = os.environ.get("CACHE_DIR") or cache_layout.DEFAULT_MODEL_CACHE_DIR
        endpoint = (os.environ.get("HF_ENDPOINT") or "").rstrip("/") or None
        tokenizer_id = (os.environ.get("TOKENIZER_ID") or "").strip()
        tokenizer_revision = (os.environ.get("TOKENIZER_REVISION") or "main").strip()
        try:
            workers = int(os.environ.get("DOWNLOAD_MAX_WORKERS") or 4)
            target = Path(cache_layout.model_cache_path(cache_dir, repo_id, revision))
            tokenizer_target = (Path(cache_layout.model_cache_path(cache_dir, tokenizer_id, tokenizer_revision))
                                if tokenizer_id else None)
        except ValueError as exc:
            raise DownloadError("bad_config", str(exc)) from None
        if workers < 1:
            raise DownloadError("bad_config", "DOWNLOAD_MAX_WORKERS must be >= 1")

        max_rank_env = (os.environ.get("ADAPTER_MAX_RANK") or "").strip()
        adapter = bool(max_rank_env)
        try:
            max_rank = int(max_rank_env) if adapter else 0
        except ValueError:
            raise DownloadError("bad_config", f"ADAPTER_MAX_RANK must be an integer, got {max_rank_env!r}") from None
        summary = fetch_repo(repo_id, revision, target, token, endpoint, workers, adapter=adapter)
        if adapter:  # checked on every run, cached or not: the limit or the base may have changed
            base_dir = (os.environ.get("ADAPTER_BASE_DIR") or "").strip()
            summary["adapter"] = check_adapter(target, max_rank, Path(base_dir) if base_dir else None)
        if tokenizer_target is not None:
            tok = fetch_repo(tokenizer_id, tokenizer_revision, tokenizer_target, token, endpoint, workers,
                             tokenizer_only=True)
            summary["tokenizer"] = {k: tok[k] for k in ("repo", "revision", "path", "cached", "file_count", "bytes")}
    except BaseException as exc:  # noqa: BLE001 - every failure leaves as one line and an exit code
        if isinstance(exc, KeyboardInterrupt):
            raise
        failure = classify(exc, token_set=token is not None)
        print(f"download failed [{failure.kind}]: {failure.message}", file=sys.stderr)
        report({"error": failure.kind, "message": failure.message, "exit_code": EXIT[failure.kind]}, termination_log)
        return EXIT[failure.kind]

    compact = {k: v for k, v in summary.items() if k not in ("files", "sizes")}
    print(json.dumps(compact, sort_keys=True), flush=True)
    report(compact, termination_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
