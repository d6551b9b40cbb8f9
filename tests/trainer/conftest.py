"""The trainer tests publish into the session's model store: each test's versions are deleted
when it ends (about 0.5 GB apiece; the suite's disk peak), unless it failed."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def drop_published_versions(request):
    if "m0" not in request.fixturenames:
        yield
        return
    store, _ = request.getfixturevalue("m0")
    before = {m.version_id for m in store.list()}
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        return  # kept to look at
    for manifest in store.list():
        if manifest.version_id not in before:
            store.delete(manifest.version_id)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report
