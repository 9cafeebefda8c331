"""The Prefect UI as an operator sees it, in headless Chromium (Debian's ``chromium``): the
vouchflow deployments, a finished run and its artifact; a screenshot is kept.

The test installs nothing: ``make test`` installs chromium when it is missing. Without it the
test fails under CI=true and is skipped elsewhere."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import IN_CI
from tests.server.conftest import ROOT, PrefectServer

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def chromium() -> str:
    if CHROMIUM is None:
        message = "no chromium on PATH (Debian: apt-get install -y chromium; make test does it)"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return CHROMIUM


def browse(chromium: str, url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The page's DOM after its scripts ran (and a screenshot), as visible text."""
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-dev-shm-usage",
            "--no-first-run", f"--user-data-dir={profile}", "--window-size=1400,900",
            "--virtual-time-budget=20000", "--dump-dom"]
    if screenshot is not None:
        args.append(f"--screenshot={screenshot}")
    done = subprocess.run([*args, url], capture_output=True, text=True, timeout=120,
                          check=False, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    html = re.sub(r"<script.*?</script>|<style.*?</style>", " ", done.stdout, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


async def finished_run_with_artifact(server: PrefectServer) -> tuple[Any, Any]:
    """A completed sync-catalog run and its counts table (one is run if none is there)."""
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment

    async with server.client() as client:
        for _ in range(2):
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
                    any_=["sync-catalog-counts"])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.COMPLETED]))), limit=1)
            if artifacts:
                return await client.read_flow_run(artifacts[0].flow_run_id), artifacts[0]
            run = await run_deployment("sync-catalog/sync-catalog-site",
                                       parameters={"sites": ["hk1"]}, timeout=0)
            await server.wait_for_runs([run.id], timeout_s=180)
    raise AssertionError("no finished sync-catalog run with its artifact")


def test_the_prefect_ui_shows_the_deployments_and_a_finished_run_with_its_artifact(
        prefect_server: PrefectServer, chromium: str, tmp_path: Path) -> None:
    server = prefect_server
    run, artifact = asyncio.run(finished_run_with_artifact(server))
    profile = tmp_path / "chromium-profile"

    # the deployments page: as many as prefect.yaml declares (listed ten to a page, A to Z)
    page = browse(chromium, f"{server.ui_url}/deployments", profile)
    names = sorted(d["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())[
        "deployments"])
    assert f"{len(names)} Deployments" in page, page[:2000]
    missing = [n for n in names[:5] if f" {n} " not in page]
    assert not missing, f"{missing} not on the first page\n{page[:2000]}"
    assert "vouchflow" in page and "Every minute" in page

    page = browse(chromium, f"{server.ui_url}/runs/flow-run/{run.id}", profile)
    assert run.name in page and "Completed" in page and "sync-catalog" in page, page[:2000]

    shot = tmp_path / "artifact.png"
    page = browse(chromium, f"{server.ui_url}/artifacts/artifact/{artifact.id}", profile,
                  screenshot=shot)
    assert "sync-catalog-counts" in page and run.name in page, page[:2000]
    assert "pushed" in page and "read from ERP" in page  # the table's rows
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000
