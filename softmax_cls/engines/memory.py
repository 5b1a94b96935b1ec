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


def memory_budget(free: int) -> int:
    """Bytes of rows that may be held in `free` bytes of free memory: free less a tenth of
    it, at least RESERVE_BYTES (negative when free is below RESERVE_BYTES)."""
    return free - max(RESERVE_BYTES, free // 10)


def host_available_bytes() -> int | None:
    """The host's memory available to new allocations without swapping: MemAvailable of
    /proc/meminfo (Linux), else None (unknown)."""
    try:
        text = MEMINFO.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                return int(fields[1]) * 1024  # kB
    return None
