"""The lean HTTP/1.1 transport the ERP client sends through (connectors.http.Http1Transport)
and the lanes that send a connector's requests under its concurrency limiter.

The transport is tested against a small h11 server run here, whose behaviour each path
chooses (keep-alive, chunked, gzip, closing, slow), and which counts the connections it
accepted; the lanes against an httpx.MockTransport that holds requests until told."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h11
import httpx
import pytest

from connectors.errors import TransportError
from connectors.http import NO_RETRY, Http1Transport, HttpConnector, RetryPolicy, Timeouts
from connectors.limits import ConcurrencyLimiter


@dataclass
class Server:
    port: int = 0
    accepted: int = 0
    open_now: int = 0
    most_open: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        self.writers.append(writer)
        conn = h11.Connection(our_role=h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return
                if not isinstance(event, h11.Request):
                    continue
                body = b""
                while not isinstance(ev := conn.next_event(), h11.EndOfMessage):
                    if ev is h11.NEED_DATA:
                        conn.receive_data(await reader.read(65536))
                    elif isinstance(ev, h11.Data):
                        body += ev.data
                path = event.target.decode()
                if path.startswith("/slow"):
                    await asyncio.sleep(1.0)
                if path.startswith("/pause"):
                    await asyncio.sleep(0.05)
                headers = [(b"content-type", b"text/plain")]
                payload = b"echo:" + body if body else b"ok " + path.encode()
                chunked = path.startswith("/chunked")
                if path.startswith("/gzip"):
                    payload = gzip.compress(b"unzipped")
                    headers.append((b"content-encoding", b"gzip"))
                if path.startswith("/close"):
                    headers.append((b"connection", b"close"))
                if chunked:
                    headers.append((b"transfer-encoding", b"chunked"))
                else:
                    headers.append((b"content-length", str(len(payload)).encode()))
                out = conn.send(h11.Response(status_code=200, headers=headers))
                if chunked:
                    out += conn.send(h11.Data(data=payload[:3])) + conn.send(h11.Data(data=payload[3:]))
                else:
                    out += conn.send(h11.Data(data=payload))
                out += conn.send(h11.EndOfMessage())
                writer.write(out)
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.RemoteProtocolError):
            return
        finally:
            self.open_now -= 1
            writer.close()

    def drop_idle(self) -> None:
        """Close every connection from the server's side (as a keep-alive timeout would)."""
        for w in self.writers:
            w.close()


@asynccontextmanager
async def serving() -> AsyncIterator[Server]:
    server = Server()
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = srv.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        srv.close()
        server.drop_idle()


def client(base: str, **kw) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, transport=Http1Transport(**kw), timeout=5)


def test_requests_reuse_one_keep_alive_connection():
    async def go():
        async with serving() as server, client(server.url) as c:
            texts = [(await c.get(f"/ok/{i}")).text for i in range(20)]
            posted = await c.post("/post", content=b"x" * 200_000)
            return server.accepted, texts, posted.text

    accepted, texts, posted = asyncio.run(go())
    assert accepted == 1
    assert texts == [f"ok /ok/{i}" for i in range(20)]
    assert posted == "echo:" + "x" * 200_000


def test_chunked_and_gzip_answers_are_decoded():
    async def go():
        async with serving() as server, client(server.url) as c:
            return (await c.get("/chunked")).text, (await c.get("/gzip")).text

    assert asyncio.run(go()) == ("ok /chunked", "unzipped")


def test_a_closed_connection_is_not_reused():
    async def go():
        async with serving() as server, client(server.url) as c:
            first = (await c.get("/close")).text          # the server says Connection: close
            second = (await c.get("/ok")).text
            server.drop_idle()                            # the keep-alive timeout, server side
            await asyncio.sleep(0.05)
            third = (await c.get("/ok/again")).text
            return server.accepted, [first, second, third]

    accepted, texts = asyncio.run(go())
    assert texts == ["ok /close", "ok /ok", "ok /ok/again"]
    assert accepted == 3


def test_no_more_connections_than_allowed():
    async def go():
        async with serving() as server, client(server.url, max_connections=2) as c:
            answers = await asyncio.gather(*(c.get(f"/pause/{i}") for i in range(5)))
            return server.most_open, [a.status_code for a in answers]

    most_open, statuses = asyncio.run(go())
    assert most_open == 2 and statuses == [200] * 5


def test_timeouts_and_refusals_are_httpx_errors():
    async def go():
        async with serving() as server:
            async with httpx.AsyncClient(base_url=server.url, transport=Http1Transport(),
                                         timeout=httpx.Timeout(5, read=0.1)) as c:
                with pytest.raises(httpx.ReadTimeout):
                    await c.get("/slow")
                assert (await c.get("/ok")).text == "ok /ok"  # a fresh connection
            port = server.port
        async with client(f"http://127.0.0.1:{port}") as c:
            with pytest.raises(httpx.ConnectError):
                await c.get("/ok")

    asyncio.run(go())


def _self_signed(tmp_path) -> tuple[str, str]:
    """A certificate for localhost, signed by itself (cert file, key file)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


def test_https_with_the_given_trust_and_refused_without_it(tmp_path):
    import ssl

    cert_file, key_file = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_file, key_file)
    trusting = ssl.create_default_context(cafile=cert_file)

    async def go():
        server = Server()
        srv = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=server_ctx)
        port = srv.sockets[0].getsockname()[1]
        try:
            async with httpx.AsyncClient(base_url=f"https://localhost:{port}", timeout=5,
                                         transport=Http1Transport(ssl_context=trusting)) as c:
                texts = [(await c.get(f"/tls/{i}")).text for i in range(3)]
            async with httpx.AsyncClient(base_url=f"https://localhost:{port}", timeout=5,
                                         transport=Http1Transport()) as c:
                with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                    await c.get("/untrusted")
            return texts, server.accepted
        finally:
            srv.close()
            server.drop_idle()

    texts, accepted = asyncio.run(go())
    assert texts == ["ok /tls/0", "ok /tls/1", "ok /tls/2"]
    assert accepted == 1  # one TLS connection kept alive for the three requests


def test_a_transport_used_by_one_event_loop_after_another():
    """Connections belong to the loop that opened them: a later loop opens its own."""
    import threading

    server = Server()
    ready, stop = threading.Event(), threading.Event()

    def serve() -> None:
        async def main() -> None:
            srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
            server.port = srv.sockets[0].getsockname()[1]
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.01)
            srv.close()
        asyncio.run(main())

    thread = threading.Thread(target=serve)
    thread.start()
    ready.wait(5)
    client = httpx.AsyncClient(base_url=server.url, transport=Http1Transport())

    async def use(tag: str) -> str:
        return (await client.get(f"/{tag}")).text  # the client stays open between loops

    try:
        assert asyncio.run(use("first")) == "ok /first"
        assert asyncio.run(use("second")) == "ok /second"
        assert asyncio.run(use("third")) == "ok /third"
        asyncio.run(client.aclose())
    finally:
        stop.set()
        thread.join(5)
    assert server.accepted == 3


def test_a_cancelled_request_leaves_the_transport_usable():
    async def go():
        async with serving() as server, client(server.url, max_connections=1) as c:
            slow = asyncio.create_task(c.get("/slow"))
            await asyncio.sleep(0.05)
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            return (await c.get("/ok")).text

    assert asyncio.run(go()) == "ok /ok"


# ---- lanes ---------------------------------------------------------------------------------

class Held:
    """A MockTransport handler that answers only when released, counting what it holds."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.started: list[str] = []
        self.holding = 0
        self.most = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.started.append(request.url.path)
        self.holding += 1
        self.most = max(self.most, self.holding)
        try:
            if request.url.path.startswith("/held"):
                await self.gate.wait()
            if request.url.path.startswith("/boom"):
                raise httpx.ConnectError("refused", request=request)
            return httpx.Response(200, text=request.url.path)
        finally:
            self.holding -= 1


def connector(handler: Held, limit: int, retry: RetryPolicy = NO_RETRY) -> HttpConnector:
    return HttpConnector("http://lanes.test", transport=httpx.MockTransport(handler),
                         limiter=ConcurrencyLimiter(limit), retry=retry,
                         timeouts=Timeouts(read=5))


def test_lanes_keep_to_the_limit_and_fill_it():
    async def go():
        handler = Held()
        async with connector(handler, 3) as c:
            sends = [asyncio.create_task(c.request("GET", f"/held/{i}")) for i in range(10)]
            while handler.holding < 3:
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.02)
            assert handler.holding == 3 and c.limiter.in_use == 3
            handler.gate.set()
            answers = await asyncio.gather(*sends)
            assert [a.text for a in answers] == [f"/held/{i}" for i in range(10)]
            assert handler.most == 3 and c.limiter.in_use == 0

    asyncio.run(go())


def test_a_cancelled_caller_takes_its_request_with_it():
    async def go():
        handler = Held()
        async with connector(handler, 1) as c:
            first = asyncio.create_task(c.request("GET", "/held/first"))
            queued = asyncio.create_task(c.request("GET", "/held/queued"))
            await asyncio.sleep(0.02)
            queued.cancel()                   # waiting for the slot: never sent
            first.cancel()                    # in flight: aborted, its lane replaced
            for task in (first, queued):
                with pytest.raises(asyncio.CancelledError):
                    await task
            handler.gate.set()
            after = await c.request("GET", "/after")
            assert after.text == "/after"
            assert handler.started == ["/held/first", "/after"]
            assert c.limiter.in_use == 0

    asyncio.run(go())


def test_one_failing_request_does_not_stop_the_others():
    async def go():
        handler = Held()
        handler.gate.set()
        async with connector(handler, 2) as c:
            results = await asyncio.gather(
                *(c.request("GET", "/boom" if i == 3 else f"/ok/{i}") for i in range(8)),
                return_exceptions=True)
            assert isinstance(results[3], TransportError)
            assert [r.text for i, r in enumerate(results) if i != 3] == [
                f"/ok/{i}" for i in range(8) if i != 3]
            assert c.limiter.in_use == 0

    asyncio.run(go())
