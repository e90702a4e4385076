"""Benchmark helpers: peak memory of a block, the machine's matmul GFLOP/s, tables and CSV rows.

Speed and memory are measured in benchmark scripts (``scripts/bench_*.py``), never asserted in timed tests;
each script reports ratios against a baseline measured in the same process.
"""

from __future__ import annotations

import csv
import os
import threading
import time
from pathlib import Path

import torch


class PeakMemory:
    """Context manager measuring the peak memory of a block, in MB.

    On CUDA it reads ``torch.cuda.max_memory_allocated`` (reset on entry). On the CPU it samples the process's
    resident set size every ``interval`` seconds in a thread (``ru_maxrss`` cannot be reset, so it cannot tell
    two blocks of one process apart). ``peak_mb`` is the highest value seen, ``delta_mb`` that minus the value
    on entry (what the block added).
    """

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.peak_mb = self.start_mb = self.delta_mb = 0.0
        self._stop = threading.Event()

    @staticmethod
    def _rss_mb() -> float:
        import psutil

        return psutil.Process(os.getpid()).memory_info().rss / 2**20

    def _sample(self):
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._rss_mb())
            time.sleep(self.interval)

    def __enter__(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start_mb = torch.cuda.memory_allocated() / 2**20
        else:
            self.start_mb = self.peak_mb = self._rss_mb()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, self._rss_mb())
        self.delta_mb = self.peak_mb - self.start_mb
        return False


def matmul_gflops(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """Measured dense matmul throughput of this machine (``(n, n) @ (n, n)``, best of ``repeats``), GFLOP/s.

    The denominator of model FLOPs utilisation: what the hardware actually delivers for large matmuls here,
    rather than a datasheet peak.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up (allocations, kernel selection)
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def print_table(rows: list[dict], columns: list[str], title: str | None = None) -> None:
    """Print ``rows`` as an aligned text table of ``columns`` (floats with 2-4 significant decimals)."""

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    if title:
        print(f"\n{title}")
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def append_csv(rows: list[dict], path: str | Path, context: dict | None = None) -> Path:
    """Append ``rows`` (plus ``context`` columns such as machine and versions) to a CSV, rewriting it atomically
    so an interrupted run never leaves a torn file; earlier rows are kept."""
    from open_rlhf.stages import atomic_write_text

    path = Path(path)
    rows = [{**(context or {}), **r} for r in rows]
    old = list(csv.DictReader(path.open())) if path.is_file() else []
    fields = list(dict.fromkeys([k for r in old + rows for k in r]))
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(old + rows)
    atomic_write_text(path, buffer.getvalue())
    return path


def machine_context() -> dict:
    """Columns that identify where a benchmark ran."""
    import platform

    import transformers
    import trl

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}"
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "device": device, "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__}
