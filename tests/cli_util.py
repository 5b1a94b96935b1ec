"""Running the installed console scripts as a user would, in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


def script(name: str) -> str:
    """Path of an installed console script (beside this Python first, then on PATH)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: pip install -e .")
    return found


def run(name: str, *args: str, cwd: str | Path | None = None, timeout: float = 120,
        **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([script(name), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env, **kwargs)


def assert_one_line_error(result: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    """The process failed with `code` and said so in one `error:` line, no traceback."""
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def limit_data(limit: int | None):
    """A child's preexec_fn: RLIMIT_DATA (private writable memory: heap and anonymous maps,
    not file-backed read-only maps) of `limit` bytes; None: no limit."""
    import resource

    def limit_memory():
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    return limit_memory
