"""Benchmark helpers: the machine's matmul GFLOP/s, tables, and the columns that say where a row was measured.

Peak memory is `open_rlhf.memory.PeakMemory`; CSV rows are appended with `open_rlhf.atomic.append_csv`.

Speed and memory are measured in benchmark scripts (``scripts/bench_*.py``), never asserted in timed tests;
each script reports ratios against a baseline measured in the same process.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from open_rlhf.atomic import append_csv
from open_rlhf.hardware import describe_cpu

# Five everyday chat prompts of the chat and serving benchmarks (scripts/bench_chat.py, scripts/bench_serve.py)
CHAT_PROMPTS = (
    "What is the capital of France?",
    "Give me three tips for staying focused while studying.",
    "Explain in two sentences why the sky is blue.",
    "Write a haiku about autumn leaves.",
    "What is 17 + 25? Explain your steps.",
)


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


def machine_context() -> dict:
    """Columns that identify where a benchmark ran."""
    import platform

    import transformers
    import trl

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()}"
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "device": device, "cpu": describe_cpu(),
            "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__}


def report(rows: list[dict], columns: list[str], title: str, csv_path: str | Path, model: str) -> Path:
    """Print ``rows`` as a table, append them to ``csv_path`` with the machine's context columns, say where.

    Returns:
        `Path`: the CSV file (earlier rows kept; `open_rlhf.atomic.append_csv`).
    """
    context = machine_context()
    print_table(rows, columns, title=f"{title}\n{context['device'] if torch.cuda.is_available() else context['cpu']}")
    path = append_csv(rows, csv_path, {**context, "model": model})
    print(f"rows appended to {path}")
    return path
