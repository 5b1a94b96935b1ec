"""A real HTTP server on 127.0.0.1 for tests: serves bytes from memory, fails and cuts on cue.

Usage:

    with LoopbackServer({"/a.tar.gz": data}, fail_statuses=[503]) as server:
        download_file(server.url_for("/a.tar.gz"), tmp_path / "a.tar.gz", backoff=0.0)
    assert [r["status"] for r in server.requests] == [503, 200]

As a pytest fixture that starts any number of servers and stops them after the test:

    @pytest.fixture
    def serve():
        yield from loopback_servers()

    def test_x(serve):
        server = serve({"/a": b"..."}, support_range=False)
"""

from __future__ import annotations

import contextlib
import re
import socketserver
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


class LoopbackServer:
    """Serve `files` ({path: bytes}) over HTTP/1.1 on 127.0.0.1 at an ephemeral port.

    support_range: answer `Range: bytes=N-` (or `bytes=N-M`) with 206 and Content-Range, and a
        start past the end with 416; when False every GET gets the whole file with 200.
    fail_statuses: statuses answered, in order and with an empty body, to the first requests.
    cut_at: the first GET that is answered with a file body announces the full Content-Length,
        then the connection is closed after `cut_at` bytes of that body.
    requests: one {"method", "path", "range", "status"} dict per request, in arrival order.
    Unknown paths get 404. The listening socket is bound at construction; serving runs in a
    daemon thread between __enter__ and __exit__.
    """

    def __init__(
        self,
        files: dict[str, bytes],
        *,
        support_range: bool = True,
        fail_statuses: list[int] | None = None,
        cut_at: int | None = None,
    ):
        self.files = dict(files)
        self.support_range = support_range
        self.requests: list[dict] = []
        self._fail_statuses = list(fail_statuses or [])
        self._cut_at = cut_at
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url_for(self, path: str) -> str:
        """E.g. url_for("/a.tar.gz") -> "http://127.0.0.1:PORT/a.tar.gz"."""
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()

    def reply_to(
        self, method: str, path: str, range_header: str | None
    ) -> tuple[int, dict, bytes, int | None]:
        """Record a request and choose its (status, headers, body, cut_at)."""
        with self._lock:
            if self._fail_statuses:
                status, headers, body = self._fail_statuses.pop(0), {}, b""
            elif path not in self.files:
                status, headers, body = 404, {}, b"not found\n"
            else:
                status, headers, body = self._file_reply(self.files[path], range_header)
            cut = None
            if method == "GET" and status in (200, 206) and self._cut_at is not None:
                cut, self._cut_at = self._cut_at, None
            self.requests.append(
                {"method": method, "path": path, "range": range_header, "status": status}
            )
        return status, headers, body, cut

    def _file_reply(self, data: bytes, range_header: str | None) -> tuple[int, dict, bytes]:
        if not self.support_range:
            return 200, {}, data
        accept = {"Accept-Ranges": "bytes"}
        match = _RANGE.fullmatch((range_header or "").strip())
        if not match:
            return 200, accept, data
        start = int(match[1])
        end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
        if start >= len(data):
            return 416, {**accept, "Content-Range": f"bytes */{len(data)}"}, b""
        if end < start:
            return 200, accept, data  # an invalid range is ignored (RFC 9110)
        content_range = f"bytes {start}-{end}/{len(data)}"
        return 206, {**accept, "Content-Range": content_range}, data[start : end + 1]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: LoopbackServer

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, a DNS query we neither need nor allow.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address) -> None:
        # Clients under test hang up mid-reply on purpose; anything else is a real error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self._reply(send_body=True)

    def do_HEAD(self) -> None:
        self._reply(send_body=False)

    def _reply(self, send_body: bool) -> None:
        path = urlsplit(self.path).path
        status, headers, body, cut = self.server.owner.reply_to(
            self.command, path, self.headers.get("Range")
        )
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not send_body:
            return
        if cut is None:
            self.wfile.write(body)
        else:
            self.wfile.write(body[:cut])
            self.close_connection = True  # the client sees EOF before Content-Length

    def log_message(self, *args) -> None:
        pass


def loopback_servers() -> Iterator[Callable[..., LoopbackServer]]:
    """Yield a function that starts a LoopbackServer(files, **options); stop all on resume.

    Made to be a pytest fixture body: `yield from loopback_servers()`.
    """
    with contextlib.ExitStack() as stack:
        yield lambda files, **options: stack.enter_context(LoopbackServer(files, **options))


def clear_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep requests from sending loopback traffic to a proxy named in the environment."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
