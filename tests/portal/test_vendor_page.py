"""The vendor page in headless Chromium (driven over the DevTools protocol): sign in with the
token, upload a codes file through the file input, see the refused rows and the statement."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import pytest

from portal.app import create_app
from sandbox.core import serve
from state.crypto import Keyring
from state.db import get_engine
from tests.state.procurement_world import codes_csv, seed_catalog, vendor_with_po

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.usefixtures("state_url"),
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install -y chromium)"),
]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Any]:
    """The page is the same on every database: SQLite only."""
    from tests.conftest import _sqlite_engine

    yield from _sqlite_engine(tmp_path)


class Page:
    """The least of the DevTools protocol a test needs: evaluate, set a file input, wait."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None)
        self.ids = count(1)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=30))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def js(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, awaitPromise=True,
                           returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 20) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"never true: {expression}")

    def set_file(self, selector: str, path: Path) -> None:
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.send("DOM.setFileInputFiles", nodeId=node, files=[str(path)])


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[str]:
    profile = tmp_path / "chromium"
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-dev-shm-usage", "--no-first-run",
         "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        marker = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not marker.exists() or not marker.read_text().strip():
            assert proc.poll() is None and time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{marker.read_text().splitlines()[0]}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_sign_in_upload_and_statement_in_the_page(browser: str, tmp_path: Path):
    engine = get_engine()
    seed_catalog(engine)
    party = vendor_with_po(engine, Keyring.load(), "Page Vendor", quantity=5)
    upload = tmp_path / "december.csv"
    upload.write_bytes(codes_csv(["PAGECODE0001,,", "PAGECODE0001,,", "PAGECODE0002,,"]))
    with serve(create_app(sites=dict)) as served:
        target = httpx.get(f"{browser}/json/list").json()
        page = Page(next(t for t in target if t["type"] == "page")["webSocketDebuggerUrl"])
        page.send("Page.enable")
        page.send("Page.navigate", url=f"{served.base_url}/vendor/")
        page.wait("document.readyState === 'complete' && !!document.getElementById('token')")

        page.js("document.getElementById('token').value = 'vfv_wrong'")
        page.js("document.getElementById('signin-button').click()")
        assert "Sign-in failed" in page.wait(
            "document.getElementById('signin-error').textContent")

        page.js(f"document.getElementById('token').value = {json.dumps(party.token)}")
        page.js("document.getElementById('signin-button').click()")
        assert page.wait("document.getElementById('vendor-name').textContent") == "Page Vendor"
        options = page.wait("[...document.querySelectorAll('#po-line option')]"
                            ".map(o => o.value)")
        assert options == [f"{party.po_no}/1"]

        page.set_file("#codes-file", upload)
        page.js("document.getElementById('upload-codes').click()")
        summary = page.wait("(t => t.includes('accepted') && t)"
                            "(document.getElementById('result-summary').textContent)")
        assert "2 of 3 rows accepted, 1 refused" in summary
        rows = page.wait("[...document.querySelectorAll('#result-rows tbody tr')]"
                         ".map(r => [...r.cells].map(c => c.textContent))")
        assert rows[0][:2] == ["3", "duplicate_in_file"] and "repeats row 2" in rows[0][2]
        statement = page.wait(
            "(r => r.length > 1 && r)([...document.querySelectorAll('#statement tbody tr')]"
            ".map(r => r.cells[0].textContent))")
        assert "receipt" in statement and "purchase order" in statement
        assert "PAGECODE0001" not in page.js("document.body.innerText")
        page.ws.close()
