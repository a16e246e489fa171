"""Property tests of the pure glue `spec -> plan -> manifests` (no cluster).

Random VLLMDeployments the API server would admit (they follow the CRD's schema and CEL rules)
go through `parse`, `decide_serving_plan` and every renderer. Whatever the draw:
- the operator either refuses the spec (InvalidSpec) or the plan (PlanFailure) with a reason
  and a message, or renders; never another exception (that would be a reconcile crash loop
  with no status for the user);
- rendering is deterministic and independent of the key order of the input;
- the GPUs a pod asks for are the plan's tensor x pipeline size over its nodes;
- nothing a user writes in extraArgs or env overrides what the spec owns;
- every child's name is one its kind accepts (Service names are DNS-1035 labels, label
  values and Job names at most 63 characters).
Random *garbage* specs (wrong types, out-of-range numbers, smuggled flags) must end in
InvalidSpec or PlanFailure with a message, never in another exception.
"""

from __future__ import annotations

import copy
import random
import re
import string

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from scibox_operator.api.spec import InvalidSpec, parse
from scibox_operator.cli import render_manifests
from scibox_operator.engine.vllm_args import FORBIDDEN_FLAGS, OWNED_FLAGS, PLANNED_FLAGS, SERVICE_ENV
from scibox_operator.planning import GPU_TABLE
from scibox_operator.planning.serving_plan import GpuNode, PlanFailure, decide_serving_plan
from scibox_operator.render.cache import render_cache_pvc, render_download_job
from scibox_operator.render.deployment import render_deployment
from scibox_operator.render.leaderworkerset import render_leader_worker_set
from scibox_operator.render.monitoring import render_service_monitor
from scibox_operator.render.network_policy import render_network_policy
from scibox_operator.render.service import render_service

PROPERTY_SETTINGS = settings(max_examples=300, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# The tiny model the cluster tests serve (2 attention heads, 1 KV head).
TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128,
    "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
    "num_key_value_heads": 1, "max_position_embeddings": 512, "vocab_size": 260,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}
# A mid-size model that needs several GPUs on small cards (plans with TP/PP > 1).
BIG_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192,
    "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
    "num_key_value_heads": 8, "max_position_embeddings": 131072, "vocab_size": 128256,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}

DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
CAMEL_REASON = re.compile(r"^[A-Z][A-Za-z0-9]+$")

# vLLM 0.32 flags a user may legitimately pass (none owned by the spec).
HARMLESS_ARG_GROUPS = [("--enforce-eager",), ("--seed", "7"), ("--seed=-3",), ("--max-logprobs=2",),
                       ("--kv-cache-dtype-skip-layers", "0"), ("--load-format", "safetensors"),
                       ("--enable-log-requests",), ("--block-size=16",), ("--uvicorn-log-level=warning",)]


def _smuggle_spellings(flag: str) -> list[str]:
    """Ways a user could spell `flag` so that argparse still reaches it."""
    name = flag[2:]
    out = [flag, f"{flag}=1", "--" + name.replace("-", "_"), "--" + name.upper(), f"--no-{name}"]
    if len(name) > 6:
        out.append("--" + name[: len(name) - 2])  # an abbreviation argparse would expand
    return out


SMUGGLE_TOKENS = sorted({s for f in sorted(OWNED_FLAGS | set(FORBIDDEN_FLAGS) | set(PLANNED_FLAGS.values()))
                         for s in _smuggle_spellings(f)}
                        | {"-tp", "-tp=4", "-pp2", "-q", "-qawq", "--", "evil/model"})


def _words(alphabet: str, min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet, min_size=min_size, max_size=max_size)


LOWER = string.ascii_lowercase + string.digits
ID_CHARS = string.ascii_letters + string.digits + "._-"


@st.composite
def any_subdomains(draw, max_len: int = 253) -> str:
    """Any name the API server's generic rule admits for a custom resource (DNS-1123 subdomain)."""
    parts = draw(st.lists(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True),
                          min_size=1, max_size=4))
    name = ".".join(parts)
    if draw(st.booleans()):  # sometimes very long names
        name = (name + "-" + "x" * draw(st.integers(0, 120)))[:max_len].rstrip("-.")
        name = name or "x"
    assume(DNS_SUBDOMAIN.match(name) and len(name) <= max_len)
    return name


def dns_subdomains(max_len: int = 253) -> st.SearchStrategy[str]:
    """Mostly names a user would pick (DNS labels starting with a letter), sometimes any
    subdomain: most draws must get past parse() for the properties on the output to bite."""
    usual = st.from_regex(r"[a-z]([a-z0-9-]{0,30}[a-z0-9])?", fullmatch=True)
    return st.one_of(usual, usual, usual, any_subdomains(max_len))


@st.composite
def repo_ids(draw) -> str:
    first = draw(st.sampled_from(string.ascii_letters + string.digits))
    org = first + draw(_words(ID_CHARS, 0, 12))
    name = draw(st.sampled_from(string.ascii_letters + string.digits)) + draw(_words(ID_CHARS, 0, 20))
    # The CRD admits both hub forms: org/name and the legacy single-segment ids (gpt2, ...).
    return draw(st.sampled_from([f"{org}/{name}"] * 4 + [name]))


def _maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.none(), strategy)


def _int_or_auto(lo: int, hi: int) -> st.SearchStrategy:
    return st.one_of(st.just("auto"), st.integers(lo, hi))


def _extra_args(smuggle: bool = True) -> st.SearchStrategy[list[str]]:
    harmless = st.sampled_from(HARMLESS_ARG_GROUPS)
    smuggled = st.sampled_from(SMUGGLE_TOKENS).map(lambda t: (t,))
    groups = st.lists(st.one_of(harmless, harmless, smuggled) if smuggle else harmless, max_size=5)
    return groups.map(lambda gs: [t for g in gs for t in g])


CEL_OWNED_EXTRA_ARG = re.compile(
    r"^-(-(no-)?)?(model|served-model-name|host|port|tensor-parallel-size|pipeline-parallel-size|tp|pp|"
    r"max-model-len|gpu-memory-utilization|max-num-batched-tokens|max-num-seqs|kv-cache-dtype|enable-prefix-caching|"
    r"enable-chunked-prefill|trust-remote-code|dtype|quantization|q|tokenizer|revision|runner|api-key|download-dir)"
    r"([=_].*)?$")
CEL_OWNED_ENV = {"VLLM_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "HF_HOME",
                 "VLLM_HOST_IP", "VLLM_PORT", "VLLM_TRUST_REMOTE_CODE"}


def _operator_env_names() -> list[str]:
    """Every variable the operator itself sets on the server container (read from a render, so
    a variable added later is covered too)."""
    from scibox_operator.render.deployment import server_env

    vd = parse({"metadata": {"name": "probe", "namespace": "ns"},
                "spec": {"model": {"name": "a/b"}, "auth": {"apiKeySecretRef": {"name": "k"}}}})
    return sorted({e["name"] for e in server_env(vd)})


HARMLESS_ENV_NAMES = ["A", "LOG_LEVEL", "NCCL_DEBUG", "OMP_NUM_THREADS", "VLLM_LOGGING_LEVEL", "PYTHONHASHSEED"]
# Names a user must not set: the operator's own, the service's, engine settings.
OWNED_ENV_NAMES = sorted(set(_operator_env_names()) | set(SERVICE_ENV)
                         | {"TRUST_REMOTE_CODE", "MODEL_ID", "TENSOR_PARALLEL_SIZE"})
ENV_NAMES = HARMLESS_ENV_NAMES + OWNED_ENV_NAMES + ["_x1"]


@st.composite
def crd_valid_specs(draw, typical: bool = False) -> dict:
    """A spec the API server admits: the CRD's types, bounds, patterns and CEL rules.

    typical: leave out what usually ends in a refusal (single-segment ids, quantization the
    model does not have, contexts longer than the model's, unknown GPUs, service-owned env
    names, smuggled flags), so that most draws are rendered."""
    pvc = draw(st.booleans()) and draw(st.booleans())
    if pvc:
        model_name = "pvc://" + draw(st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)) \
            + draw(st.sampled_from(["", "/", "/models/x", "/a b/c"])).replace(" ", "_")
    elif typical:
        model_name = draw(repo_ids().filter(lambda r: "/" in r and ".." not in r))
    else:
        model_name = draw(repo_ids())
    model: dict = {"name": model_name}
    optional_model = {
        "revision": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,40}", fullmatch=True),
        "servedModelName": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._/:-]{0,40}", fullmatch=True),
        "trustRemoteCode": st.booleans(),
        "dtype": st.sampled_from(["auto", "half", "float16", "bfloat16", "float", "float32"]),
        "quantization": st.sampled_from(["awq", "awq_marlin", "gptq", "gptq_marlin", "fp8", "bitsandbytes",
                                         "compressed-tensors", "marlin", "gguf", "modelopt", "experts_int8"]),
        "maxModelLen": st.integers(16, 10485760),
        # Any text up to 253 characters (once without a pattern in the CRD), usually a repo id.
        "tokenizer": st.one_of(repo_ids(), repo_ids(), st.text(min_size=0, max_size=40)),
    }
    if typical:
        optional_model.pop("quantization")
        optional_model["maxModelLen"] = st.integers(16, 512)
        optional_model["tokenizer"] = repo_ids()
    for key, strategy in optional_model.items():
        if draw(st.booleans()):
            model[key] = draw(strategy)
    spec: dict = {"model": model}

    gpus = draw(_int_or_auto(1, 64)) if draw(st.booleans()) else None
    tp = draw(_int_or_auto(1, 64)) if draw(st.booleans()) else None
    pp = draw(_int_or_auto(1, 64)) if draw(st.booleans()) else None
    if isinstance(gpus, int) and isinstance(tp, int) and isinstance(pp, int):
        assume(tp * pp <= 64)
        gpus = tp * pp  # the CEL rule: gpus == tp x pp when all three are numbers
    resources: dict = {}
    if gpus is not None:
        resources["gpus"] = gpus
    if not typical and draw(st.booleans()):
        resources["gpuProduct"] = draw(st.one_of(
            st.sampled_from([p for g in GPU_TABLE for p in g.products]),
            st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,30}", fullmatch=True)))
    if draw(st.booleans()):
        resources["minGpuMemoryMiB"] = draw(st.integers(1, 16_000 if typical else 10_000_000))
    if draw(st.booleans()):
        resources["cpu"] = draw(st.one_of(st.integers(1, 256), st.from_regex(r"[0-9]{1,3}(\.[0-9])?|[0-9]{1,5}m",
                                                                            fullmatch=True)))
    if draw(st.booleans()):
        resources["memory"] = draw(st.from_regex(r"[0-9]{1,4}(Ki|Mi|Gi|Ti|k|M|G|T)?", fullmatch=True))
    if resources:
        spec["resources"] = resources
    parallelism = {k: v for k, v in (("tensorParallelSize", tp), ("pipelineParallelSize", pp)) if v is not None}
    if parallelism:
        spec["parallelism"] = parallelism

    if draw(st.booleans()):
        spec["replicas"] = draw(st.integers(0, 128))
    if draw(st.booleans()):
        spec["image"] = draw(st.text(min_size=1, max_size=60).filter(lambda s: s.strip() == s and s))
    if not typical and draw(st.booleans()):
        spec["nodeSelector"] = draw(st.dictionaries(
            st.from_regex(r"[a-z0-9.]{1,10}(/[a-z0-9-]{1,10})?", fullmatch=True), _words(LOWER, 0, 10), max_size=3))
    if draw(st.booleans()):
        spec["tolerations"] = draw(st.lists(st.fixed_dictionaries(
            {"key": st.sampled_from(["a", "b/c"]), "operator": st.sampled_from(["Exists", "Equal"]),
             "effect": st.sampled_from(["NoSchedule", "NoExecute"])}), max_size=3))
    if draw(st.booleans()):
        spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": draw(st.lists(st.fixed_dictionaries({"matchExpressions": st.lists(
                st.fixed_dictionaries({"key": st.sampled_from(["zone", "rack"]), "operator": st.just("In"),
                                       "values": st.lists(_words(LOWER, 1, 5), min_size=1, max_size=2)}),
                max_size=2)}), max_size=3))}}}
    if draw(st.booleans()):
        spec["priorityClassName"] = draw(st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True))

    engine: dict = {}
    if draw(st.booleans()):
        engine["gpuMemoryUtilization"] = draw(st.floats(0.05, 0.99, allow_nan=False))
    if draw(st.booleans()):
        engine["maxNumBatchedTokens"] = draw(st.integers(1, 10485760))
    if draw(st.booleans()):
        engine["maxNumSeqs"] = draw(st.integers(1, 65536))
    for flag in ("enablePrefixCaching", "enableChunkedPrefill"):
        if draw(st.booleans()):
            engine[flag] = draw(st.booleans())
    if draw(st.booleans()):
        extra = draw(_extra_args(smuggle=not typical and draw(st.integers(0, 4)) == 0))
        assume(not any(CEL_OWNED_EXTRA_ARG.match(a) for a in extra))
        engine["extraArgs"] = extra
    if draw(st.booleans()):
        # (typical: the operator's own names the CEL rule lets through are still drawn often)
        pool = HARMLESS_ENV_NAMES + ([n for n in _operator_env_names() if n not in CEL_OWNED_ENV]
                                     if draw(st.integers(0, 2)) == 0 else []) if typical else ENV_NAMES
        names = draw(st.lists(st.sampled_from(pool), unique=True, max_size=4))
        assume(not set(names) & CEL_OWNED_ENV)
        engine["env"] = [{"name": n, "value": draw(st.text(max_size=20))} for n in names]
    if engine:
        spec["engine"] = engine

    cache: dict = {}
    if draw(st.booleans()):
        cache["size"] = draw(st.one_of(st.just("auto"),
                                       st.from_regex(r"[0-9]{1,4}(\.[0-9])?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?",
                                                     fullmatch=True)))
    if draw(st.booleans()):
        cache["accessMode"] = draw(st.sampled_from(["Auto", "ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"]))
    if not pvc and draw(st.booleans()):
        cache["existingClaim"] = draw(st.from_regex(r"[a-z0-9]([-a-z0-9.]{0,30}[a-z0-9])?", fullmatch=True))
    elif draw(st.booleans()):
        cache["storageClassName"] = draw(st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True))
    if draw(st.booleans()):
        cache["deletionPolicy"] = draw(st.sampled_from(["Retain", "Delete"]))
    if draw(st.booleans()):
        cache["downloadImage"] = "registry.example/dl:1"
    if draw(st.booleans()):
        cache["tokenSecretRef"] = {"name": "hub-token"}
    if draw(st.booleans()):
        cache["endpoint"] = draw(st.from_regex(r"https?://[a-z0-9.:/-]{1,30}", fullmatch=True))
    if cache:
        spec["cache"] = cache

    if draw(st.booleans()):
        spec["service"] = {"type": draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"])),
                           "port": draw(st.integers(1, 65535))}
    if draw(st.booleans()):
        spec["auth"] = {"apiKeySecretRef": {"name": "api-key", **({"key": "k"} if draw(st.booleans()) else {})}}
    if draw(st.booleans()):
        spec["monitoring"] = {"serviceMonitor": draw(st.booleans()),
                              "interval": draw(st.from_regex(r"[0-9]{1,3}(ms|s|m|h)", fullmatch=True))}
    if draw(st.booleans()):
        spec["networkPolicy"] = {"enabled": draw(st.booleans()),
                                 "allowedNamespaces": draw(st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]",
                                                                                  fullmatch=True), max_size=3)),
                                 "allowedPodLabels": draw(st.dictionaries(st.sampled_from(["app", "team"]),
                                                                          _words(LOWER, 1, 8), max_size=2))}
    if draw(st.booleans()):
        spec["rollout"] = {"strategy": draw(st.sampled_from(["Recreate", "RollingUpdate"])),
                           "startupTimeoutSeconds": draw(st.integers(60, 86400))}
    return spec


@st.composite
def gpu_inventories(draw, min_nodes: int = 0) -> list[GpuNode]:
    nodes = []
    for i in range(draw(st.integers(min_nodes, 3))):
        gpu = draw(st.sampled_from(GPU_TABLE))
        labels = {"nvidia.com/gpu.product": gpu.products[0] if gpu.products else gpu.name,
                  "nvidia.com/gpu.memory": str(gpu.memory_mib), "kubernetes.io/hostname": f"node-{i}"}
        nodes.append(GpuNode(f"node-{i}", tuple(sorted(labels.items())), draw(st.sampled_from([1, 2, 4, 8]))))
    return nodes


def vllmd(name: str, spec: dict, namespace: str = "team-a") -> dict:
    return {"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment",
            "metadata": {"name": name, "namespace": namespace, "uid": "0c2f6a4e-uid", "generation": 1},
            "spec": spec}


def render_all(body: dict, *, config: dict | None, nodes: list[GpuNode], shared: bool):
    """The controller's sequence, without I/O: parse, plan, render every child."""
    vd = parse(body)
    plan = decide_serving_plan(vd, config=config, safetensors_index=None, nodes=nodes, cache_shared=shared,
                               image="vllm/vllm-openai:test")
    workload = render_leader_worker_set(vd, plan) if plan.multi_node else render_deployment(vd, plan)
    children = [render_cache_pvc(vd, plan, [vd]), render_download_job(vd, plan, [vd]), workload,
                render_service(vd, multi_node=plan.multi_node), render_network_policy(vd, operator_namespace="ops"),
                render_service_monitor(vd)]
    return vd, plan, [c for c in children if c is not None]


def outcome(body: dict, **kw):
    """(vd, plan, children) or the refusal; any other exception fails the test with its input."""
    try:
        return render_all(body, **kw)
    except InvalidSpec as exc:
        assert exc.message.strip(), "an InvalidSpec without a message"
        return exc
    except PlanFailure as exc:
        assert CAMEL_REASON.match(exc.reason), f"reason {exc.reason!r} is not a CamelCase word"
        assert exc.message.strip(), "a PlanFailure without a message"
        return exc


def shuffled(obj, rng: random.Random):
    """The same document with every mapping's keys in another order."""
    if isinstance(obj, dict):
        items = list(obj.items())
        rng.shuffle(items)
        return {k: shuffled(v, rng) for k, v in items}
    if isinstance(obj, list):
        return [shuffled(v, rng) for v in obj]
    return obj


def containers(workload: dict) -> list[dict]:
    if workload["kind"] == "Deployment":
        return workload["spec"]["template"]["spec"]["containers"]
    lwt = workload["spec"]["leaderWorkerTemplate"]
    return lwt["leaderTemplate"]["spec"]["containers"] + lwt["workerTemplate"]["spec"]["containers"]


def pod_specs(workload: dict) -> list[dict]:
    if workload["kind"] == "Deployment":
        return [workload["spec"]["template"]["spec"]]
    lwt = workload["spec"]["leaderWorkerTemplate"]
    return [lwt["leaderTemplate"]["spec"], lwt["workerTemplate"]["spec"]]


def server_args(workload: dict) -> list[str]:
    if workload["kind"] == "Deployment":
        return containers(workload)[0]["args"]
    import shlex
    script = containers(workload)[0]["args"][0]
    exec_part = script.split("exec python3 -m vllm.entrypoints.openai.api_server ", 1)[1]
    return shlex.split(exec_part)[:-1]  # without the trailing --distributed-executor-backend=ray


configs = st.sampled_from([None, TINY_CONFIG, BIG_CONFIG])  # None: the hub was unreachable
present_configs = st.sampled_from([TINY_CONFIG, BIG_CONFIG])
user_names = st.from_regex(r"[a-z]([a-z0-9-]{0,30}[a-z0-9])?", fullmatch=True)


@PROPERTY_SETTINGS
@given(name=dns_subdomains(), spec=crd_valid_specs(), config=configs, nodes=gpu_inventories(), shared=st.booleans())
def test_admitted_specs_render_or_fail_with_a_reason(name, spec, config, nodes, shared):
    result = outcome(vllmd(name, spec), config=config, nodes=nodes, shared=shared)
    if not isinstance(result, Exception):
        check_promises(name, spec, config, nodes, shared, result)


@PROPERTY_SETTINGS
@given(name=user_names, spec=crd_valid_specs(typical=True), config=present_configs, nodes=gpu_inventories(min_nodes=1),
       shared=st.booleans())
def test_typical_specs_keep_every_promise_of_the_rendered_children(name, spec, config, nodes, shared):
    """The same, with the model config and GPU nodes at hand, so that most draws render."""
    result = outcome(vllmd(name, spec), config=config, nodes=nodes, shared=shared)
    if not isinstance(result, Exception):
        check_promises(name, spec, config, nodes, shared, result)


def check_promises(name, spec, config, nodes, shared, result) -> None:
    vd, plan, children = result

    # Deterministic, whatever the key order of the object as read from the API.
    again = outcome(shuffled(copy.deepcopy(vllmd(name, spec)), random.Random(len(name))), config=config,
                    nodes=list(reversed(nodes)) if len({n.product for n in nodes}) <= 1 else nodes, shared=shared)
    assert yaml.safe_dump(again[2]) == yaml.safe_dump(children)
    assert vd.spec.model_dump() == parse(copy.deepcopy(vllmd(name, spec))).spec.model_dump(), "parse is pure"

    # GPUs: every pod of a replica asks for tensor x pipeline / nodes.
    assert plan.nodes >= 1 and plan.gpus_per_replica == plan.tensor_parallel_size * plan.pipeline_parallel_size
    assert plan.gpus_per_replica % plan.nodes == 0
    if isinstance(spec.get("resources", {}).get("gpus"), int):
        assert plan.gpus_per_replica == spec["resources"]["gpus"], "resources.gpus is what a replica gets"
    workload = next(c for c in children if c["kind"] in ("Deployment", "LeaderWorkerSet"))
    for c in containers(workload):
        assert c["resources"]["limits"]["nvidia.com/gpu"] == str(plan.gpus_per_replica // plan.nodes)
    if workload["kind"] == "LeaderWorkerSet":
        assert workload["spec"]["leaderWorkerTemplate"]["size"] == plan.nodes
    assert workload["spec"]["replicas"] == spec.get("replicas", 1)

    # The spec's own settings appear once each; the user's extra args come last, untouched.
    args = server_args(workload)
    for flag, value in (("--tensor-parallel-size", plan.tensor_parallel_size),
                        ("--pipeline-parallel-size", plan.pipeline_parallel_size), ("--port", 8000)):
        assert [a for a in args if a.split("=")[0] == flag] == [f"{flag}={value}"]
    assert sum(a.startswith("--model=") for a in args) == 1
    extra = list(vd.spec.engine.extra_args)
    assert args[len(args) - len(extra):] == extra
    assert ("--trust-remote-code" in args) is bool(spec["model"].get("trustRemoteCode"))
    assert not any(a.lower().replace("_", "-").startswith(("--api-key", "--hf-token", "--trust-remote-code="))
                   for a in args), "secrets and code loading never travel in argv"

    # The environment: the operator's variables are not overridden, names are unique.
    for c in containers(workload):
        env = c.get("env") or []
        names = [e["name"] for e in env]
        assert len(names) == len(set(names)), f"duplicate env names {names}"
        user = {e.name for e in vd.spec.engine.env}
        assert not user & set(SERVICE_ENV), "a service-owned variable came from the user"
        key = [e for e in env if e["name"] == "VLLM_API_KEY"]
        assert all("value" not in e and "secretKeyRef" in e["valueFrom"] for e in key)
        assert {"name": "HF_HUB_OFFLINE", "value": "1"} in env

    # Locked-down pods, whatever the spec.
    for pod in pod_specs(workload):
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in containers(workload):
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False

    # Names and labels every kind accepts.
    for child in children:
        meta = child["metadata"]
        assert meta["namespace"] == "team-a"
        assert DNS_SUBDOMAIN.match(meta["name"]) and len(meta["name"]) <= 253, (child["kind"], meta["name"])
        for key, value in meta["labels"].items():
            assert len(value) <= 63 and LABEL_VALUE.match(value), (child["kind"], key, value)
        if child["kind"] == "Service":
            assert len(meta["name"]) <= 63 and DNS_1035_LABEL.match(meta["name"]), f"Service name {meta['name']!r}"
        if child["kind"] == "Job":  # its pods carry the name as a label value
            assert len(meta["name"]) <= 63 and LABEL_VALUE.match(meta["name"]), (child["kind"], meta["name"])
        for ref in meta.get("ownerReferences", []):
            assert ref["uid"] == "0c2f6a4e-uid" and ref["kind"] == "VLLMDeployment" and ref["name"] == name
    for pod in pod_specs(workload):
        claim = next(v for v in pod["volumes"] if v["name"] == "model-cache")["persistentVolumeClaim"]["claimName"]
        assert claim == plan.cache_claim


@PROPERTY_SETTINGS
@given(name=dns_subdomains(max_len=40), spec=crd_valid_specs())
def test_cli_render_manifests_agrees_with_the_controller_glue(name, spec):
    """`scibox-operator render` (GitOps previews) shows what the controller would apply."""
    body = vllmd(name, spec)
    labels = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.memory": "81559"}
    try:
        manifests = render_manifests(copy.deepcopy(body), config=TINY_CONFIG, gpu_labels=labels, gpus_per_node=8)
    except (InvalidSpec, PlanFailure) as exc:
        assert exc.message.strip()
        return
    assert manifests == render_manifests(copy.deepcopy(body), config=TINY_CONFIG, gpu_labels=labels, gpus_per_node=8)
    kinds = [m["kind"] for m in manifests]
    assert kinds.count("Service") == 1 and (kinds.count("Deployment") + kinds.count("LeaderWorkerSet")) == 1
    assert len({(m["kind"], m["metadata"]["name"]) for m in manifests}) == len(manifests), "no duplicate child"
    assert ("NetworkPolicy" in kinds) is bool(spec.get("networkPolicy", {}).get("enabled"))


# --- garbage in ------------------------------------------------------------------------------------

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
              st.text(max_size=30)),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)),
    max_leaves=10)

# (path, garbage) pairs aimed at every field the operator reads.
FIELD_PATHS = [
    ("model",), ("model", "name"), ("model", "revision"), ("model", "servedModelName"), ("model", "trustRemoteCode"),
    ("model", "dtype"), ("model", "quantization"), ("model", "maxModelLen"), ("model", "tokenizer"),
    ("image",), ("replicas",), ("resources",), ("resources", "gpus"), ("resources", "gpuProduct"),
    ("resources", "minGpuMemoryMiB"), ("resources", "cpu"), ("resources", "memory"), ("nodeSelector",),
    ("tolerations",), ("affinity",), ("priorityClassName",), ("parallelism", "tensorParallelSize"),
    ("parallelism", "pipelineParallelSize"), ("engine", "gpuMemoryUtilization"), ("engine", "maxNumBatchedTokens"),
    ("engine", "maxNumSeqs"), ("engine", "enablePrefixCaching"), ("engine", "extraArgs"), ("engine", "env"),
    ("cache", "size"), ("cache", "accessMode"), ("cache", "existingClaim"), ("cache", "deletionPolicy"),
    ("cache", "tokenSecretRef"), ("cache", "endpoint"), ("service", "type"), ("service", "port"),
    ("auth", "apiKeySecretRef"), ("monitoring", "interval"), ("networkPolicy", "allowedNamespaces"),
    ("networkPolicy", "allowedPodLabels"), ("rollout", "strategy"), ("rollout", "startupTimeoutSeconds"),
]
# Values chosen to break naive code: wrong types, negatives, huge numbers, control characters,
# smuggled flags, oversized strings.
NASTY_VALUES = [None, True, -1, 0, 2**63, -2**63, 1e308, float("inf"), float("nan"), "", " ", "auto", "-1",
                "x" * 10_000, "a\nb", "a\x00b", "../../etc/passwd", "--trust-remote-code", ["--trust-remote-code"],
                ["--api-key=x"], [{"name": "VLLM_API_KEY", "value": "x"}], [{"name": "A"}, {"name": "A"}],
                {"name": "x" * 300}, [1, 2], {"a": {"b": {"c": [None]}}}, "pvc://", "pvc://Bad_Claim/x",
                "org/model/extra", "gpt2", "\u202eevil", "1Gi", "Gi", "1e3"]


@PROPERTY_SETTINGS
@given(spec=crd_valid_specs(), path=st.sampled_from(FIELD_PATHS),
       value=st.one_of(st.sampled_from(NASTY_VALUES), json_values), config=configs, nodes=gpu_inventories())
def test_garbage_in_any_field_is_refused_with_a_message_never_a_crash(spec, path, value, config, nodes):
    spec = copy.deepcopy(spec)
    target = spec
    for key in path[:-1]:
        if not isinstance(target.get(key), dict):
            target[key] = {}
        target = target[key]
    target[path[-1]] = value
    outcome(vllmd("garbage", spec), config=config, nodes=nodes, shared=False)


@PROPERTY_SETTINGS
@given(spec=st.one_of(json_values, st.dictionaries(st.sampled_from(["model", "resources", "engine", "cache"]),
                                                   json_values, max_size=4)),
       config=configs)
def test_a_spec_of_any_shape_is_refused_with_a_message_never_a_crash(spec, config):
    body = vllmd("shape", spec) if isinstance(spec, dict) or spec is None else {"metadata": {}, "spec": spec}
    try:
        outcome(body, config=config, nodes=[], shared=False)
    except AttributeError as exc:  # pragma: no cover - reported with the input by hypothesis
        pytest.fail(f"spec {spec!r} crashed the parser: {exc!r}")


@PROPERTY_SETTINGS
@given(spec=crd_valid_specs(), extra=_extra_args())
def test_smuggled_flags_are_refused_by_the_operator_even_when_the_crd_lets_them_through(spec, extra):
    """The CEL rule catches the plain spellings; abbreviations, underscores, upper case and the
    forbidden code-loading flags must still be refused by the operator's own check."""
    spec = copy.deepcopy(spec)
    spec.setdefault("engine", {})["extraArgs"] = extra
    smuggled = [t for t in extra if t in SMUGGLE_TOKENS]
    try:
        vd = parse(vllmd("smuggle", spec))
    except InvalidSpec as exc:
        assert "extraArgs" in exc.message or "extra" in exc.message.lower() or "spec." in exc.message
        return
    assert not smuggled, f"{smuggled} reached the server's argv: {list(vd.spec.engine.extra_args)}"


@pytest.fixture(scope="module")
def vllm_parser():
    pytest.importorskip("vllm")
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser(description="properties"))


@pytest.mark.vllm
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(spec=crd_valid_specs(), extra=_extra_args())
def test_vllm_itself_reads_the_specs_values_whatever_extra_args_say(vllm_parser, spec, extra):
    """The real oracle: vLLM's own parser over the rendered argv yields the plan's sizes, the
    spec's trust-remote-code and no API key."""
    spec = copy.deepcopy(spec)
    spec.setdefault("engine", {})["extraArgs"] = extra
    spec["engine"].pop("env", None)
    result = outcome(vllmd("oracle", spec), config=TINY_CONFIG, nodes=[], shared=False)
    if isinstance(result, Exception):
        return
    vd, plan, children = result
    workload = next(c for c in children if c["kind"] in ("Deployment", "LeaderWorkerSet"))
    try:
        ns = vllm_parser.parse_args(server_args(workload))
    except SystemExit:
        pytest.fail(f"vLLM refuses the rendered argv {server_args(workload)}")
    assert (ns.tensor_parallel_size, ns.pipeline_parallel_size) == (plan.tensor_parallel_size,
                                                                    plan.pipeline_parallel_size)
    assert (ns.host, ns.port) == ("0.0.0.0", 8000)
    assert ns.trust_remote_code is bool(spec["model"].get("trustRemoteCode"))
    assert ns.api_key is None
    assert ns.served_model_name == [vd.spec.model.served_name]
