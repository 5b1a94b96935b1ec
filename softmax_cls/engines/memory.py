"""How many bytes of rows may be held in memory that is free: one rule, for the host's memory
(engine auto: does the numba engine's float32 copy of float16 rows fit?) and a GPU's (the
torch engine: are the training rows resident, for the epochs and the L-BFGS objective?).

A tenth of the free memory, at least RESERVE_BYTES, stays free beside the rows: for the step
buffers, a captured graph and PyTorch's allocator on a GPU, the rest of the process on the
host.
"""

from __future__ import annotations

from pathlib import Path

RESERVE_BYTES = 512 << 20
MEMINFO = Path("/proc/meminfo")
SELF_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_STATUS = Path("/proc/self/status")
# cgroup v1 writes "no limit" as a page-rounded LONG_MAX; anything from 2**60 up is none
CGROUP_V1_NO_LIMIT = 1 << 60


def memory_budget(free: int) -> int:
    """Bytes of rows that may be held in `free` bytes of free memory: free less a tenth of
    it, at least RESERVE_BYTES (negative when free is below RESERVE_BYTES)."""
    return free - max(RESERVE_BYTES, free // 10)


def host_available_bytes() -> int | None:
    """Bytes this process may still allocate without swapping or being killed: the smallest
    of the host's MemAvailable, its cgroup's limit left (v2 and v1) and its soft
    RLIMIT_AS / RLIMIT_DATA left; None where none of them is known (not Linux). Parts that
    are unknown or unreadable count as no limit."""
    known = [n for n in (meminfo_available(), cgroup_v2_left(), cgroup_v1_left(),
                         rlimit_left()) if n is not None]
    return min(known) if known else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _int(text: str | None) -> int | None:
    text = (text or "").strip()
    return int(text) if text.isdecimal() else None  # isdigit() passes "²"


def _status_kb(text: str | None, key: str) -> int | None:
    """The value in bytes of the `key:` line (in kB) of /proc/meminfo or /proc/self/status."""
    for line in (text or "").splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == key + ":" and fields[1].isdecimal():
            return int(fields[1]) * 1024
    return None


def meminfo_available() -> int | None:
    """The host's MemAvailable (/proc/meminfo; kernels before 3.14 lack it), else None."""
    return _status_kb(_read(MEMINFO), "MemAvailable")


def cgroup_v2_left() -> int | None:
    """The least memory.max - memory.current over this process's cgroup v2 ("0::/path" of
    /proc/self/cgroup) and its parents up to the root ("max": no limit), else None."""
    lines = (_read(SELF_CGROUP) or "").splitlines()
    path = next((line[3:] for line in lines if line.startswith("0::/")), None)
    if path is None:
        return None
    group = CGROUP_ROOT / path.strip().lstrip("/")
    left = []
    for folder in (group, *group.parents):
        limit, used = _int(_read(folder / "memory.max")), _int(_read(folder / "memory.current"))
        if limit is not None and used is not None:
            left.append(max(limit - used, 0))
        if folder == CGROUP_ROOT:
            break
    return min(left) if left else None


def cgroup_v1_left() -> int | None:
    """The least memory.limit_in_bytes - memory.usage_in_bytes of the cgroup v1 memory
    controller (CGROUP_ROOT/memory) over this process's group (the "memory" line of
    /proc/self/cgroup, "4:memory:/path") and its parents up to the controller's root (as
    mounted in a container, that root is the container's group), else None (also for the
    no-limit value). A nested group's own files do not show its parents' limits."""
    root = CGROUP_ROOT / "memory"
    path = ""
    for line in (_read(SELF_CGROUP) or "").splitlines():
        fields = line.split(":", 2)
        if len(fields) == 3 and "memory" in fields[1].split(","):
            path = fields[2].strip().lstrip("/")
            break
    group = root / path
    left = []
    for folder in (group, *group.parents):
        limit = _int(_read(folder / "memory.limit_in_bytes"))
        used = _int(_read(folder / "memory.usage_in_bytes"))
        if limit is not None and used is not None and limit < CGROUP_V1_NO_LIMIT:
            left.append(max(limit - used, 0))
        if folder == root:
            break
    return min(left) if left else None


def rlimit_left() -> int | None:
    """The least soft RLIMIT_AS - VmSize and RLIMIT_DATA - VmData (/proc/self/status) of
    this process, for the finite ones, else None."""
    try:
        import resource
    except ImportError:  # not Unix
        return None
    status = _read(SELF_STATUS)
    left = []
    for limit, key in ((resource.RLIMIT_AS, "VmSize"), (resource.RLIMIT_DATA, "VmData")):
        soft = resource.getrlimit(limit)[0]
        used = _status_kb(status, key)
        if soft != resource.RLIM_INFINITY and used is not None:
            left.append(max(soft - used, 0))
    return min(left) if left else None
