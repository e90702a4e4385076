"""Peak memory that belongs to what is measured: a stage process's own peak, and the peak of one block."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from open_rlhf.memory import PeakMemory, peak_memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")


def test_a_child_process_reports_its_own_peak_not_its_parents():
    """The parent holds 1 GB when it starts a child: the child's peak must not include it.

    ``ru_maxrss`` would: Linux folds the pre-exec image's high-water mark into the child's (the stage processes of
    the pipeline once reported the driver's memory). The child here prints both.
    """
    ballast = bytearray(1024 * 2**20)
    for i in range(0, len(ballast), 4096):  # touch every page so it is resident
        ballast[i] = 1
    child = ("import json, resource; from open_rlhf.memory import peak_memory; "
             "print(json.dumps({**peak_memory(), 'ru_maxrss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss"
             " / 1024}))")
    out = json.loads(subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                                    check=True).stdout.strip().splitlines()[-1])
    del ballast
    assert out["peak_rss_source"] == "VmHWM"
    assert out["peak_rss_mb"] < 500, out  # the child's own: the interpreter and open_rlhf's light imports
    assert out["ru_maxrss_mb"] > 1000, out  # what the old measure reported for the same child


def test_peak_memory_of_one_block():
    """Two blocks of one process: the first allocates 300 MB, the second nothing. Each gets its own peak (a
    process-wide high-water mark would give the second the first's)."""
    with PeakMemory() as first:
        block = bytearray(300 * 2**20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        del block
    with PeakMemory() as second:
        sum(range(1000))
    assert first.source == second.source == "VmHWM"
    assert first.delta_mb > 250, first.delta_mb
    assert second.delta_mb < 50, second.delta_mb
    assert peak_memory()["peak_rss_mb"] >= first.start_mb
