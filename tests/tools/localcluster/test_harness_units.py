"""Unit tests of the cluster harness's pure parts (no processes started)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509

from tools.localcluster import local, nodes, pki, provisioner


def test_client_certificate_carries_user_and_groups_and_chains_to_the_ca():
    ca = pki.CertificateAuthority.create()
    pair = ca.issue("scibox-admin", ("system:masters",))
    assert pki.subject_of(pair.cert_pem) == ("scibox-admin", ("system:masters",))
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    cert.verify_directly_issued_by(ca.cert)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH not in eku


def test_serving_certificate_names_ips_and_dns():
    ca = pki.CertificateAuthority.create()
    pair = ca.issue("kube-apiserver", client=False, server_names=("127.0.0.1", "kubernetes"))
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["kubernetes"]


def test_default_nodes_are_two_h100_nodes_and_one_cpu_node():
    shapes = nodes.default_nodes()
    manifests = [nodes.node_manifest(s, i) for i, s in enumerate(shapes)]
    gpu = [m for m in manifests if m["status"]["capacity"].get("nvidia.com/gpu") == "8"]
    assert len(gpu) == 2 and len(manifests) == 3
    for m in gpu:
        labels = m["metadata"]["labels"]
        assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
        assert labels["nvidia.com/gpu.memory"] == "81559"
        assert labels["nvidia.com/gpu.count"] == "8"
        assert m["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    cpu = [m for m in manifests if "nvidia.com/gpu" not in m["status"]["capacity"]]
    assert len(cpu) == 1 and "nvidia.com/gpu.count" not in cpu[0]["metadata"]["labels"]


def test_every_node_address_is_loopback():
    for i, shape in enumerate(nodes.default_nodes()):
        for addr in nodes.node_manifest(shape, i)["status"]["addresses"]:
            if addr["type"] == "InternalIP":
                assert ipaddress.ip_address(addr["address"]).is_loopback
    assert ipaddress.ip_network(nodes.POD_CIDR).subnet_of(ipaddress.ip_network("127.0.0.0/8"))
    assert ipaddress.ip_network(local.SERVICE_CIDR).subnet_of(ipaddress.ip_network("127.0.0.0/8"))


def test_real_runner_node_is_excluded_by_kwoks_selector():
    shape = nodes.NodeShape("runner-0", gpus=1, real_runner=True)
    labels = nodes.node_manifest(shape, 0)["metadata"]["labels"]
    key, value = nodes.KWOK_NODE_SELECTOR.split("!=")
    assert labels[key] == value


@pytest.mark.parametrize("data, message", [
    ([], "non-empty"),
    ([{"name": "a"}, {"name": "a"}], "duplicate"),
    ([{"name": "Bad_Name"}], "DNS label"),
    ([{"name": "a", "gpus": -1}], "gpus"),
    ([{"name": "a", "cpu": "lots"}], "cpu"),
    ([{"name": "a", "colour": "red"}], "unknown fields"),
    (["a"], "not an object"),
])
def test_bad_node_shapes_are_refused_with_a_clear_error(data, message):
    with pytest.raises(nodes.NodeShapeError, match=message):
        nodes.shapes_from_json(data)


def test_node_shapes_load_from_json(tmp_path: Path):
    path = tmp_path / "nodes.json"
    path.write_text('[{"name": "gpu-a", "gpus": 4, "labels": {"zone": "a"}}]')
    (shape,) = nodes.load_shapes(path)
    assert shape.resources()["nvidia.com/gpu"] == "4" and shape.all_labels()["zone"] == "a"


def _pvc(**spec) -> dict:
    return {
        "metadata": {"name": "cache", "namespace": "ns1", "uid": "u-1",
                     "annotations": {"volume.kubernetes.io/storage-provisioner": provisioner.PROVISIONER}},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}},
                 "storageClassName": "local-path", **spec},
        "status": {"phase": "Pending"},
    }


def test_pv_for_claim_binds_back_to_the_claim_with_its_access_modes(tmp_path: Path):
    pv = provisioner.pv_for_claim(_pvc(), tmp_path)
    assert pv["spec"]["claimRef"] == {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                      "namespace": "ns1", "name": "cache", "uid": "u-1"}
    assert pv["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pv["spec"]["capacity"] == {"storage": "1Gi"}
    assert pv["spec"]["hostPath"]["path"] == str(tmp_path / "ns1" / "cache")


def test_only_pending_unbound_claims_of_our_class_get_volumes():
    assert provisioner.wants_volume(_pvc())
    assert not provisioner.wants_volume(_pvc(volumeName="pv-x"))
    other = _pvc(storageClassName="fast")
    other["metadata"]["annotations"] = {}
    assert not provisioner.wants_volume(other)
    bound = _pvc()
    bound["status"]["phase"] = "Bound"
    assert not provisioner.wants_volume(bound)


def test_claim_without_storage_request_is_an_error(tmp_path: Path):
    with pytest.raises(ValueError, match="requests no storage"):
        provisioner.pv_for_claim(_pvc(resources={}), tmp_path)


def test_only_our_released_delete_volumes_are_deleted():
    pv = {"metadata": {"name": "p", "annotations": {"pv.kubernetes.io/provisioned-by": provisioner.PROVISIONER}},
          "spec": {"persistentVolumeReclaimPolicy": "Delete"}, "status": {"phase": "Released"}}
    assert provisioner.should_delete(pv)
    assert not provisioner.should_delete({**pv, "status": {"phase": "Bound"}})
    assert not provisioner.should_delete({**pv, "metadata": {"name": "p", "annotations": {}}})


def test_request_totals_sum_by_verb_and_resource():
    text = "\n".join([
        "# HELP apiserver_request_total x",
        'apiserver_request_total{code="200",component="apiserver",group="",resource="pods",scope="namespace",verb="LIST",version="v1"} 3',
        'apiserver_request_total{code="500",component="apiserver",group="",resource="pods",scope="namespace",verb="LIST",version="v1"} 2',
        'apiserver_request_total{code="201",component="apiserver",group="",resource="pods",scope="namespace",verb="POST",version="v1"} 1',
        'apiserver_request_duration_seconds_count{verb="LIST",resource="pods"} 99',
    ])
    assert local.parse_request_totals(text) == {("LIST", "pods"): 5.0, ("POST", "pods"): 1.0}


def test_kubeconfig_embeds_credentials_for_its_user():
    config = local.kubeconfig_dict("https://127.0.0.1:1", b"CA", b"CERT", b"KEY", "c", "u")
    assert config["current-context"] == "c"
    assert config["users"][0]["user"]["client-certificate-data"] == "Q0VSVA=="
    assert config["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:1"


def test_a_process_that_dies_while_awaited_fails_with_its_log_tail(tmp_path: Path):
    cluster = local.Cluster(name="unit", state_dir=tmp_path / "state")
    cluster.state_dir.mkdir()
    cluster._spawn("etcd", ["sh", "-c", "echo 'bind: address already in use' >&2; exit 3"])
    with pytest.raises(local.ClusterError, match="(?s)etcd exited while waiting.*address already in use"):
        cluster._wait("etcd /health", "etcd", lambda: False, timeout=30)
    assert cluster.pid("etcd") is None


def test_down_refuses_to_remove_a_directory_that_is_not_a_cluster(tmp_path: Path):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(local.ClusterError, match="refusing"):
        local.Cluster(name="unit", state_dir=precious).down()
    assert (precious / "notes.txt").read_text() == "keep me"


def test_a_repository_go_tool_is_keyed_by_its_sources_only(tmp_path):
    from tools.localcluster import build

    (tmp_path / "go.mod").write_text("module example.local/x\n\ngo 1.25.0\n")
    (tmp_path / "main.go").write_text("package main\n\nfunc main() {}\n")
    tool = build.RepoGoTool("x", ("x",), str(tmp_path))  # an absolute source stays as is
    first = tool.version
    (tmp_path / "README.md").write_text("not a source\n")
    assert tool.version == first
    (tmp_path / "main.go").write_text("package main\n\nfunc main() { println() }\n")
    assert tool.version != first and tool.bin_dir.name == f"x-{tool.version}"
    assert build.KINDCHECK in build.ALL_TOOLS and build.ACTIONLINT in build.ALL_TOOLS, "bootstrap builds both"


def test_keda_is_built_only_when_named_so_bootstrap_can_leave_it_to_the_background(monkeypatch):
    from tools.localcluster import build

    built: list[str] = []
    monkeypatch.setattr(build, "build_tool", lambda tool: built.append(tool.name) or tool.bin_dir)
    build.build_all()
    assert "keda" not in built and {"kubernetes", "etcd", "kwok"} <= set(built)
    built.clear()
    build.build_all(["keda"])
    assert built == ["keda"]


def test_a_clusters_ports_are_distinct():
    from tools.localcluster.local import free_ports

    names = tuple(f"p{i}" for i in range(50))
    assert len(set(free_ports(names).values())) == 50
