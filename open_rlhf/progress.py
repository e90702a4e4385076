"""Progress that reaches the user's terminal: a training bar that names the stage and shows the loss, and the
pipeline's relay of a stage's output (live, carriage returns included) into the terminal and a complete log.

Why a relay of raw bytes: a progress bar (tqdm) redraws one line with ``\\r``; a relay that reads the child's
output line by line holds every redraw back until the next ``\\n`` (minutes, during training). `relay_output`
passes bytes on as they arrive, and writes the stage log as lines: each line as it last looked on the screen
(the text after its final ``\\r``), flushed as soon as the line ends, so the log is complete and readable while
the stage runs.
"""

from __future__ import annotations

import collections
import os
import re
import sys
from typing import BinaryIO, TextIO

from transformers import ProgressCallback

_LOSS_KEYS = ("loss", "train_loss")
# Cursor movement and line clearing that tqdm and rich emit; dropped from the log, kept on the terminal.
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


class StageProgressCallback(ProgressCallback):
    """transformers' `ProgressCallback` with the stage name on the bar, the last loss (and reward, for RL) in
    its postfix, and the right starting point when a run resumes (the bar shows step/total and the ETA)."""

    def __init__(self, stage: str):
        super().__init__()
        self.stage = stage

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        if state.is_world_process_zero:
            self.training_bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.stage,
                                     dynamic_ncols=True)
        self.current_step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs:
            postfix = {k: f"{logs[k]:.4g}" for k in (*_LOSS_KEYS, "reward") if isinstance(logs.get(k), float)}
            if postfix:
                self.training_bar.set_postfix(postfix, refresh=False)
        super().on_log(args, state, control, logs=logs, **kwargs)


def use_stage_progress(trainer, stage: str) -> None:
    """Replace a transformers/TRL trainer's progress bar by `StageProgressCallback` (no-op without a bar)."""
    if any(isinstance(cb, ProgressCallback) for cb in trainer.callback_handler.callbacks):
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(StageProgressCallback(stage))


def _screen_line(raw: bytes) -> str:
    """What one line (without its ``\\n``) looked like on a terminal: the text after its last ``\\r``."""
    raw = _ANSI.sub(b"", raw)
    return raw.rsplit(b"\r", 1)[-1].decode("utf-8", errors="replace").rstrip()


def relay_output(source: BinaryIO | int, terminal: BinaryIO | None, log: TextIO, chunk_size: int = 4096,
                 tail: int = 20) -> list[str]:
    """Copy a child's output to the terminal as it arrives and to ``log`` line by line, until end of file.

    Args:
        source: the read end of the child's stdout pipe (a binary file or a file descriptor).
        terminal: where the raw bytes go (``sys.stdout.buffer``); None to relay nothing.
        log: a text file; every finished line is written as it last looked on the screen and flushed.
        chunk_size (`int`): bytes per read; a read returns as soon as any output is there.

        tail (`int`): how many of the last non-empty lines to return.

    Returns:
        `list[str]`: the last ``tail`` non-empty lines, as logged (for an error message when the child fails).
    """
    fd = source if isinstance(source, int) else source.fileno()
    pending = b""
    last: collections.deque[str] = collections.deque(maxlen=tail)
    while True:
        chunk = os.read(fd, chunk_size)
        if not chunk:
            break
        if terminal is not None:
            terminal.write(chunk)
            terminal.flush()
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            line = _screen_line(raw)
            log.write(line + "\n")
            if line:
                last.append(line)
        if lines:
            log.flush()
    if pending:
        line = _screen_line(pending)
        log.write(line + "\n")
        if line:
            last.append(line)
    log.flush()
    return list(last)


def stdout_buffer() -> BinaryIO | None:
    """The terminal's byte stream (None when stdout has none, e.g. under a test's capture)."""
    sys.stdout.flush()
    return getattr(sys.stdout, "buffer", None)
