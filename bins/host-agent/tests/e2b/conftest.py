"""Fixtures of the E2B SDK suite: one long-lived sandbox shared by the tests
that only need a sandbox, and a unique id that tags every sandbox this run
creates (so list filters see only ours).

Run against a host agent with E2B_API_KEY, E2B_API_URL and E2B_SANDBOX_URL
set; `cargo test -p host-agent --test e2b` does all of it.
"""

import os
import uuid

import pytest
from e2b import Sandbox

REQUIRED_ENV = ("E2B_API_KEY", "E2B_API_URL", "E2B_SANDBOX_URL")


def pytest_configure(config):
    missing = [name for name in REQUIRED_ENV if not os.environ.get(name)]
    if missing:
        raise pytest.UsageError(
            f"set {', '.join(missing)} to point the SDK at a Petrel host agent"
        )


@pytest.fixture(scope="session")
def run_id():
    return uuid.uuid4().hex[:12]


@pytest.fixture(scope="session")
def sbx(run_id):
    sandbox = Sandbox.create(
        metadata={"suite": run_id, "role": "main"},
        envs={"SUITE_VAR": "from-create"},
        timeout=900,
    )
    yield sandbox
    sandbox.kill()
