"""Readiness probing (scibox_operator.readiness.probe) against the real vLLM CPU server, plus pure unit tests.

Cold starts are the cost here (about a minute each on 2 cores), so the module uses:
  1. the session's shared server (healthy, wrong model name, metrics);
  2. one server with an API key (key tests, a hung engine, then killed and restarted: 2 starts);
  3. (slow) a server of a head_dim-16 model, which vLLM's CPU kernel refuses at the first request.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scibox_operator.api.conditions import make_condition
from scibox_operator.readiness.probe import probe_endpoint
from scibox_operator.readiness.verdicts import (
    ProbeReason,
    ProbeResult,
    classify_completion,
    classify_embedding,
    classify_health,
    classify_models,
    summarize_readiness,
)
from tests.fixtures.vllm import VLLMServer, free_port

API_KEY = "scibox-test-key"
METRIC_NAMES_FILE = Path(__file__).parents[1] / "fixtures" / "vllm_metric_names.txt"


def probe(base_url: str, served_model_name: str = "tiny", *, session_options=None, **options) -> ProbeResult:
    async def run() -> ProbeResult:
        async with aiohttp.ClientSession(**(session_options or {})) as session:
            return await probe_endpoint(session, base_url, served_model_name, **options)

    return asyncio.run(run())


def http(url: str, *, headers: dict[str, str] | None = None, body: dict | None = None) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


# --- the shared real server ---------------------------------------------------------------------


@pytest.mark.vllm
def test_healthy_server_serves_and_completes_one_token(vllm_server: VLLMServer) -> None:
    result = probe(vllm_server.base_url, completion=True)
    assert result.reason is ProbeReason.SERVING, result.message
    assert result.ready
    assert result.base_url == vllm_server.base_url
    assert vllm_server.base_url in result.message
    assert result.latency_s > 0


@pytest.mark.vllm
def test_wrong_served_model_name_is_model_missing(vllm_server: VLLMServer) -> None:
    result = probe(vllm_server.base_url, "llama-70b", completion=True)
    assert result.reason is ProbeReason.MODEL_MISSING
    assert not result.ready
    # The operator's own words: the name it asked for and a count, never what the server lists
    # (a status message must not relay a server's text).
    assert "'llama-70b'" in result.message and "1 other model listed" in result.message
    assert "tiny" not in result.message


@pytest.mark.vllm
def test_replicas_probed_concurrently_are_judged_each(vllm_server: VLLMServer) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"

    async def run() -> list[ProbeResult]:
        async with aiohttp.ClientSession() as session:
            return list(await asyncio.gather(*(probe_endpoint(session, url, "tiny", timeout=5.0)
                                               for url in (nobody, vllm_server.base_url))))

    down, up = asyncio.run(run())
    assert (down.reason, up.reason) == (ProbeReason.ENGINE_DOWN, ProbeReason.SERVING)
    summary = summarize_readiness([down, up], desired_replicas=2)
    assert (summary.ready_replicas, summary.status, summary.reason) == (1, "True", "Serving")
    assert summary.message == "1/2 replicas serving (1 EngineDown)"


def _exported_families(metrics_text: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (vllm:\S+) (\S+)$", metrics_text, flags=re.MULTILINE))


@pytest.mark.vllm
def test_metrics_export_the_recorded_vllm_names(vllm_server: VLLMServer) -> None:
    """The dashboards are built on tests/fixtures/vllm_metric_names.txt; the real server must match."""
    for _ in range(3):
        status, _ = http(
            vllm_server.base_url + "/v1/completions", body={"model": "tiny", "prompt": "hello world", "max_tokens": 2}
        )
        assert status == 200
    status, text = http(vllm_server.base_url + "/metrics")
    assert status == 200
    exported = _exported_families(text)
    recorded = dict(
        line.split() for line in METRIC_NAMES_FILE.read_text().splitlines() if line and not line.startswith("#")
    )
    assert recorded, "vllm_metric_names.txt lists no metric"
    missing = {name: kind for name, kind in recorded.items() if exported.get(name) != kind}
    assert not missing, f"recorded metrics the real server does not export (name -> type): {missing}"
    served = re.search(r'^vllm:generation_tokens_total\{[^}]*model_name="tiny"[^}]*\} (\S+)$', text, re.MULTILINE)
    assert served and float(served.group(1)) >= 6  # 3 requests x 2 tokens, labelled by served name


# --- nothing listening (no server needed: a real refused connection) ----------------------------


def test_refused_connection_is_engine_down_or_loading_while_starting() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    down = probe(url)
    assert down.reason is ProbeReason.ENGINE_DOWN and not down.ready
    assert down.message == f"{url}: /health: connection refused"
    assert probe(url, starting=True).reason is ProbeReason.LOADING


@pytest.mark.parametrize("bad", ["", "127.0.0.1:8000", "ftp://127.0.0.1/", "http://"])
def test_base_url_must_be_http(bad: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        probe(bad)


# --- a server with an API key: key tests, a hung engine, then a crash and a restart ------------


@pytest.fixture(scope="module")
def keyed_server(vllm_server_factory) -> Iterator[VLLMServer]:
    server = vllm_server_factory("api-key", api_key=API_KEY)
    yield server
    server.stop()  # frees a core for the modules that follow


@pytest.mark.vllm
def test_v1_models_needs_the_key_but_health_and_metrics_do_not(keyed_server: VLLMServer) -> None:
    """Issue 10's acceptance: VLLM_API_KEY guards the OpenAI routes; probes and scrapes stay open."""
    base = keyed_server.base_url
    assert http(base + "/v1/models")[0] == 401
    assert http(base + "/v1/models", headers={"Authorization": "Bearer wrong"})[0] == 401
    status, body = http(base + "/v1/models", headers=keyed_server.auth_headers)
    assert status == 200 and [m["id"] for m in json.loads(body)["data"]] == ["tiny"]
    completion = {"model": "tiny", "prompt": "hello", "max_tokens": 1}
    assert http(base + "/v1/completions", body=completion)[0] == 401
    assert http(base + "/v1/completions", body=completion, headers=keyed_server.auth_headers)[0] == 200
    assert http(base + "/health")[0] == 200
    assert http(base + "/metrics")[0] == 200


@pytest.mark.vllm
@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_missing_or_wrong_key_is_unauthorized(keyed_server: VLLMServer, key: str | None) -> None:
    result = probe(keyed_server.base_url, api_key=key, completion=True)
    assert result.reason is ProbeReason.UNAUTHORIZED, result.message
    assert "401" in result.message
    assert "wrong-key" not in result.message


@pytest.mark.vllm
def test_a_session_raising_for_status_does_not_change_the_verdict(keyed_server: VLLMServer) -> None:
    result = probe(keyed_server.base_url, session_options={"raise_for_status": True})
    assert result.reason is ProbeReason.UNAUTHORIZED, result.message


@pytest.mark.vllm
def test_right_key_is_serving(keyed_server: VLLMServer) -> None:
    result = probe(keyed_server.base_url, api_key=API_KEY, completion=True)
    assert result.reason is ProbeReason.SERVING, result.message
    assert API_KEY not in result.message


@pytest.mark.vllm
def test_hung_engine_times_out_as_engine_down(keyed_server: VLLMServer) -> None:
    """A stopped (not dead) server still accepts TCP connections but never answers."""
    os.killpg(keyed_server.pid, signal.SIGSTOP)
    try:
        result = probe(keyed_server.base_url, api_key=API_KEY, timeout=1.0)
    finally:
        os.killpg(keyed_server.pid, signal.SIGCONT)
    assert result.reason is ProbeReason.ENGINE_DOWN
    assert "timed out" in result.message
    assert probe(keyed_server.base_url, api_key=API_KEY, completion=True, timeout=30).reason is ProbeReason.SERVING


@pytest.mark.vllm
@pytest.mark.slow
def test_killed_server_is_engine_down_then_loading_then_serving_again(keyed_server: VLLMServer) -> None:
    keyed_server.kill()
    down = probe(keyed_server.base_url, api_key=API_KEY)
    assert down.reason is ProbeReason.ENGINE_DOWN
    assert down.message.endswith("/health: connection refused")

    keyed_server.start(wait=False)
    # vLLM opens its port only once the engine is built: until then the probe sees a refused
    # connection, which a caller aware of the start-up window reports as Loading.
    seen: list[ProbeReason] = []
    deadline = time.monotonic() + keyed_server.startup_timeout
    while time.monotonic() < deadline:
        assert keyed_server.running, keyed_server.log_tail()
        result = probe(keyed_server.base_url, api_key=API_KEY, starting=True, completion=True, timeout=10)
        seen.append(result.reason)
        if result.ready:
            break
        time.sleep(1.0)
    assert seen[-1] is ProbeReason.SERVING, seen
    assert set(seen[:-1]) == {ProbeReason.LOADING}, seen
    keyed_server.wait_ready()
    print(f"vLLM restart to /health 200: {keyed_server.last_start_seconds:.1f}s")


# --- a model that loads but cannot generate (the head_dim failure mode) ------------------------


@pytest.mark.vllm
@pytest.mark.slow
def test_health_ok_but_completion_fails_is_completion_failed(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Same weights, reshaped to 8 heads of 16 (4 KV heads): every tensor keeps its shape, vLLM
    loads it and answers /health, and the CPU attention kernel refuses head_dim 16 per request."""
    model_dir = tmp_path / "head-dim-16"
    shutil.copytree(tiny_model_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config.update(num_attention_heads=8, num_key_value_heads=4, head_dim=16)
    (model_dir / "config.json").write_text(json.dumps(config))

    with VLLMServer(model_dir, log_path=tmp_path / "vllm.log") as server:
        assert probe(server.base_url).reason is ProbeReason.SERVING  # without a completion it looks fine
        result = probe(server.base_url, completion=True, timeout=60)
        # The failed request kills the engine and vLLM exits: the next probe finds nobody home.
        after = probe(server.base_url)
    assert result.reason is ProbeReason.COMPLETION_FAILED, result.message
    assert not result.ready and "/v1/completions answered HTTP 500" in result.message
    assert after.reason is ProbeReason.ENGINE_DOWN, after.message


# --- classification (pure) ----------------------------------------------------------------------


def test_classify_health() -> None:
    assert classify_health(200) is None
    assert classify_health(200, starting=True) is None
    # vLLM answers 503 only for a dead engine; only a replica known to be starting is "Loading".
    assert classify_health(503).reason is ProbeReason.ENGINE_DOWN
    assert classify_health(503, starting=True).reason is ProbeReason.LOADING
    assert "503" in classify_health(503).detail


def test_classify_models() -> None:
    listed = json.dumps({"object": "list", "data": [{"id": "tiny"}, {"id": "other"}]})
    assert classify_models(200, listed, "tiny") is None
    missing = classify_models(200, listed, "big")
    assert missing.reason is ProbeReason.MODEL_MISSING and "2 other models listed" in missing.detail
    assert "tiny" not in missing.detail, "the names a server lists stay out of status"
    assert "other, tiny" in missing.evidence, "...and go to the log"
    assert classify_models(200, json.dumps({"data": []}), "tiny").reason is ProbeReason.MODEL_MISSING
    assert classify_models(401, "", "tiny").reason is ProbeReason.UNAUTHORIZED
    assert classify_models(403, "", "tiny").reason is ProbeReason.UNAUTHORIZED
    assert classify_models(503, "", "tiny").reason is ProbeReason.LOADING
    assert classify_models(404, "not found", "tiny").reason is ProbeReason.ENGINE_DOWN
    garbage = classify_models(200, "<html>" + "x" * 1000, "tiny")
    assert garbage.reason is ProbeReason.ENGINE_DOWN and "<html>" not in garbage.detail
    assert garbage.evidence.startswith("<html>") and len(garbage.evidence) <= 200
    not_found = classify_models(404, "SECRET-BODY", "tiny")
    assert "SECRET-BODY" not in not_found.detail and not_found.evidence == "SECRET-BODY"


def test_classify_completion() -> None:
    assert classify_completion(200, json.dumps({"choices": [{"text": " w1"}]})) is None
    assert classify_completion(200, json.dumps({"choices": []})).reason is ProbeReason.COMPLETION_FAILED
    assert classify_completion(200, "not json").reason is ProbeReason.COMPLETION_FAILED
    failed = classify_completion(500, '{"error": "Unsupported CPU attention configuration: head_dim=16"}')
    assert failed.reason is ProbeReason.COMPLETION_FAILED and failed.detail == "/v1/completions answered HTTP 500"
    assert "head_dim=16" in failed.evidence, "the server's words go to the log, not to status"
    assert "SECRET" not in classify_completion(200, '{"SECRET": 1}').detail
    assert classify_completion(401, "").reason is ProbeReason.UNAUTHORIZED


def test_classify_embedding() -> None:
    """model.task embed: a 200 whose first item carries a vector of numbers (issue 19)."""
    ok = json.dumps({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -2, 3e-4]}]})
    assert classify_embedding(200, ok) is None
    for body in ('{"data": []}', '{"data": [{"embedding": []}]}', '{"data": [{"embedding": ["a"]}]}',
                 '{"data": [{"embedding": [true]}]}', '{"choices": [{"text": "x"}]}', "not json", "[]"):
        assert classify_embedding(200, body).reason is ProbeReason.EMBEDDING_FAILED, body
    failed = classify_embedding(400, '{"error": "The model does not support Embeddings API"}')
    assert failed.reason is ProbeReason.EMBEDDING_FAILED and failed.detail == "/v1/embeddings answered HTTP 400"
    assert "Embeddings API" in failed.evidence and "Embeddings API" not in failed.detail
    assert classify_embedding(403, "").reason is ProbeReason.UNAUTHORIZED


def test_an_unknown_task_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="task"):
        probe("http://127.0.0.1:1", task="chat")


# --- summarize_readiness (pure) -----------------------------------------------------------------


def result(reason: ProbeReason, url: str = "http://10.0.0.1:8000") -> ProbeResult:
    return ProbeResult(reason is ProbeReason.SERVING, reason, f"{url}: {reason.value} detail", 0.01, url)


def test_all_serving_is_ready() -> None:
    summary = summarize_readiness([result(ProbeReason.SERVING)] * 3, desired_replicas=3)
    assert (summary.status, summary.reason, summary.ready_replicas) == ("True", "Serving", 3)
    assert summary.message == "3/3 replicas serving"


def test_partly_serving_is_ready_with_the_count_in_the_message() -> None:
    summary = summarize_readiness(
        [result(ProbeReason.SERVING), result(ProbeReason.LOADING), result(ProbeReason.ENGINE_DOWN)], 3
    )
    assert (summary.status, summary.reason, summary.ready_replicas) == ("True", "Serving", 1)
    assert summary.message == "1/3 replicas serving (1 EngineDown, 1 Loading)"


def test_none_serving_names_the_most_telling_reason() -> None:
    summary = summarize_readiness(
        [
            result(ProbeReason.LOADING, "http://10.0.0.3:8000"),
            result(ProbeReason.MODEL_MISSING, "http://10.0.0.2:8000"),
            result(ProbeReason.ENGINE_DOWN, "http://10.0.0.1:8000"),
        ],
        3,
    )
    assert (summary.status, summary.reason, summary.ready_replicas) == ("False", "ModelMissing", 0)
    assert summary.message.startswith("0/3 replicas serving (1 ModelMissing, 1 EngineDown, 1 Loading): ")
    assert summary.message.endswith("http://10.0.0.2:8000: ModelMissing detail")


def test_unauthorized_outranks_everything_and_ties_break_by_url() -> None:
    results = [
        result(ProbeReason.UNAUTHORIZED, "http://10.0.0.9:8000"),
        result(ProbeReason.COMPLETION_FAILED),
        result(ProbeReason.UNAUTHORIZED, "http://10.0.0.4:8000"),
    ]
    forward, backward = summarize_readiness(results, 3), summarize_readiness(results[::-1], 3)
    assert forward == backward
    assert forward.reason == "Unauthorized" and forward.message.endswith("http://10.0.0.4:8000: Unauthorized detail")


def test_scaled_to_zero_and_pending() -> None:
    zero = summarize_readiness([], desired_replicas=0)
    assert (zero.status, zero.reason, zero.ready_replicas) == ("False", "ScaledToZero", 0)
    pending = summarize_readiness([], desired_replicas=2)
    assert (pending.status, pending.reason) == ("False", "Pending")
    assert pending.message.startswith("0/2 replicas serving")
    with pytest.raises(ValueError, match="desired_replicas"):
        summarize_readiness([], desired_replicas=-1)


@given(st.lists(st.sampled_from(list(ProbeReason))), st.integers(min_value=1, max_value=8))
def test_ready_exactly_when_some_replica_serves(reasons: list[ProbeReason], desired: int) -> None:
    results = [result(reason, f"http://10.0.0.{i}:8000") for i, reason in enumerate(reasons)]
    summary = summarize_readiness(results, desired)
    serving = reasons.count(ProbeReason.SERVING)
    assert summary.ready_replicas == serving
    assert summary.status == ("True" if serving else "False")
    assert summary.reason in {r.value for r in ProbeReason} | {"Pending"}
    assert re.fullmatch(r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?", summary.reason)  # metav1.Condition's rule


# --- conditions (pure) --------------------------------------------------------------------------

T0 = datetime(2026, 11, 25, 7, 0, 0, 123456, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def ready_condition(summary, **kw):
    return make_condition("Ready", summary.status, summary.reason, summary.message, **kw)


def test_condition_keeps_transition_time_while_status_holds() -> None:
    loading = summarize_readiness([result(ProbeReason.LOADING)], 1)
    down = summarize_readiness([result(ProbeReason.ENGINE_DOWN)], 1)
    serving = summarize_readiness([result(ProbeReason.SERVING)], 1)

    first = ready_condition(loading, now=T0, observed_generation=3)
    assert first == {
        "type": "Ready",
        "status": "False",
        "reason": "Loading",
        "message": first["message"],
        "lastTransitionTime": "2026-11-25T07:00:00Z",
        "observedGeneration": 3,
    }
    still_false = ready_condition(down, now=T1, previous=first, observed_generation=3)
    assert still_false["lastTransitionTime"] == "2026-11-25T07:00:00Z"
    assert still_false["reason"] == "EngineDown"
    flipped = ready_condition(serving, now=T1, previous=still_false, observed_generation=3)
    assert flipped["lastTransitionTime"] == "2026-11-25T07:05:00Z"


def test_rebuilding_the_same_condition_later_is_the_same_condition() -> None:
    summary = summarize_readiness([result(ProbeReason.SERVING)], 1)
    old = ready_condition(summary, now=T0)
    assert ready_condition(summary, now=T1, previous=old) == old


def test_condition_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        make_condition("Ready", "True", "Serving", "", now=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="status"):
        make_condition("Ready", "yes", "Serving", "", now=T0)
    with pytest.raises(ValueError, match="reason"):
        make_condition("Ready", "True", "", "", now=T0)
    long = make_condition("Ready", "False", "Loading", "x" * 40000, now=T0)
    assert len(long["message"]) == 32768


# --- an embedding model (model.task embed, issue 19) --------------------------------------------


@pytest.mark.vllm
@pytest.mark.slow
def test_an_embedding_model_is_probed_with_an_embedding_not_a_completion(tiny_model_dir: Path,
                                                                           tmp_path: Path) -> None:
    """The tiny Llama run as vLLM's pooling runner (--runner=pooling, what model.task embed
    renders): the completion probe fails on it forever, the embedding probe serves."""
    from scibox_operator.engine.vllm_args import EngineSettings, render_vllm_args
    from scibox_operator.render.deployment import RUNNER_OF_TASK

    flags = [a for a in render_vllm_args(EngineSettings(model="/m", runner=RUNNER_OF_TASK["embed"]))
             if a.startswith("--runner")]
    with VLLMServer(tiny_model_dir, log_path=tmp_path / "vllm-embed.log", extra_args=tuple(flags)) as server:
        embedded = probe(server.base_url, completion=True, task="embed", timeout=60)
        completed = probe(server.base_url, completion=True, timeout=60)
        status, body = http(server.base_url + "/v1/embeddings", body={"model": "tiny", "input": "Hello"})
    assert embedded.reason is ProbeReason.SERVING, embedded.message
    assert "embedding request succeeded" in embedded.message
    assert completed.reason is ProbeReason.COMPLETION_FAILED, completed.message
    assert status == 200 and len(json.loads(body)["data"][0]["embedding"]) > 0
