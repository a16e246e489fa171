"""The compile cache (VLLM_CACHE_ROOT) on the model's cache claim: its key, its mount, and the
load-format knob that must not change it. Pure; the real warm start is in tests/e2e and the bench."""

from __future__ import annotations

import copy

import pytest

from scibox_operator.api.names import COMPILE_CACHE_MOUNT, COMPILE_CACHE_SUBDIR
from scibox_operator.api.spec import InvalidSpec, parse
from scibox_operator.engine.vllm_args import LOAD_FORMATS, validate_env
from scibox_operator.planning.serving_plan import ServingPlan, cache_claim_name
from scibox_operator.render.compile_cache import compile_cache_key, vllm_version_of_image
from scibox_operator.render.deployment import render_deployment
from scibox_operator.render.leaderworkerset import render_leader_worker_set


def body(name="m", **spec):
    base = {"model": {"name": "org/model", "maxModelLen": 4096}}
    base.update(spec)
    return {"apiVersion": "scibox.io/v1alpha1", "kind": "VLLMDeployment",
            "metadata": {"name": name, "namespace": "ns", "uid": "uid-1", "generation": 1}, "spec": base}


def plan_for(vd, tp=1, image="ghcr.io/scibox/vllm:0.1.0-vllm0.32.0", gpu="NVIDIA-L4"):
    return ServingPlan(tp, 1, tp, "test", cache_claim_name(vd, False), False, "10Gi", image, gpu_product=gpu)


def container(manifest):
    return manifest["spec"]["template"]["spec"]["containers"][0]


def compile_subpath(manifest):
    mounts = [m for m in container(manifest)["volumeMounts"] if m["mountPath"] == COMPILE_CACHE_MOUNT]
    assert len(mounts) == 1
    return mounts[0]["subPath"]


def render(spec_body, **plan_kw):
    vd = parse(spec_body)
    return render_deployment(vd, plan_for(vd, **plan_kw))


def test_the_server_writes_vllms_cache_only_into_its_keyed_folder_of_the_claim():
    manifest = render(body())
    c = container(manifest)
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["VLLM_CACHE_ROOT"] == COMPILE_CACHE_MOUNT
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    # the weights stay read-only; the only writable mount of the claim is the compile folder
    assert mounts["/models"]["readOnly"] is True
    claim_mounts = [m for m in c["volumeMounts"] if m["name"] == "model-cache"]
    writable = [m for m in claim_mounts if not m.get("readOnly")]
    assert [m["mountPath"] for m in writable] == [COMPILE_CACHE_MOUNT]
    assert writable[0]["subPath"].startswith(COMPILE_CACHE_SUBDIR + "/vllm0.32.0-")
    assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_same_config_same_folder_so_a_second_pod_and_a_restart_start_warm():
    a = compile_subpath(render(body(name="a")))
    # another name, replicas, an environment variable vLLM/torch do not read: the same graph
    assert a == compile_subpath(render(body(name="b", replicas=3, engine={"env": [{"name": "X", "value": "1"}]})))
    assert a == compile_subpath(render(body(name="c", replicas=4)))
    assert a == compile_subpath(render(body(name="d", model={"name": "org/model", "maxModelLen": 4096,
                                                               "servedModelName": "other"})))


@pytest.mark.parametrize("change", [
    {"model": {"name": "org/other", "maxModelLen": 4096}},
    {"model": {"name": "org/model", "maxModelLen": 4096, "revision": "v2"}},
    {"model": {"name": "org/model", "maxModelLen": 2048}},
    {"model": {"name": "org/model", "maxModelLen": 4096, "dtype": "float16"}},
    {"model": {"name": "org/model", "maxModelLen": 4096, "quantization": "fp8"}},
    {"engine": {"kvCacheDtype": "fp8"}},
    {"engine": {"maxNumSeqs": 8}},
    {"engine": {"maxNumBatchedTokens": 1024}},
    {"engine": {"extraArgs": ["--enforce-eager"]}},
    {"engine": {"extraArgs": ["--compilation-config", '{"level": 3}']}},
    {"engine": {"env": [{"name": "VLLM_USE_V1", "value": "1"}]}},
    {"engine": {"env": [{"name": "TORCHINDUCTOR_MAX_AUTOTUNE", "value": "1"}]}},
    {"engine": {"env": [{"name": "OMP_NUM_THREADS", "value": "2"}]}},
])
def test_a_config_that_changes_the_graph_gets_another_folder(change):
    assert compile_subpath(render(body(**change))) != compile_subpath(render(body()))


def test_vllm_build_parallelism_and_gpu_are_in_the_key():
    base = compile_subpath(render(body()))
    assert compile_subpath(render(body(), image="ghcr.io/scibox/vllm:0.1.0-vllm0.33.0")) != base
    assert compile_subpath(render(body(), image="ghcr.io/scibox/vllm:0.1.1-vllm0.32.0")) != base
    assert compile_subpath(render(body(), tp=2)) != base
    assert compile_subpath(render(body(), gpu="NVIDIA-H100-80GB-HBM3")) != base


def test_key_function_is_deterministic_and_ignores_only_neutral_flags():
    kw = dict(image="vllm/vllm-openai:v0.32.0", model="m", revision=None, gpu_product=None, env={})
    k = compile_cache_key(args=["--model=/models/m", "--host=0.0.0.0", "--port=8000", "--dtype=bfloat16"], **kw)
    assert k == compile_cache_key(args=["--model=/models/m", "--host", "127.0.0.1", "--port=9",
                                        "--served-model-name", "x", "--dtype=bfloat16"], **kw)
    assert k.startswith("vllm0.32.0-")
    assert k != compile_cache_key(args=["--model=/models/m", "--dtype=float16"], **kw)
    # a neutral flag's value is skipped, not the next flag
    assert compile_cache_key(args=["--host", "--enforce-eager"], **kw) != compile_cache_key(args=[], **kw)
    assert compile_cache_key(args=[], **{**kw, "revision": "main"}) == compile_cache_key(args=[], **kw)


@pytest.mark.parametrize("image,version", [
    ("ghcr.io/scibox/vllm:0.1.0-vllm0.32.0", "0.32.0"), ("vllm/vllm-openai:v0.32.1", "0.32.1"),
    ("registry:5000/vllm", None), ("img:1", None), ("reg:5000/x/vllm:vllm-0.30.0@sha256:ab", "0.30.0")])
def test_vllm_version_from_the_image_tag(image, version):
    assert vllm_version_of_image(image) == version
    assert compile_cache_key(image=image, model="m", revision=None, gpu_product=None, args=[], env={}) \
        .startswith(f"vllm{version}-" if version else "image-")


def test_pvc_models_get_no_compile_mount_and_stay_read_only():
    c = container(render(body(model={"name": "pvc://claim/path"})))
    assert "VLLM_CACHE_ROOT" not in {e["name"] for e in c["env"]}
    assert all(m["mountPath"] != COMPILE_CACHE_MOUNT for m in c["volumeMounts"])
    vd = parse(body(model={"name": "pvc://claim/path"}))
    vol = next(v for v in render_deployment(vd, plan_for(vd))["spec"]["template"]["spec"]["volumes"]
               if v["name"] == "model-cache")
    assert vol["persistentVolumeClaim"]["readOnly"] is True


def test_the_multi_node_group_mounts_the_same_folder_on_leader_and_workers():
    vd = parse(body())
    lws = render_leader_worker_set(vd, plan_for(vd))
    single = compile_subpath(render_deployment(vd, plan_for(vd)))
    for role in ("leaderTemplate", "workerTemplate"):
        tmpl = lws["spec"]["leaderWorkerTemplate"][role]
        mounts = [m for m in tmpl["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] == COMPILE_CACHE_MOUNT]
        assert [m["subPath"] for m in mounts] == [single]


def test_users_cannot_point_vllm_cache_root_elsewhere():
    assert validate_env({"VLLM_CACHE_ROOT": "/tmp/x"})
    with pytest.raises(InvalidSpec):
        parse(body(engine={"env": [{"name": "VLLM_CACHE_ROOT", "value": "/models/other"}]}))


# --- load format ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", LOAD_FORMATS)
def test_load_format_is_rendered_and_keeps_the_compile_folder(fmt):
    manifest = render(body(engine={"loadFormat": fmt}))
    assert f"--load-format={fmt}" in container(manifest)["args"]
    assert compile_subpath(manifest) == compile_subpath(render(body()))


def test_load_format_edit_adds_and_removes_the_flag():
    with_fmt = container(render(body(engine={"loadFormat": "runai_streamer"})))["args"]
    without = container(render(body()))["args"]
    assert "--load-format=runai_streamer" in with_fmt
    assert not any(a.startswith("--load-format") for a in without)


@pytest.mark.parametrize("bad", [{"loadFormat": "dummy"}, {"loadFormat": "tensorizer"},
                                 {"extraArgs": ["--load-format", "dummy"]}, {"extraArgs": ["--load-form=pt"]}])
def test_load_format_outside_the_field_or_unsupported_is_refused(bad):
    with pytest.raises(InvalidSpec):
        parse(body(engine=copy.deepcopy(bad)))


def test_the_twice_mounted_claim_is_compared_mount_by_mount_so_a_steady_pass_writes_nothing():
    from scibox_operator.reconcile.diff import contains, needs_apply, stamped

    manifest = stamped(render(body()))
    assert not needs_apply(manifest, manifest)
    edited = copy.deepcopy(manifest)
    mounts = container(edited)["volumeMounts"]
    next(m for m in mounts if m["mountPath"] == "/models")["readOnly"] = False  # a hand edit
    assert not contains(edited, manifest)
    assert needs_apply(manifest, edited)
