"""A real crash: the delivery worker runs in its own process, is killed with SIGKILL during a
burst, and a new one takes over once the lease runs out. Nothing is lost; what arrives twice
arrives with the same id and the same bytes, and never out of order for its entity."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from state.db import session_scope
from state.subscriptions import subscription_lags
from tests.flows.subscriber_world import (
    check_delivery,
    covered,
    emit,
    order_events,
    subscribers,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("state_url")

WORKER_ENV = {"VOUCHFLOW_DELIVERY_LEASE_S": "0.5", "VOUCHFLOW_DELIVERY_POLL_INTERVAL_S": "0.02",
              "VOUCHFLOW_DELIVERY_REFRESH_S": "0.2", "VOUCHFLOW_DELIVERY_CONCURRENCY": "8",
              "VOUCHFLOW_DELIVERY_CHUNK_SIZE": "100"}


def start_worker() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "deliver"],
                            env={**os.environ, **WORKER_ENV},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def output(proc: subprocess.Popen[Any]) -> str:
    return proc.stdout.read().decode() if proc.stdout else ""


def test_sigkill_during_a_burst_then_restart_loses_nothing(engine):
    with subscribers(engine, {"a": ["*"], "b": ["order_line.*"]}) as subs:
        for sub in subs.values():
            sub.sandbox.slow(3)  # so that the kill lands while requests are in flight
        worker = start_worker()
        try:
            emit(engine, order_events(0, 70, per_order=3))  # the burst: 210 events
            want = {name: len(covered(engine, sub)) for name, sub in subs.items()}
            wait_for(lambda: len(subs["a"].sandbox.received()) >= 40
                     or worker.poll() is not None, 60, "the worker to get going")
            assert worker.poll() is None, output(worker)
        finally:
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait(timeout=30)
        assert worker.returncode == -signal.SIGKILL
        partial = {name: len(sub.sandbox.received()) for name, sub in subs.items()}
        assert partial["a"] < want["a"], "the kill came too late to prove anything"

        restarted = start_worker()
        try:
            wait_for(lambda: all(len(sub.sandbox.received()) >= want[name]
                                 for name, sub in subs.items())
                     or restarted.poll() is not None, 90, "the restarted worker to catch up")
            assert restarted.poll() is None, output(restarted)
        finally:
            restarted.send_signal(signal.SIGTERM)  # a clean stop: it finishes its chunk
            out, _ = restarted.communicate(timeout=60)
        assert restarted.returncode == 0, out.decode()
        for sub in subs.values():
            check_delivery(engine, sub)  # all there, same bytes for a repeat, in order
        repeats = sum(n - 1 for sub in subs.values() for n in sub.sandbox.received().values())
        delivered = sum(sub.sandbox.effects.count("event.received") for sub in subs.values())
        assert delivered == sum(want.values()) + repeats
        with session_scope(engine) as s:
            assert all((lag.backlog, lag.retrying, lag.dead) == (0, 0, 0)
                       for lag in subscription_lags(s))
