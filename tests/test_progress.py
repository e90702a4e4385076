"""Progress that reaches the terminal: the pipeline's relay of a stage's output (live bytes to the terminal, a
flushed line-by-line log) with real child processes, the stage progress bar of real training runs, and the
per-stage log of a real pipeline stage."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from open_rlhf import stages
from open_rlhf.progress import relay_output

REPO = Path(__file__).resolve().parents[1]
TINY_RUN = ["--per_device_train_batch_size", "2", "--max_train_samples", "16", "--eval_size", "4",
            "--report_to", "none", "--logging_steps", "1", "--save_steps", "1", "--learning_rate", "1e-3"]

# A stage-like child: finished lines, a tqdm-like bar redrawn with \r (colour escapes included) that has no \n
# yet, then it blocks until the test creates a file, so it cannot have exited while the test looks.
CHILD = textwrap.dedent(r"""
    import os, sys, time
    out = sys.stdout.buffer
    def write(data):
        out.write(data)
        out.flush()
    write(b"starting\n")
    write(b"\rdownload  10%")
    write(b"\rdownload 100%\n")
    bar = b"\r\x1b[32mtrain\x1b[0m: %3d%%|%-4s| %d/2"
    write(bar % (0, b"", 0))
    write(bar % (50, b"##", 1))
    while not os.path.exists(sys.argv[1]):
        time.sleep(0.01)
    write(bar % (100, b"####", 2) + b"\n")
    write(b"{'loss': 1.5}\n")
    write(b"done")
""")
BAR_AT_1 = b"\r\x1b[32mtrain\x1b[0m:  50%|##  | 1/2"


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_relay_passes_redraws_on_live_and_logs_finished_lines_flushed(tmp_path):
    """While the child still runs: (1) its \\r bar redraw, which has no \\n yet, is already on the terminal;
    (2) the log file, read through another handle, already holds the finished lines, each as last shown. After
    it ends: (3) the log has every line as last shown (no \\r, no escapes) and the relay returns the tail.

    A line-by-line relay (``for line in proc.stdout``) fails (1): the bar's bytes wait for a \\n that the
    blocked child never writes; one that does not flush the log fails (2)."""
    release = tmp_path / "release"
    terminal_path, log_path = tmp_path / "terminal.bin", tmp_path / "stage.log"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(release)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    result: dict = {}
    with open(terminal_path, "wb") as terminal, open(log_path, "w", encoding="utf-8") as log:
        relay = threading.Thread(target=lambda: result.update(tail=relay_output(proc.stdout, terminal, log, tail=3)))
        relay.start()
        try:
            on_terminal = wait_for(lambda: terminal_path.read_bytes().endswith(BAR_AT_1))
            logged = wait_for(lambda: log_path.read_text(encoding="utf-8") == "starting\ndownload 100%\n")
            assert proc.poll() is None, "the child must still be running (it waits for the release file)"
            assert on_terminal, f"the bar's redraw did not reach the terminal live: {terminal_path.read_bytes()!r}"
            assert terminal_path.read_bytes() == (b"starting\n\rdownload  10%\rdownload 100%\n"
                                                  b"\r\x1b[32mtrain\x1b[0m:   0%|    | 0/2" + BAR_AT_1)
            # read through another handle: only what the relay flushed
            assert logged, f"the finished lines are not in the log yet: {log_path.read_text(encoding='utf-8')!r}"
        finally:
            release.touch()
            relay.join(timeout=30)
            proc.wait(timeout=30)
    assert not relay.is_alive() and proc.returncode == 0
    assert log_path.read_text(encoding="utf-8").splitlines() == [
        "starting", "download 100%", "train: 100%|####| 2/2", "{'loss': 1.5}", "done"]
    assert result["tail"] == ["train: 100%|####| 2/2", "{'loss': 1.5}", "done"]
    assert terminal_path.read_bytes().endswith(b"2/2\n{'loss': 1.5}\ndone")  # the raw bytes, in order


def test_relay_log_is_the_screen_whatever_the_read_boundaries(tmp_path):
    """One byte per read (multi-byte characters and escapes split across reads, through a real pipe): each
    line as it last looked on a terminal: later redraws overwrite earlier ones from column 0, ``\\r\\n`` keeps
    the line, erase-in-line erases, ``tqdm.write`` (clear, message, redraw) logs the message, blank lines stay."""
    output = ("█ 10%\r██ 20%\r\n"  # a redraw ends with \r\n: the line stays as drawn
              "long line\rshort\n"  # no padding: the old tail shows through, as on a terminal
              "\x1b[1mbold\x1b[0m 5/9\r\x1b[2K\x1b[34mnew\x1b[0m\n"  # ESC[2K erases the old text
              "abcdef\rxy\x1b[K\n"  # ESC[K erases to the end of the line
              "\n"
              "\r 50%|█    |\r          \r{'loss': '1.5'}\n"  # tqdm.write over a bar
              "\r 50%|█    |")  # unfinished at end of file
    read_end, write_end = os.pipe()
    os.write(write_end, output.encode())
    os.close(write_end)
    log_path = tmp_path / "log.txt"
    with open(log_path, "w", encoding="utf-8") as log:
        tail = relay_output(read_end, None, log, chunk_size=1)
    os.close(read_end)
    lines = ["██ 20%", "shortline", "new", "xy", "", "{'loss': '1.5'}", " 50%|█    |"]
    assert log_path.read_text(encoding="utf-8") == "".join(line + "\n" for line in lines)
    assert tail == [line for line in lines if line]


def bar_lines(stderr: str, stage: str) -> list[str]:
    """Each redraw of a stage's tqdm bar in captured output (redraws are separated by \\r or \\n)."""
    return [part.rstrip() for part in re.split(r"[\r\n]", stderr) if part.startswith(f"{stage}:")]


def test_stage_bar_names_the_stage_shows_the_loss_and_resumes_at_the_checkpoint(tmp_path, tiny_model_dir,
                                                                                    capsys):
    """Real SFT runs (`open_rlhf.stages.run_stage`): the bar says ``sft`` and shows the loss; a run resumed
    from checkpoint-1 starts its bar at 1/2, not 0/2."""
    args = ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path), *TINY_RUN]
    stages.run_stage("sft", *stages.make_parser("sft").parse_args_and_config(args=[*args, "--max_steps", "1"]))
    first = bar_lines(capsys.readouterr().err, "sft")
    assert first and first[0].startswith("sft:   0%|") and "| 0/1 [" in first[0], first
    assert re.match(r"sft: 100%\|.*\| 1/1 \[.*loss=\d", first[-1]), first

    (tmp_path / "training_complete.json").unlink()  # as if killed after checkpoint-1
    stages.run_stage("sft", *stages.make_parser("sft").parse_args_and_config(args=[*args, "--max_steps", "2"]))
    resumed = bar_lines(capsys.readouterr().err, "sft")
    assert resumed and resumed[0].startswith("sft:  50%|") and "| 1/2 [" in resumed[0], resumed
    assert not any("| 0/2 [" in line for line in resumed), resumed
    assert re.match(r"sft: 100%\|.*\| 2/2 \[.*loss=\d", resumed[-1]), resumed


@pytest.fixture(scope="module")
def dpo_pipeline(tmp_path_factory, tiny_model_dir):
    """``scripts/run_pipeline.py --method dpo`` from a finished policy (the tiny model): one real stage, 2 steps."""
    runs = tmp_path_factory.mktemp("runs")
    command = [sys.executable, "scripts/run_pipeline.py", "--method", "dpo", "--sft_model_path", str(tiny_model_dir),
               "--runs_dir", str(runs), "--run_name", "tiny", "--evaluate", "false",
               "--method_args", " ".join(["--max_steps", "2", *TINY_RUN])]
    proc = subprocess.run(command, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return runs / "tiny", proc


def test_pipeline_stage_log_holds_the_training_lines(dpo_pipeline):
    """``<runs_dir>/<run>/dpo.log``: the command, the stage's log lines, its per-step losses and its bar as
    last shown (``dpo: 100%| ... 2/2 [..., loss=...]``), without \\r or escapes; the terminal got the raw
    redraws."""
    run, proc = dpo_pipeline
    assert (run / "dpo" / "training_complete.json").is_file()
    log = (run / "dpo.log").read_text(encoding="utf-8")
    lines = log.splitlines()
    assert lines[0].startswith("$ ") and "train_dpo.py" in lines[0]
    assert "\r" not in log and "\x1b" not in log
    assert any("open_rlhf.stages: dpo: precision" in line for line in lines)
    assert sum(line.startswith("{'loss': ") for line in lines) == 2, log  # logging_steps 1, 2 steps
    assert any(re.match(r"dpo: 100%\|.*\| 2/2 \[.*loss=\d", line) for line in lines), log
    terminal = proc.stdout
    assert b"=== stage dpo: " in terminal and re.search(rb"\rdpo: +\d+%\|", terminal), terminal[-2000:]
