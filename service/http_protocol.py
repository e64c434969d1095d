"""Connection hygiene in the HTTP server itself: uvicorn's httptools protocol with a bound on header size and
count (431) and on the time a client may take to send a request's headers (408, then closed). Idle
keep-alive connections are closed by uvicorn's own keep-alive timeout; a slow body is bounded in
`middleware.BodyLimit`. A reverse proxy in front (docker/nginx) should enforce the same and more."""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.settings import Settings


def _response(status: bytes, msg: str) -> bytes:
    body = msg.encode()
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
    )


class _Rejected(Exception):
    """Raised inside a parser callback to stop parsing the rest of what was received."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    max_header_bytes = 64 * 1024
    max_headers = 100
    header_timeout_s = 10.0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._header_bytes = 0  # bytes received while a request's headers are incomplete
        self._parsed_bytes = 0
        self._header_count = 0
        self._awaiting_headers = True
        self._header_timer = None
        self._rejected = False

    # -- the header deadline: armed when a connection opens or a request begins, cleared by its headers -----
    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        self._reject(b"408 Request Timeout", f"request headers not received within {self.header_timeout_s:g} s")

    def _reject(self, status: bytes, msg: str) -> None:
        self._rejected = True
        if not self.transport.is_closing():
            self.transport.write(_response(status, msg))
            self.transport.close()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return
        super().data_received(data)
        # Counted from raw bytes: httptools buffers a header until its end, so a never-finished header
        # would grow without a parser callback; one chunk past the limit is the most it holds.
        if self._awaiting_headers and not self._rejected:
            self._header_bytes += len(data)
            self._over_limit()

    def send_400_response(self, msg: str) -> None:
        if not self._rejected:  # a _Rejected from a callback reaches uvicorn as a parser error
            super().send_400_response(msg)

    # -- parser callbacks -----------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = self._parsed_bytes = self._header_count = 0
        self._awaiting_headers = True
        self._arm()

    def on_url(self, url: bytes) -> None:
        self._parsed_bytes += len(url)
        if self._over_limit():
            raise _Rejected
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._parsed_bytes += len(name) + len(value)  # a header that arrived whole in one chunk
        if self._over_limit():
            raise _Rejected  # stops the parser before this request reaches the app
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._disarm()
        super().on_headers_complete()

    def _over_limit(self) -> bool:
        size = max(self._header_bytes, self._parsed_bytes)
        if size <= self.max_header_bytes and self._header_count <= self.max_headers:
            return False
        self._disarm()
        self._reject(
            b"431 Request Header Fields Too Large",
            f"request line and headers over {self.max_header_bytes} bytes or {self.max_headers} fields",
        )
        return True


def protocol_for(s: Settings) -> type[GuardedHttpToolsProtocol]:
    """The protocol class uvicorn instantiates per connection, with this server's limits."""
    return type(
        "ServiceHttpProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "max_header_bytes": s.http_max_header_bytes,
            "max_headers": s.http_max_headers,
            "header_timeout_s": s.http_header_timeout_s,
        },
    )
