"""Connection hygiene of the real server (uvicorn with service/http_protocol.py, as `python -m service` runs
it) on loopback, with fake models: idle sockets, slow or endless headers, bodies never sent, client
disconnects. Fast tier: nothing here is about a model's answers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time

import httpx
import psutil
import pytest
import uvicorn

from bench.harness import free_port
from service.app import create_app
from service.http_protocol import protocol_for
from service.quota import DISCARD_SECONDS
from service.settings import Settings
from tests.conftest import DEFAULT_ATTACK, DEFAULT_CVSS
from tests.fakes import FAKES

TIMEOUT_S = 1.0  # header, body and keep-alive timeouts of the server under test
KEY = "test-key-0123456789"


class _Server:
    def __init__(self, **settings) -> None:
        base = {"cvss_artifact": DEFAULT_CVSS, "attack_artifact": DEFAULT_ATTACK, "api_keys": KEY}
        timeouts = {"http_header_timeout_s": TIMEOUT_S, "http_body_timeout_s": TIMEOUT_S, "http_keep_alive_s": 1}
        self.settings = Settings(**{**base, **timeouts, **settings})
        self.app = create_app(self.settings, model_classes=FAKES)
        self.port = free_port()
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            access_log=False,
            http=protocol_for(self.settings),
            timeout_keep_alive=self.settings.http_keep_alive_s,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    @property
    def open_connections(self) -> int:
        return len(self.server.server_state.connections)


@pytest.fixture(scope="module")
def server(base_model):
    with _Server() as s:
        yield s


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(OSError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _wait_closed(server: _Server, baseline: int, within: float) -> float:
    t0 = time.monotonic()
    while server.open_connections > baseline and time.monotonic() - t0 < within:
        time.sleep(0.05)
    assert server.open_connections <= baseline, f"{server.open_connections - baseline} connections still open"
    return time.monotonic() - t0


def test_idle_connections_are_closed_by_the_server(server):
    baseline = server.open_connections
    socks = [_connect(server.port) for _ in range(100)]
    t0 = time.monotonic()
    while server.open_connections < baseline + 100 and time.monotonic() - t0 < 5:
        time.sleep(0.02)
    assert server.open_connections == baseline + 100
    waited = _wait_closed(server, baseline, within=TIMEOUT_S + 3)
    assert waited >= TIMEOUT_S * 0.8  # closed by the timeout, not at once
    answers = [_read_all(s) for s in socks]
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), answers[0][:80]
    for s in socks:
        s.close()


def test_headers_sent_slowly_are_cut_off_at_the_header_timeout(server):
    sock = _connect(server.port)
    sock.sendall(b"POST /classify/cvss HTTP/1.1\r\nHost: x\r\n")
    t0 = time.monotonic()
    with contextlib.suppress(OSError):
        while time.monotonic() - t0 < TIMEOUT_S + 3:  # one header line every 0.3 s: the connection never idles
            sock.sendall(b"X-Slow: 1\r\n")
            time.sleep(0.3)
    answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    assert time.monotonic() - t0 < TIMEOUT_S + 3


@pytest.mark.parametrize(
    ("header", "count"),
    [(b"X-Big: " + b"a" * (4 << 20) + b"\r\n", 1), (b"X-Many: 1\r\n", 100_000)],
    ids=["4-MB-header", "100000-header-lines"],
)
def test_oversized_headers_get_431_without_a_key(server, header, count):
    sock = _connect(server.port)
    with contextlib.suppress(OSError):
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + header * count + b"\r\n")
    answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:80]


def test_unfinished_large_headers_are_dropped_and_memory_returns(server):
    proc = psutil.Process()
    baseline_conns = server.open_connections
    before = proc.memory_info().rss
    socks = []
    for _ in range(16):  # 8 MiB each, never finished
        sock = _connect(server.port)
        sock.setblocking(False)
        sock.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        sent = 0
        with contextlib.suppress(OSError):
            while sent < 8 << 20:
                sent += sock.send(b"a" * 65536)
        socks.append(sock)
    _wait_closed(server, baseline_conns, within=TIMEOUT_S + 3)
    grown = proc.memory_info().rss - before
    assert grown < 32 << 20, f"RSS grew {grown >> 20} MiB for 16 x 8 MiB unfinished headers"
    for s in socks:
        s.close()


def test_a_body_never_sent_gets_408_at_the_body_timeout(server):
    sock = _connect(server.port)
    t0 = time.monotonic()
    sock.sendall(
        b"POST /classify/cvss HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n"
        b'Content-Type: application/json\r\nContent-Length: 500000\r\n\r\n{"description": "'
    )
    answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    assert b"x-request-id" in answer.lower()  # counted and traceable like every answer
    assert TIMEOUT_S * 0.8 <= time.monotonic() - t0 < TIMEOUT_S + 3


def test_a_client_that_disconnects_frees_its_slots_at_once(base_model):
    with _Server(max_inflight_cvss=64, attack_artifact="") as server:
        cvss = server.app.state.models.cvss
        cvss.delay_s = 30.0  # the fake engine would hold each text this long

        async def scenario() -> None:
            auth = {"Authorization": f"Bearer {KEY}"}
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", headers=auth) as c:
                body = {"descriptions": ["A heap overflow in the parser allows code execution."] * 64}
                request = asyncio.ensure_future(c.post("/classify/cvss", json=body, timeout=60))
                for _ in range(100):
                    await asyncio.sleep(0.05)
                    if cvss.inflight == 64:
                        break
                assert cvss.inflight == 64
                r = await c.post("/classify/cvss", json={"description": "x overflow"}, timeout=10)
                assert r.status_code == 503  # full while the first request holds every slot
                request.cancel()  # the client goes away: httpx closes the connection
                with contextlib.suppress(asyncio.CancelledError):
                    await request
                for _ in range(100):
                    await asyncio.sleep(0.05)
                    if cvss.inflight == 0:
                        break
                assert cvss.inflight == 0, "the abandoned request still holds its slots"
                cvss.delay_s = 0.0
                r = await c.post("/classify/cvss", json={"description": "x overflow"}, timeout=10)
                assert r.status_code == 200, r.text

        asyncio.run(scenario())


def test_a_stranger_is_refused_from_the_headers_before_its_body(server):
    """No key: 401 within about a second although the declared 500 kB body never comes (nothing parsed)."""
    sock = _connect(server.port)
    t0 = time.monotonic()
    sock.sendall(
        b"POST /classify/cvss HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 500000\r\n\r\n{"description": "'
    )
    answer = _read_all(sock)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:80]
    assert b"www-authenticate: Bearer" in answer and b"x-request-id" in answer.lower()
    # answered from the headers (the body limit would have said 408), after at most a bounded discard
    assert time.monotonic() - t0 < DISCARD_SECONDS + 2
