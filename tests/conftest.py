"""Shared fixtures. Each real dependency lives in its own plugin module under tests/fixtures/."""

pytest_plugins = [
    "tests.fixtures.cluster",
    "tests.fixtures.vllm",
    "tests.fixtures.hub",
    "tests.fixtures.operator",
    "tests.fixtures.prometheus",
    "tests.fixtures.lws",
]


def pytest_collection_modifyitems(config, items):
    """Tests that install the LeaderWorkerSet CRD (fixture `lws`, session-wide once started) run
    last, so that the tests of a cluster without it see it absent."""
    items[:] = [i for i in items if "lws" not in getattr(i, "fixturenames", ())] + \
               [i for i in items if "lws" in getattr(i, "fixturenames", ())]
    # KEDA's build (minutes) runs beside the suite (scripts/test.sh): its tests come last.
    items[:] = [i for i in items if i.get_closest_marker("keda") is None] + \
               [i for i in items if i.get_closest_marker("keda") is not None]
