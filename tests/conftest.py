"""Shared fixtures: each lives in tests/fixtures/ and is registered here."""

import shutil
import tempfile

pytest_plugins = [
    "tests.fixtures.kafka",
    "tests.fixtures.model",
    "tests.fixtures.kube",
]

# Measured peak of the suite's temporary files (model copies, checkpoints, brokers) with
# pyproject's tmp_path_retention_policy = "failed"; a machine with less free disk fails
# somewhere late with ENOSPC, so the header says it up front.
PEAK_DISK_GIB = 12


def pytest_report_header(config):
    free = shutil.disk_usage(tempfile.gettempdir()).free / 2**30
    line = f"disk: {free:.1f} GiB free under {tempfile.gettempdir()}; the suite needs about {PEAK_DISK_GIB} GiB"
    return line + (" (NOT ENOUGH: expect 'No space left on device')" if free < PEAK_DISK_GIB else "")
