"""Peak memory of a block of work: CUDA allocator peak, or the process's peak resident set on
Linux (VmHWM, reset through /proc/self/clear_refs) relative to the resident set at the start."""
from __future__ import annotations

import contextlib
import resource
from pathlib import Path
from typing import Iterator

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    bytes: int | None = None


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[PeakMemory]:
    """Measure the peak extra memory used inside the block; ``result.bytes`` is None if unknown."""
    result = PeakMemory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield result
        torch.cuda.synchronize(device)
        result.bytes = int(torch.cuda.max_memory_allocated(device) - start)
        return
    resettable = True
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        resettable = False
    start_kib = _status_kib("VmRSS")
    yield result
    peak_kib = _status_kib("VmHWM") if resettable else None
    if peak_kib is None:
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if start_kib is not None:
        result.bytes = max(0, int(peak_kib - start_kib) * 1024)
