"""What every benchmark shares: sandboxes in their own process, timing, the JSON line."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds a process has used (Linux; None where it cannot be read)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)
    except (OSError, IndexError, ValueError):
        return None


def helpers_cpu_s() -> float:
    """User + system CPU seconds used so far by every live process this one started, and
    theirs (the sandboxes, a Prefect test server): on a machine of two cores their work
    and the measured side's share the cores, so a side's wall clock is at least half of
    both together. Linux; processes that cannot be read count nothing."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - mine
        mine |= frontier
    return round(sum(cpu_s(pid) or 0.0 for pid in mine), 2)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


@contextmanager
def serving_process(cmd: list[str], *, timeout_s: float = 120) -> Iterator[list[str]]:
    """Run a serving command (``python -m sandbox...``) in its own process, so its work does
    not share this process's interpreter with the code being measured; yields the lines it
    printed before ``Ctrl-C to stop.``, and stops it on the way out."""
    errors = tempfile.TemporaryFile(mode="w+")  # kept to explain a process that never started
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        for line in proc.stdout:
            if line.startswith("Ctrl-C") or time.monotonic() > deadline:
                break
            lines.append(line.rstrip("\n"))
        if not lines or not any(line.startswith("export ") for line in lines):
            errors.seek(0)
            lines.append("# stderr: " + errors.read()[-2000:].replace("\n", "\n# "))
        yield lines
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        errors.close()


@contextmanager
def sandbox_process(home: Path, *, skus: int, invalid: int = 0,
                    extra: list[str] | None = None) -> Iterator[dict[str, str]]:
    """Serve the sandboxes in a separate process; yields the environment pointing at them."""
    # port 0: the sandbox binds free ports itself (the finance service too: with fixed ERP
    # and wallet ports it would take its default 8703, which another benchmark may hold)
    cmd = [sys.executable, "-m", "sandbox", "--home", str(home), "--erp-port", "0",
           "--wallet-port", "0", "--seed-skus", str(skus), "--invalid",
           str(invalid), "--print-env", *(extra or [])]
    with serving_process(cmd) as lines:
        env: dict[str, str] = {}
        for line in lines:
            if line.startswith("export "):
                name, _, value = line[len("export "):].strip().partition("=")
                env[name] = value.strip("'\"")
        if "VOUCHFLOW_ERP_BASE_URL" not in env:
            said = "\n".join(line for line in lines if line.startswith("#"))
            raise RuntimeError(f"the sandbox process did not start\n{said}")
        yield env


def admin(base_url: str, path: str, body: Any = None) -> Any:
    with httpx.Client(timeout=60) as client:
        response = (client.post(base_url + path, json=body) if body is not None
                    else client.get(base_url + path))
        response.raise_for_status()
        return response.json()


def reset_wallet(env: dict[str, str]) -> None:
    with httpx.Client(timeout=60) as client:
        client.post(env["VOUCHFLOW_WALLET_BASE_URL"] + "/_sandbox/reset").raise_for_status()


@contextmanager
def timed() -> Iterator[dict[str, float]]:
    box: dict[str, float] = {}
    started = time.perf_counter()
    try:
        yield box
    finally:
        box["s"] = round(time.perf_counter() - started, 3)


def emit(result: dict[str, Any]) -> None:
    """Print the result as the last line of output, one JSON object."""
    sys.stdout.flush()
    print(json.dumps(result, default=str), flush=True)


def quiet_prefect() -> None:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
