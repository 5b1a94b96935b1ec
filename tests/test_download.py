"""download_file against a real HTTP server on 127.0.0.1: resume, retry, verify, refuse."""

from __future__ import annotations

import hashlib
import random
import socket
import threading
from pathlib import Path

import pytest
from http_server import clear_proxy_env, loopback_servers

from softmax_cls.data.download import download_file
from softmax_cls.errors import DownloadError

DATA = random.Random(1234).randbytes(1_500_000)
MD5 = hashlib.md5(DATA).hexdigest()
CUT = int(len(DATA) * 0.6)
FAST = {"backoff": 0.0, "progress": False, "timeout": (5.0, 5.0)}


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch):
    clear_proxy_env(monkeypatch)


@pytest.fixture
def serve():
    yield from loopback_servers()


@pytest.fixture
def sleeps(monkeypatch):
    """Record the backoff delays instead of sleeping them."""
    delays: list[float] = []
    monkeypatch.setattr("softmax_cls.data.download.time.sleep", delays.append)
    return delays


def part_of(path):
    return path.with_name(path.name + ".part")


def test_plain_download_gives_identical_bytes(serve, tmp_path):
    server = serve({"/a.bin": DATA})
    dest = tmp_path / "sub" / "a.bin"

    result = download_file(server.url_for("/a.bin"), dest, expected_size=len(DATA), **FAST)

    assert result == dest
    assert dest.read_bytes() == DATA
    assert not part_of(dest).exists()
    assert [r["range"] for r in server.requests] == [None]


def test_cut_transfer_resumes_with_range_request(serve, tmp_path):
    server = serve({"/a.bin": DATA}, cut_at=CUT)
    dest = tmp_path / "a.bin"

    download_file(server.url_for("/a.bin"), dest, expected_md5=MD5, retries=2, **FAST)

    assert dest.read_bytes() == DATA
    assert hashlib.md5(dest.read_bytes()).hexdigest() == MD5
    assert [(r["range"], r["status"]) for r in server.requests] == [
        (None, 200),
        (f"bytes={CUT}-", 206),
    ]


def test_part_left_by_an_earlier_run_is_resumed(serve, tmp_path):
    server = serve({"/a.bin": DATA})
    dest = tmp_path / "a.bin"
    part_of(dest).write_bytes(DATA[:1000])

    download_file(server.url_for("/a.bin"), dest, expected_md5=MD5, **FAST)

    assert dest.read_bytes() == DATA
    assert [(r["range"], r["status"]) for r in server.requests] == [("bytes=1000-", 206)]


def test_two_503s_then_success_via_retry(serve, tmp_path, sleeps):
    server = serve({"/a.bin": DATA}, fail_statuses=[503, 503])
    dest = tmp_path / "a.bin"

    download_file(server.url_for("/a.bin"), dest, expected_md5=MD5, retries=2, **FAST)

    assert dest.read_bytes() == DATA
    assert [r["status"] for r in server.requests] == [503, 503, 200]
    assert len(sleeps) == 2


def test_backoff_doubles_and_is_capped_at_30_seconds(serve, tmp_path, sleeps):
    server = serve({"/a.bin": DATA}, fail_statuses=[503, 429, 500, 502])
    options = {**FAST, "backoff": 10.0}

    download_file(server.url_for("/a.bin"), tmp_path / "a.bin", retries=4, **options)

    assert sleeps == [10.0, 20.0, 30.0, 30.0]


def test_server_ignoring_range_restarts_from_byte_zero(serve, tmp_path):
    server = serve({"/a.bin": DATA}, support_range=False, cut_at=CUT)
    dest = tmp_path / "a.bin"

    download_file(server.url_for("/a.bin"), dest, expected_size=len(DATA), retries=2, **FAST)

    assert dest.read_bytes() == DATA  # not the first 60% twice
    assert [(r["range"], r["status"]) for r in server.requests] == [
        (None, 200),
        (f"bytes={CUT}-", 200),
    ]


def test_stale_part_with_server_ignoring_range_is_overwritten(serve, tmp_path):
    server = serve({"/a.bin": DATA}, support_range=False)
    dest = tmp_path / "a.bin"
    part_of(dest).write_bytes(b"stale" * 1000)

    download_file(server.url_for("/a.bin"), dest, **FAST)

    assert dest.read_bytes() == DATA
    assert [(r["range"], r["status"]) for r in server.requests] == [("bytes=5000-", 200)]


@pytest.mark.parametrize("expected_size", [len(DATA), None])
def test_complete_part_answered_with_416_counts_as_complete(serve, tmp_path, expected_size):
    server = serve({"/a.bin": DATA})
    dest = tmp_path / "a.bin"
    part_of(dest).write_bytes(DATA)

    download_file(server.url_for("/a.bin"), dest, expected_size=expected_size, **FAST)

    assert dest.read_bytes() == DATA
    assert [r["status"] for r in server.requests] == [416]


def test_part_longer_than_the_file_is_discarded_on_416(serve, tmp_path):
    server = serve({"/a.bin": DATA})
    dest = tmp_path / "a.bin"
    part_of(dest).write_bytes(DATA + b"junk")

    download_file(server.url_for("/a.bin"), dest, retries=0, **FAST)

    assert dest.read_bytes() == DATA
    assert [(r["range"], r["status"]) for r in server.requests] == [
        (f"bytes={len(DATA) + 4}-", 416),
        (None, 200),
    ]


def test_md5_mismatch_raises_and_leaves_nothing(serve, tmp_path):
    wrong = random.Random(99).randbytes(len(DATA))
    server = serve({"/a.bin": wrong})
    dest = tmp_path / "a.bin"

    with pytest.raises(DownloadError, match="md5") as caught:
        download_file(server.url_for("/a.bin"), dest, expected_md5=MD5, **FAST)

    message = str(caught.value)
    assert "checksum" in message and MD5 in message
    assert hashlib.md5(wrong).hexdigest() in message
    assert str(dest) in message
    assert not dest.exists()
    assert not part_of(dest).exists()


def test_size_mismatch_raises_and_leaves_nothing(serve, tmp_path):
    server = serve({"/a.bin": DATA[:-10]})
    dest = tmp_path / "a.bin"

    with pytest.raises(DownloadError, match="size") as caught:
        download_file(server.url_for("/a.bin"), dest, expected_size=len(DATA), **FAST)

    message = str(caught.value)
    assert str(len(DATA)) in message and str(len(DATA) - 10) in message
    assert not dest.exists()
    assert not part_of(dest).exists()


def test_404_fails_at_once(serve, tmp_path, sleeps):
    server = serve({"/a.bin": DATA})
    url = server.url_for("/missing.bin")

    with pytest.raises(DownloadError, match="HTTP 404 Not Found") as caught:
        download_file(url, tmp_path / "a.bin", retries=5, **FAST)

    assert url in str(caught.value)
    assert len(server.requests) == 1
    assert sleeps == []


def test_persistent_503_gives_up_after_retries_plus_one_requests(serve, tmp_path):
    server = serve({"/a.bin": DATA}, fail_statuses=[503] * 10)

    with pytest.raises(DownloadError, match="503") as caught:
        download_file(server.url_for("/a.bin"), tmp_path / "a.bin", retries=3, **FAST)

    assert "4 attempts" in str(caught.value)
    assert len(server.requests) == 4


def test_connection_refused_names_the_ways_forward(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on `port` now.

    with pytest.raises(DownloadError) as caught:
        download_file(f"http://127.0.0.1:{port}/a.bin", tmp_path / "a.bin", retries=1, **FAST)

    message = str(caught.value)
    assert "refused" in message
    assert "--url" in message and "--archive" in message
    assert "\n" not in message


def test_ssl_failure_is_reported_at_once_with_the_ways_forward(serve, tmp_path, sleeps):
    server = serve({"/a.bin": DATA})
    url = server.url_for("/a.bin").replace("http://", "https://")  # TLS to a plain HTTP server

    with pytest.raises(DownloadError, match="SSL") as caught:
        download_file(url, tmp_path / "a.bin", retries=3, **FAST)

    assert "--url" in str(caught.value) and "--archive" in str(caught.value)
    assert sleeps == []


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/a.bin", "file:///etc/passwd", "127.0.0.1/a"])
def test_non_http_url_is_refused(url, tmp_path):
    with pytest.raises(DownloadError, match=r"only http:// and https:// URLs"):
        download_file(url, tmp_path / "a.bin", **FAST)
    assert not (tmp_path / "a.bin").exists()


def test_url_without_host_is_refused(tmp_path):
    with pytest.raises(DownloadError, match="no host"):
        download_file("http:///a.bin", tmp_path / "a.bin", **FAST)


def test_progress_bar_is_written_to_stderr(serve, tmp_path, capsys):
    server = serve({"/a.bin": DATA})

    download_file(server.url_for("/a.bin"), tmp_path / "a.bin", backoff=0.0, progress=True)

    captured = capsys.readouterr()
    assert "a.bin" in captured.err and "100%" in captured.err
    assert captured.out == ""


def test_no_progress_bar_when_disabled(serve, tmp_path, capsys):
    server = serve({"/a.bin": DATA})

    download_file(server.url_for("/a.bin"), tmp_path / "a.bin", **FAST)

    assert capsys.readouterr().err == ""


def test_a_refused_connection_is_retried_once_quickly_not_with_the_full_backoff(tmp_path,
                                                                                sleeps):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError, match=r"refused.*gave up after 2 attempts"):
        download_file(f"http://127.0.0.1:{port}/a.bin", tmp_path / "a.bin")  # retries=5
    assert sleeps == [0.5]


def test_softmax_download_fails_fast_with_no_server(tmp_path):
    import time

    from cli_util import assert_one_line_error, run

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    result = run("softmax-download", "--root", str(tmp_path / "data"), "--url",
                 f"http://127.0.0.1:{port}/cifar-10-binary.tar.gz", "--quiet")
    assert_one_line_error(result, 1, "refused", "--archive")
    assert time.monotonic() - started < 10  # was 31 s of backoff


@pytest.mark.parametrize("how", ["refused", "404"])
def test_a_failed_download_leaves_no_empty_progress_bar_above_its_error(serve, tmp_path, how):
    """softmax-eval --download and softmax-download (not --quiet) drew an empty bar per attempt
    (`cifar-10-binary.tar.gz: 0.00B [00:00, ?B/s]`) before the error: stderr is the error."""
    from cli_util import assert_one_line_error, run
    from test_hostile import train, write_config

    if how == "404":
        url = serve({}).url_for("/cifar-10-binary.tar.gz")  # every path is 404
    else:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{probe.getsockname()[1]}/cifar-10-binary.tar.gz"
    needle = "HTTP 404" if how == "404" else "refused"
    config = write_config(tmp_path / "c.yaml")
    assert train("--config", str(config), "--out", str(tmp_path / "run"), "-q", "--set",
                 f"data.url={url}", "--set", "optim.epochs=1", n_train=600).returncode == 0
    result = run("softmax-eval", str(tmp_path / "run" / "best.npz"), "--root",
                 str(tmp_path / "data"), "--download", timeout=60)
    assert_one_line_error(result, 1, needle)
    assert result.stderr.startswith("error: "), repr(result.stderr)
    result = run("softmax-download", "--root", str(tmp_path / "data"), "--url", url, timeout=60)
    assert_one_line_error(result, 1, needle)
    assert result.stderr.startswith("error: "), repr(result.stderr)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("how", ["no server", "not an archive"])
def test_a_failed_softmax_download_leaves_no_folder_it_created(tmp_path, how):
    """A new --root (and its missing parents) is removed when the command fails, as a failed
    softmax-train removes its run folder; it was left holding only `.lock`."""
    from cli_util import assert_one_line_error, run

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    source = (["--url", f"http://127.0.0.1:{port}/cifar-10-binary.tar.gz"] if how == "no server"
              else ["--archive", str(tmp_path / "photo.png")])
    result = run("softmax-download", "--root", str(tmp_path / "new" / "data"), *source,
                 "--quiet")
    assert_one_line_error(result, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]


def test_softmax_train_offline_names_data_root_first(tmp_path):
    """The first run of a new user without the network: the line names data.root (the data
    they may already have), then data.archive and data.url, as docs/offline.md says."""
    from cli_util import assert_one_line_error, run

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = Path(__file__).resolve().parents[1] / "configs" / "quick.yaml"
    result = run("softmax-train", "--config", str(config), "--quiet", "--set",
                 f"data.url=http://127.0.0.1:{port}/cifar-10-binary.tar.gz", cwd=tmp_path)
    line = assert_one_line_error(result, 1, "refused", "offline?")
    hints = line.split("offline?", 1)[1]
    assert hints.index("--set data.root=DIR") < hints.index("data.archive=PATH") \
        < hints.index("data.url=URL")
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()


def test_softmax_download_offline_names_root_first(tmp_path):
    """softmax-download's line named --archive and --url, not --root: a copy already on
    disk, the first of the three ways docs/offline.md gives."""
    from cli_util import assert_one_line_error, run

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run("softmax-download", "--root", "data", "--quiet", "--url",
                 f"http://127.0.0.1:{port}/cifar-10-binary.tar.gz", cwd=tmp_path)
    line = assert_one_line_error(result, 1, "refused", "offline?")
    hints = line.split("offline?", 1)[1]
    assert hints.index("--root DIR") < hints.index("--archive PATH") < hints.index("--url URL")
    assert not (tmp_path / "data").exists()


def test_missing_or_offline_data_lines_shorten_a_long_root(tmp_path):
    """The offline line names the --root given ('or copy it into ROOT/'), the missing-data
    line data.root twice: a root of 605 characters made lines of 860 and 1400 characters,
    where every other path is cut to its first 160."""
    from cli_util import assert_one_line_error, run

    from softmax_cls.text import shorten

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = "/".join(["x" * 100] * 6)
    result = run("softmax-download", "--root", root, "--quiet", "--url",
                 f"http://127.0.0.1:{port}/cifar-10-binary.tar.gz", cwd=tmp_path)
    line = assert_one_line_error(result, 1, "refused", "offline?")
    assert f"copy it into {shorten(root)}/)" in line and root not in line
    assert not (tmp_path / ("x" * 100)).exists()
    config = Path(__file__).resolve().parents[1] / "configs" / "quick.yaml"
    result = run("softmax-train", "--config", str(config), "--quiet", "--set",
                 f"data.root={root}", "--set", "data.download=false", cwd=tmp_path)
    line = assert_one_line_error(result, 1, f"format data in {shorten(root)} (neither",
                                 f"copy it into {shorten(root)}/)")
    assert root not in line and not (tmp_path / ("x" * 100)).exists()


def test_softmax_sweep_offline_names_the_sweep_files_data_root(tmp_path):
    pytest.importorskip("optuna")
    from cli_util import assert_one_line_error, run

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "s.yaml").write_text(
        f"trials: 1\nset: {{data.url: 'http://127.0.0.1:{port}/cifar-10-binary.tar.gz'}}\n"
        "space: {optim.lr: {choice: [0.1]}}\n")
    result = run("softmax-sweep", "s.yaml", "--out", "s", "--quiet", cwd=tmp_path)
    line = assert_one_line_error(result, 1, "refused", "offline?")
    assert "set in the sweep file data.root: DIR of your copy" in line
    assert "--set" not in line


class RawServer:
    """A server on 127.0.0.1 that answers its n-th connection with `replies[n]`: the raw
    head, then a body of those bytes, or of that many zero bytes sent in 64 KB pieces until
    the client hangs up; then closes it. `heads` holds each request's head, `sent` how many
    body bytes each reply got out; `on_request()` runs as each request arrives. For replies
    LoopbackServer does not make."""

    def __init__(self, replies: list[tuple[str, bytes | int]], on_request=None):
        self.replies, self.heads, self.sent = list(replies), [], []
        self.on_request = on_request  # called once a request has arrived, before the reply
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/a.bin"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for head, body in self.replies:
            connection, _ = self.sock.accept()
            with connection:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += connection.recv(4096)
                self.heads.append(request.decode("latin-1"))
                if self.on_request is not None:
                    self.on_request()
                connection.sendall(head.encode())
                sent = 0
                try:
                    if isinstance(body, bytes):
                        connection.sendall(body)
                        sent = len(body)
                    else:
                        while sent < body:
                            connection.sendall(bytes(1 << 16))
                            sent += 1 << 16
                except OSError:  # the client hung up
                    pass
                self.sent.append(sent)

    def close(self) -> None:
        self.sock.close()


def test_a_body_longer_than_the_expected_size_is_cut_short_not_written_whole(tmp_path):
    """A reply without Content-Length that goes on (256 MB of zeros): the download stops
    just past the expected size and the part is deleted."""
    server = RawServer([("HTTP/1.0 200 OK\r\n\r\n", 256 << 20)])
    dest = tmp_path / "a.bin"
    try:
        with pytest.raises(DownloadError, match="size mismatch"):
            download_file(server.url, dest, expected_size=1000, retries=0, **FAST)
        server.thread.join(10)
    finally:
        server.close()
    assert server.sent[0] < 64 << 20
    assert not dest.exists() and not part_of(dest).exists()


def resume_whole(server: RawServer, dest: Path) -> None:
    """Resume a part of DATA's first 1000 bytes from `server` (one retry): dest ends as DATA."""
    part_of(dest).write_bytes(DATA[:1000])
    try:
        download_file(server.url, dest, retries=1, **FAST)
    finally:
        server.close()
    assert dest.read_bytes() == DATA


def test_a_resume_answered_from_an_earlier_byte_is_not_appended(tmp_path):
    """A 206 whose range starts before the part ends would repeat bytes the part has: the
    part is dropped and the next attempt fetches the file whole (no md5 to catch it)."""
    early = f"bytes 10-{len(DATA) - 1}/{len(DATA)}"
    server = RawServer([
        (f"HTTP/1.1 206 Partial Content\r\nContent-Range: {early}\r\n"
         f"Content-Length: {len(DATA) - 10}\r\nConnection: close\r\n\r\n", DATA[10:]),
        (f"HTTP/1.1 200 OK\r\nContent-Length: {len(DATA)}\r\nConnection: close\r\n\r\n",
         DATA),
    ])
    resume_whole(server, tmp_path / "a.bin")
    assert "Range: bytes=1000-" in server.heads[0] and "Range" not in server.heads[1]


def test_a_416_that_names_no_size_drops_the_part_rather_than_taking_it(serve, tmp_path):
    """A 416 without Content-Range (and no expected size) says nothing of the part: it is
    deleted and the file fetched whole, not renamed into place as it is."""
    server = serve({"/a.bin": DATA}, fail_statuses=[416])
    dest = tmp_path / "a.bin"
    part_of(dest).write_bytes(DATA[:1000])

    download_file(server.url_for("/a.bin"), dest, retries=0, **FAST)

    assert dest.read_bytes() == DATA
    assert [(r["range"], r["status"]) for r in server.requests] == [
        ("bytes=1000-", 416), (None, 200)]


def test_a_server_offering_another_size_is_refused_before_its_body(serve, tmp_path):
    """Content-Length names another size than expected: refused from the headers, before
    a byte of the body is written (and not after downloading it all)."""
    server = serve({"/a.bin": DATA[:-10]})
    dest = tmp_path / "a.bin"

    with pytest.raises(DownloadError, match=f"the server offers {len(DATA) - 10} at"):
        download_file(server.url_for("/a.bin"), dest, expected_size=len(DATA), **FAST)

    assert not part_of(dest).exists() and len(server.requests) == 1


def test_a_resume_cut_short_without_content_length_is_resumed_again(tmp_path):
    """A 206 with no Content-Length (its body ends when the connection closes) that stops
    before the Content-Range's end: the next attempt resumes from where it stopped, rather
    than the part being taken as the whole file (no expected size or md5 to catch it)."""
    total, cut = len(DATA), 700_000

    def partial(start: int) -> str:
        return (f"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{total - 1}/"
                f"{total}\r\nConnection: close\r\n\r\n")

    server = RawServer([(partial(1000), DATA[1000:cut]), (partial(cut), DATA[cut:])])
    resume_whole(server, tmp_path / "a.bin")
    assert f"Range: bytes={cut}-" in server.heads[1]


def test_a_stale_part_longer_than_the_file_is_truncated_when_a_server_ignores_the_range(
        serve, tmp_path):
    """No expected size: the part (longer than the file) is resumed with a Range the server
    ignores; its 200 is written from byte 0 over a truncated part, leaving no stale tail."""
    server = serve({"/a.bin": DATA}, support_range=False)
    dest = tmp_path / "a.bin"
    part_of(dest).write_bytes(b"stale" * (len(DATA) // 4))

    download_file(server.url_for("/a.bin"), dest, **FAST)

    assert dest.read_bytes() == DATA


def test_a_link_planted_as_the_part_while_the_server_answers_is_not_written_through(tmp_path):
    """No part when the download starts; a symbolic link to a victim appears under the
    part's name before the reply (a shared data root): refused, the victim untouched."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    dest = tmp_path / "a.bin"
    server = RawServer(
        [(f"HTTP/1.1 200 OK\r\nContent-Length: {len(DATA)}\r\nConnection: close\r\n\r\n",
          DATA)], on_request=lambda: part_of(dest).symlink_to(victim))
    try:
        with pytest.raises(DownloadError, match="symbolic link"):
            download_file(server.url, dest, retries=0, **FAST)
    finally:
        server.close()
    assert victim.read_bytes() == b"precious" and not dest.exists()
