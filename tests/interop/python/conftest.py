"""Shared fixtures: the generated stubs on the import path, and a broker per
test module that is always stopped, killed if it must be."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

GEN = Path(__file__).resolve().parent / "gen"
if not (GEN / "caseshare" / "v1" / "events_pb2.py").is_file():
    raise RuntimeError(f"no generated stubs in {GEN}: run tests/interop/python/run.sh")
sys.path.insert(0, str(GEN))

import harness  # noqa: E402  (needs gen/ on the path)


@pytest.fixture(scope="session")
def broker_bin() -> Path:
    path = harness.broker_binary()
    if not path.is_file():
        pytest.exit(f"caseshare binary not found: {path} (set CASESHARE_BIN)", returncode=2)
    return path


@pytest.fixture(scope="module")
def broker(broker_bin, tmp_path_factory):
    """A running broker on a fresh data dir. Teardown sends SIGTERM and
    requires exit code 0 unless a test already stopped it; whatever happens
    the process does not outlive the module."""
    b = harness.Broker(broker_bin, tmp_path_factory.mktemp("broker"))
    try:
        yield b
        if b.running():
            code = b.terminate()
            assert code == 0, f"broker exited {code} on SIGTERM; log:\n{b.log()}"
    finally:
        b.kill()


@pytest.fixture(scope="module")
def admin(broker):
    return broker.connect(harness.ADMIN)


@pytest.fixture(scope="module")
def school(broker):
    return broker.connect(harness.SCHOOL)


@pytest.fixture(scope="module")
def social_care(broker):
    return broker.connect(harness.SOCIAL_CARE)


@pytest.fixture(scope="module")
def health(broker):
    return broker.connect(harness.HEALTH)
