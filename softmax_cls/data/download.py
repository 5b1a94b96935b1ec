"""Streaming HTTP downloads that resume, retry and verify before anything lands at `dest`.

Bytes go to `<dest>.part` beside `dest`. A later attempt (a retry, or the next run) resumes
from that file with a Range request. Only a complete part that passes the size and md5 checks
is renamed onto `dest`; a part that fails them is deleted. The part is opened without
following links (fsutil.open_own_file): a link or fifo planted under its name in a shared data
root is refused, never written through.
"""

from __future__ import annotations

import email.utils
import errno
import functools
import os
import re
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timezone
from pathlib import Path
from urllib.parse import urlsplit

import requests
import urllib3.exceptions
from tqdm import tqdm

from softmax_cls.errors import DownloadError
from softmax_cls.fsutil import file_md5, fsync_dir, open_own_file
from softmax_cls.text import shorten

MAX_DELAY = 30.0
URL_CHARS = 150  # the most of a URL a message quotes (a config could hold any length)
# A host name that does not resolve (offline, a typo), a refused connection (no server on that
# port) or an unreachable network rarely heals within seconds: one quick retry, then the ways
# forward, instead of the full backoff (which took 31 s to give up on a refused connection).
UNREACHABLE_RETRIES = 1
UNREACHABLE_DELAY = 0.5
UNREACHABLE_ERRNOS = (errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH)
WAYS_FORWARD = (
    "use --url URL to download from a mirror, or --archive PATH to use a local copy of the archive"
)

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-\d+/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")
# How reading the body fails when the connection breaks (we read urllib3's stream directly).
_BROKEN_BODY = (urllib3.exceptions.ProtocolError, urllib3.exceptions.SSLError)


class _Retry(Exception):
    """A transient failure; the next attempt resumes from the `.part` file."""

    def __init__(self, problem: str, retry_after: float | None = None):
        super().__init__(problem)
        self.retry_after = retry_after


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    expected_size: int | None = None,
    expected_md5: str | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: tuple[float, float] = (10.0, 60.0),
    chunk_size: int = 1 << 20,
    progress: bool = True,
    session: requests.Session | None = None,
    ways_forward: str = WAYS_FORWARD,
) -> Path:
    """Download `url` to `dest` through `<dest>.part`, resuming any part already there.

    Transient failures (connection errors, timeouts, dropped transfers, HTTP 429 and 5xx) are
    retried up to `retries` times, sleeping `backoff * 2**attempt` seconds (at most 30 s, or
    longer up to that cap when the server sends Retry-After); each retry resumes the part.
    The finished part is checked against `expected_size` and `expected_md5` when given: on a
    mismatch it is deleted, otherwise it is fsynced and renamed onto `dest`. A host name that
    does not resolve, a refused connection or an unreachable network is retried once, after
    half a second. Messages about the network end
    with `ways_forward` (what the calling command offers instead).

    Returns Path(dest). Raises DownloadError with a one-line message on any failure.
    """
    _check_url(url)
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    own_session = session is None
    session = session if session is not None else requests.Session()
    bar = _LazyBar(desc=dest.name, unit="B", unit_scale=True, unit_divisor=1024,
                   file=sys.stderr, disable=not progress)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fetch = functools.partial(
            _fetch_once, session, url, part, bar, expected_size, timeout, chunk_size
        )
        _with_retries(fetch, url, retries, backoff, ways_forward)
        _verify(part, dest, expected_size, expected_md5)
        _move_into_place(part, dest)
    except OSError as exc:
        # What requests raises is handled inside; an OSError here is the local disk's.
        reason = "permission denied" if isinstance(exc, PermissionError) else (
            exc.strerror or exc)
        raise DownloadError(f"cannot write {exc.filename or part}: {reason}") from exc
    finally:
        bar.close()
        if own_session:
            session.close()
    return dest


class _LazyBar:
    """A tqdm bar drawn from its first reset (a reply whose body is about to be written), so a
    download that fails before any reply leaves no empty bar above its error line."""

    def __init__(self, **options):
        self._options = options
        self._bar: tqdm | None = None

    def reset(self, total: int | None) -> None:
        if self._bar is None:
            self._bar = tqdm(total=total, **self._options)
        else:
            self._bar.reset(total=total)

    def update(self, n: int) -> None:
        self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _check_url(url: str) -> None:
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise DownloadError(f"invalid download URL {shorten(url, URL_CHARS)!r}: {exc}") from exc
    if parts.scheme.lower() not in ("http", "https"):
        raise DownloadError(
            f"cannot download {shorten(url, URL_CHARS)!r}: only http:// and https:// URLs are "
            "supported"
        )
    if not parts.hostname:
        raise DownloadError(f"cannot download {shorten(url, URL_CHARS)!r}: the URL names no host")


def _with_retries(fetch: Callable[[], bool], url: str, retries: int, backoff: float,
                  ways_forward: str = WAYS_FORWARD) -> None:
    """Call `fetch` until it has the whole body, retrying transient failures with backoff
    (a host that does not resolve or refuses only UNREACHABLE_RETRIES times, quickly)."""
    attempt = 0
    while True:
        try:
            if fetch():
                return
            continue  # a 416 made us discard the part: start over at once, from byte 0
        except requests.exceptions.SSLError as exc:
            raise DownloadError(
                f"download failed: {_network_problem(exc, url)} for "
                f"{shorten(url, URL_CHARS)}; {ways_forward}"
            ) from exc
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
        ) as exc:
            problem, retry_after, cause = _network_problem(exc, url), None, exc
            if _unreachable(exc):
                if attempt >= min(retries, UNREACHABLE_RETRIES):
                    raise DownloadError(
                        f"download failed: {problem} for {shorten(url, URL_CHARS)} (gave up after "
                        f"{_attempts(attempt + 1)}); {ways_forward}") from exc
        except _Retry as exc:
            problem, retry_after, cause = str(exc), exc.retry_after, exc
        except requests.RequestException as exc:
            raise DownloadError(f"download failed: {exc} for {shorten(url, URL_CHARS)}") from exc
        if attempt >= retries:
            raise DownloadError(
                f"download failed: {problem} for {shorten(url, URL_CHARS)} (gave up after "
                f"{_attempts(attempt + 1)}); {ways_forward}"
            ) from cause
        if isinstance(cause, requests.RequestException) and _unreachable(cause):
            time.sleep(UNREACHABLE_DELAY)
        else:
            time.sleep(_delay(backoff, attempt, retry_after))
        attempt += 1


def _attempts(count: int) -> str:
    return "1 attempt" if count == 1 else f"{count} attempts"


def _fetch_once(session, url, part, bar, expected_size, timeout, chunk_size) -> bool:
    """One GET into `part`: append on a matching 206, truncate and rewrite on a 200.

    Returns False when a 416 showed the part to be useless and it was deleted.
    """
    offset = _part_size(part)
    if expected_size is not None and offset > expected_size:
        part.unlink()  # longer than the whole file, so not a prefix of it
        offset = 0
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with session.get(url, headers=headers, stream=True, timeout=timeout) as response:
        if response.status_code == 416 and offset:
            return _range_not_satisfiable(response, part, offset, expected_size, bar)
        _raise_for_status(response, url)
        offset, total = _body_start_and_file_size(response, url, part, offset)
        if expected_size is not None and total is not None and total != expected_size:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"size mismatch for {part.with_suffix('')}: expected {expected_size} bytes, "
                f"the server offers {total} at {shorten(url, URL_CHARS)}"
            )
        bar.reset(total=expected_size if total is None else total)
        bar.update(offset)
        received = _write_body(response, part, offset, bar, chunk_size, expected_size)
    announced = _content_length(response)
    end = offset + received
    if (announced is not None and received < announced) or (total is not None and end < total):
        raise _Retry(f"transfer stopped after {end} bytes")
    return True


def _part_size(part: Path) -> int:
    """Bytes already in `part` (0 when absent); NotOwnFile if it is not a plain file."""
    if not os.path.lexists(part):
        return 0
    fd = open_own_file(part, os.O_RDONLY)
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _body_start_and_file_size(response, url, part, offset) -> tuple[int, int | None]:
    """Where the reply's body starts in the file, and the file's full size if the reply says."""
    if response.status_code == 200:
        return 0, _content_length(response)  # a Range request ignored: start over
    if response.status_code != 206:
        raise DownloadError(
            f"download failed: unexpected HTTP {response.status_code} {response.reason} for "
            f"{shorten(url, URL_CHARS)}"
        )
    start, total = _content_range(response)
    if start != offset:
        part.unlink(missing_ok=True)
        raise _Retry(f"server answered a resume from byte {offset} with a bad range")
    return offset, total


def _raise_for_status(response: requests.Response, url: str) -> None:
    status = response.status_code
    if status == 429 or status >= 500:
        raise _Retry(f"HTTP {status} {response.reason}", _retry_after(response))
    if status >= 400:
        raise DownloadError(f"download failed: HTTP {status} {response.reason} for "
                            f"{shorten(url, URL_CHARS)}")


def _range_not_satisfiable(response, part, offset, expected_size, bar) -> bool:
    """A 416 to `bytes=<offset>-`: the part is complete if it has the full size, else deleted."""
    full_size = expected_size
    if full_size is None:
        match = _UNSATISFIED_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        full_size = int(match[1]) if match else None
    if full_size == offset:
        bar.reset(total=offset)
        bar.update(offset)
        return True
    part.unlink(missing_ok=True)
    return False


def _write_body(response, part, offset, bar, chunk_size, limit) -> int:
    """Write the body into `part` from `offset` (truncating at 0); return the bytes received.

    On a dropped connection the bytes received so far stay in `part` for the next attempt.
    Stops early once `part` is longer than `limit`, which the size check then rejects.
    """
    received = 0
    fd = open_own_file(part, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if offset else 0))
    if not offset:
        os.ftruncate(fd, 0)
    with os.fdopen(fd, "ab" if offset else "wb") as handle:
        try:
            for chunk in _body_chunks(response, chunk_size):
                handle.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
                if limit is not None and offset + received > limit:
                    break
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise _Retry(f"read timed out after {offset + received} bytes") from exc
        except _BROKEN_BODY as exc:
            raise _Retry(f"connection dropped after {offset + received} bytes") from exc
    return received


def _body_chunks(response: requests.Response, chunk_size: int) -> Iterator[bytes]:
    """Yield the raw body (no content decoding) as it arrives.

    iter_content() waits to fill a whole chunk and loses that partial chunk when the connection
    drops; read1() hands over what has arrived, so a resume starts where the bytes ended.
    """
    raw = response.raw
    if not hasattr(raw, "read1"):  # urllib3 < 2.3: smaller chunks bound what a drop loses
        yield from raw.stream(min(chunk_size, 1 << 16), decode_content=False)
        return
    while chunk := raw.read1(chunk_size, decode_content=False):
        yield chunk


def _content_range(response: requests.Response) -> tuple[int | None, int | None]:
    """(first byte, full size) from a 206's Content-Range; None for what is missing."""
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
    if not match:
        return None, None
    return int(match[1]), None if match[2] == "*" else int(match[2])


def _content_length(response: requests.Response) -> int | None:
    value = response.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


def _retry_after(response: requests.Response) -> float | None:
    """Seconds asked for by a Retry-After header (delta-seconds or HTTP date), if any."""
    value = response.headers.get("Retry-After", "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - time.time())


def _delay(backoff: float, attempt: int, retry_after: float | None) -> float:
    return min(MAX_DELAY, max(backoff * 2**attempt, retry_after or 0.0))


def _network_problem(exc: requests.RequestException, url: str) -> str:
    """A short description of a connection-level failure, e.g. 'connection refused by h:80'."""
    parts = urlsplit(url)
    host = parts.hostname
    where = parts.netloc.rpartition("@")[2]
    causes = list(_causes(exc))
    ssl_error = next((e for e in causes if isinstance(e, ssl.SSLError)), None)
    if isinstance(exc, requests.exceptions.SSLError):
        detail = _ssl_detail(ssl_error) if ssl_error else "handshake failed"
        return f"SSL error talking to {where}: {detail}"
    if any(isinstance(e, socket.gaierror) for e in causes):
        return f"cannot resolve host name {host}"
    if any(isinstance(e, ConnectionRefusedError) for e in causes):
        return f"connection refused by {where}"
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return f"timed out connecting to {where}"
    if isinstance(exc, requests.Timeout):
        return f"timed out waiting for {where}"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return f"connection to {where} dropped"
    root = causes[-1]
    detail = root.strerror if isinstance(root, OSError) and root.strerror else root
    return f"cannot connect to {where}: {detail}"


def _unreachable(exc: BaseException) -> bool:
    """Whether a connection failed because the host name did not resolve, the host refused
    it or the network is unreachable."""
    return any(isinstance(e, socket.gaierror)
               or (isinstance(e, OSError) and e.errno in UNREACHABLE_ERRNOS)
               for e in _causes(exc))


def _ssl_detail(error: ssl.SSLError) -> str:
    return getattr(error, "verify_message", None) or error.reason or str(error)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it wraps: requests and urllib3 nest the socket error several levels down."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        wrapped = getattr(exc, "reason", None)
        if not isinstance(wrapped, BaseException):
            wrapped = next((a for a in exc.args if isinstance(a, BaseException)), None)
        exc = wrapped or exc.__cause__ or exc.__context__


def _verify(part: Path, dest: Path, expected_size: int | None, expected_md5: str | None) -> None:
    """Check the finished part; on a mismatch delete it, so no later run takes it as good."""
    if expected_size is not None:
        size = part.stat().st_size
        if size != expected_size:
            part.unlink()
            raise DownloadError(
                f"size mismatch for {dest}: expected {expected_size} bytes, got {size}; "
                "the partial download was deleted"
            )
    if expected_md5 is not None:
        actual = file_md5(part)
        if actual != expected_md5.lower():
            part.unlink()
            raise DownloadError(
                f"md5 checksum mismatch for {dest}: expected {expected_md5.lower()}, "
                f"got {actual}; the partial download was deleted"
            )


def _move_into_place(part: Path, dest: Path) -> None:
    """Make the part durable, then rename it onto `dest` in one step."""
    fd = open_own_file(part, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(part, dest)
    fsync_dir(dest.parent)
