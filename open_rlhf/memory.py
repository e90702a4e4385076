"""Peak memory, measured so that it is the measured code's own: of this process image, or of one block.

- `peak_memory()`: this process's peak resident memory since it started (``exec``), in MB; recorded in every
  stage's completion marker.
- `PeakMemory`: a context manager for the peak of one block (benchmarks).

Why not ``resource.getrusage(RUSAGE_SELF).ru_maxrss``: on Linux a child inherits its parent's high-water mark
across fork + exec (the kernel folds the pre-exec image's peak into the child's ``maxrss``; with vfork, as
Python's `subprocess` uses, that image *is* the parent's), so a stage started by a 10 GB pipeline driver would
report at least 10 GB. ``VmHWM`` in ``/proc/self/status`` is the high-water mark of the current address space,
which exec replaces, so it starts from zero in every new program. It can also be reset (writing ``5`` to
``/proc/self/clear_refs``, Linux >= 4.0), which gives `PeakMemory` an exact per-block peak. Elsewhere (macOS,
or where ``/proc`` is not readable) the functions fall back to ``ru_maxrss`` and to sampling the RSS in a
thread, and say so in ``source``.

This module is a leaf: it imports nothing from the project.
"""

from __future__ import annotations

import os
import re
import resource
import sys
import threading
import time
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_VMHWM = re.compile(r"^VmHWM:\s+(\d+)\s+kB", re.MULTILINE)


def _vmhwm_mb() -> float | None:
    try:
        match = _VMHWM.search(_STATUS.read_text())
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


def _current_rss_mb() -> float:
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss / 2**20


def _cuda_peak_mb() -> float | None:
    if "torch" not in sys.modules:
        return None
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def peak_memory() -> dict[str, float | str]:
    """This process's peak memory since it started, in MB (2^20 bytes).

    Returns:
        dict: ``peak_rss_mb`` (peak resident set of this process image), ``peak_rss_source`` (``"VmHWM"`` or,
        where ``/proc`` is unavailable, ``"ru_maxrss"``, which on Linux may include a parent's memory), and
        with CUDA ``peak_gpu_mb`` (``torch.cuda.max_memory_allocated``).
    """
    peak = _vmhwm_mb()
    if peak is not None:
        out: dict[str, float | str] = {"peak_rss_mb": peak, "peak_rss_source": "VmHWM"}
    else:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux, bytes on macOS
        out = {"peak_rss_mb": rss / (2**20 if sys.platform == "darwin" else 2**10), "peak_rss_source": "ru_maxrss"}
    gpu = _cuda_peak_mb()
    if gpu is not None:
        out["peak_gpu_mb"] = gpu
    return out


def _reset_vmhwm() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """Context manager measuring the peak memory of a block, in MB.

    On CUDA it reads ``torch.cuda.max_memory_allocated`` (reset on entry). On the CPU it resets the process's
    ``VmHWM`` on entry and reads it on exit (exact); where that is impossible it samples the RSS every
    ``interval`` seconds in a thread (``source`` says which: ``"VmHWM"``, ``"sampled"`` or ``"cuda"``).
    ``peak_mb`` is the peak, ``start_mb`` the memory on entry and ``delta_mb`` their difference (what the block
    added).

    Args:
        interval (`float`): sampling period in seconds of the fallback.
    """

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.peak_mb = self.start_mb = self.delta_mb = 0.0
        self.source = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _cuda() -> bool:
        if "torch" not in sys.modules:
            return False
        import torch

        return torch.cuda.is_available()

    def _sample(self):
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, _current_rss_mb())
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        if self._cuda():
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start_mb = torch.cuda.memory_allocated() / 2**20
            self.source = "cuda"
            return self
        self.start_mb = self.peak_mb = _current_rss_mb()
        if _reset_vmhwm() and _vmhwm_mb() is not None:
            self.source = "VmHWM"
        else:
            self.source = "sampled"
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> bool:
        if self.source == "cuda":
            import torch

            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        elif self.source == "VmHWM":
            self.peak_mb = max(self.start_mb, _vmhwm_mb() or 0.0)
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, _current_rss_mb())
        self.delta_mb = self.peak_mb - self.start_mb
        return False
