"""Shared test setup: hypothesis profiles, and a fixture that refuses network connections.

Hypothesis profiles
-------------------
- ``ci`` (loaded when the environment variable ``CI`` is set, as CI services do: ``CI=true``):
  ``derandomize=True`` (the examples are a fixed function of each test, so every run of the
  suite checks the same cases), ``database=None`` (nothing remembered between runs),
  ``print_blob=True`` (a failure prints the blob that reproduces it), no deadline, and a
  fixed moderate ``max_examples``.
- ``dev`` (otherwise): random exploration with the default example database
  (``.hypothesis/``), so local runs keep finding new cases and replay the ones they found.

``HYPOTHESIS_PROFILE=ci|dev`` picks one explicitly. Neither profile has a deadline or the
``too_slow`` health check: how fast a shared or slow machine runs an example is not a property
of the code. A test may set its own ``max_examples`` (``@settings(max_examples=...)``); it must
not set ``database`` or ``derandomize=False``, which would undo the ``ci`` profile.

The rule: a failing example found anywhere (a local run, CI, a bug report) is added to its test
as an explicit ``@example(...)``, so that it is checked on every run from then on, under both
profiles, whatever the random exploration draws.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    print_blob=True,
    deadline=None,
    max_examples=50,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _profile() -> str:
    chosen = os.environ.get("HYPOTHESIS_PROFILE")
    if chosen:
        return chosen
    return "ci" if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no") else "dev"


settings.load_profile(_profile())


@pytest.fixture
def no_network(monkeypatch) -> list:
    """Record (and refuse) every socket connection attempt; the list of addresses tried.

    "Fails at once" without a clock: a test asserts that no connection was even tried."""
    import socket

    attempts: list = []

    def connect(self, address, *args):
        attempts.append(address)
        raise OSError("connection attempt refused by the test")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect)
    return attempts
