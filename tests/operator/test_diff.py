from scibox_operator.reconcile.diff import contains, needs_apply


def test_server_defaults_and_foreign_fields_do_not_count_as_drift():
    desired = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "n", "labels": {"a": "1"}},
               "spec": {"ports": [{"name": "http", "port": 80}], "type": "ClusterIP"}}
    live = {"metadata": {"name": "s", "namespace": "n", "labels": {"a": "1", "extra": "x"}, "uid": "u"},
            "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80}],
                     "type": "ClusterIP", "clusterIP": "127.96.0.1"}}
    assert not needs_apply(desired, live)


def test_changed_or_removed_fields_count_as_drift():
    desired = {"metadata": {"name": "d", "labels": {"a": "1"}}, "spec": {"replicas": 1, "x": [1, 2]}}
    assert needs_apply(desired, None)
    assert needs_apply(desired, {"metadata": {"labels": {}}, "spec": {"replicas": 1, "x": [1, 2]}})
    assert needs_apply(desired, {"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 3, "x": [1, 2]}})
    assert needs_apply(desired, {"metadata": {"labels": {"a": "1"}}, "spec": {"replicas": 1, "x": [2, 1]}})


def test_named_list_items_match_by_name_and_booleans_are_not_numbers():
    assert contains([{"name": "b", "v": 2}, {"name": "a", "v": 1}], [{"name": "a", "v": 1}])
    assert not contains([{"name": "a", "v": 2}], [{"name": "a", "v": 1}])
    assert not contains({"x": 1}, {"x": True})
    assert contains({"x": 1.0}, {"x": 1})
