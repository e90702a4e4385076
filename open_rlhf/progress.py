"""Progress that reaches the user's terminal: a training bar that names the stage and shows the loss, and the
pipeline's relay of a stage's output (live, carriage returns included) into the terminal and a complete log.

Why a relay of raw bytes: a progress bar (tqdm) redraws one line with ``\\r``; a relay that reads the child's
output line by line holds every redraw back until the next ``\\n`` (minutes, during training). `relay_output`
passes bytes on as they arrive, and writes the stage log as lines: each line as it last looked on the screen
(every ``\\r`` redraw applied over the line, escape sequences dropped), flushed as soon as the line ends, so the
log is complete and readable while the stage runs.
"""

from __future__ import annotations

import collections
import json
import os
import re
import sys
import time
from typing import BinaryIO, TextIO

from transformers import ProgressCallback, TrainerCallback

_LOSS_KEYS = ("loss", "train_loss")
# Text, or an escape: CSI sequences (cursor movement, line erasing, colours) that tqdm and rich emit, or a lone
# ESC. Escapes are kept on the terminal and dropped from the log.
_ANSI_OR_TEXT = re.compile(rb"(?P<escape>\x1b\[[0-9;?]*[A-Za-z]|\x1b)|(?P<text>[^\x1b]+)")


METRICS_FILE = "metrics.jsonl"  # one JSON line per logging step in a stage's output_dir, written as it trains


class StageProgressCallback(ProgressCallback):
    """transformers' `ProgressCallback` with the stage name on the bar, the last loss (and reward, for RL) in
    its postfix, and the right starting point when a run resumes (the bar shows step/total and the ETA).

    Every log is also appended to ``<output_dir>/metrics.jsonl`` (`METRICS_FILE`: ``{"step", "max_steps", "time",
    **logs}`` per line, flushed), so that another process (the web demo's training job) can follow the loss
    while the stage runs; `read_metrics` reads it back.

    Args:
        stage (`str`): the stage's name, the bar's description (``sft: 50%|...| 1/2 [..., loss=1.234]``).
    """

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
        append_metrics(args, state, logs)
        super().on_log(args, state, control, logs=logs, **kwargs)


def append_metrics(args, state, logs: dict | None) -> None:
    """Append one log to ``<args.output_dir>/metrics.jsonl`` (`METRICS_FILE`) as ``{"step", "max_steps", "time",
    **logs}`` (numbers and strings only), flushed; only the world's process zero writes. `StageProgressCallback`
    calls it for the TRL stages and `MetricsFileCallback` for trainers with a bar of their own (our PPO)."""
    if state.is_world_process_zero and logs and args.output_dir:
        record = {"step": state.global_step, "max_steps": state.max_steps, "time": time.time(),
                  **{k: v for k, v in logs.items() if isinstance(v, (int, float, str))}}
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, METRICS_FILE), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


class MetricsFileCallback(TrainerCallback):
    """Only the ``metrics.jsonl`` half of `StageProgressCallback`, for a trainer that draws its own progress bar
    (`open_rlhf.trainers.ppo.PPOTrainer`): the web demo's job view and the learning curves' training reward
    (`open_rlhf.curves.training_reward`) read the file."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        append_metrics(args, state, logs)


def read_metrics(output_dir: str | os.PathLike) -> list[dict]:
    """The records of ``<output_dir>/metrics.jsonl`` (`append_metrics`), in order; [] when there is none
    yet. A line still being written (no newline yet) is left for the next read."""
    path = os.path.join(output_dir, METRICS_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return []
    records = []
    for line in text.split("\n")[:-1]:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def use_stage_progress(trainer, stage: str) -> None:
    """Replace a transformers/TRL trainer's progress bar by `StageProgressCallback` (no-op without a bar)."""
    if any(isinstance(cb, ProgressCallback) for cb in trainer.callback_handler.callbacks):
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(StageProgressCallback(stage))


class _ScreenLine:
    """One terminal line as it is drawn: each ``\\r`` returns to its start and the text that follows overwrites
    it; ANSI escapes are dropped, except erase-in-line (``ESC[K``, ``ESC[2K``), which erases as a terminal does.

    Only the bytes after the last ``\\r`` are kept undecoded, so a bar redrawn for hours costs no more than one
    redraw (a multi-byte character cannot contain ``\\r`` or ``\\n``, so every finished segment decodes whole).
    """

    def __init__(self):
        self.text = ""
        self.segment = b""  # bytes after the last \r

    def feed(self, data: bytes) -> None:
        """Add output that holds no ``\\n``."""
        *done, self.segment = (self.segment + data).split(b"\r")
        for segment in done:
            self._draw(segment)

    def finish(self) -> str:
        """The line as it last looked (trailing blanks dropped); start a new one."""
        self._draw(self.segment)
        line = self.text.rstrip()
        self.text, self.segment = "", b""
        return line

    def _draw(self, segment: bytes) -> None:
        """Draw a segment from column 0 over the current text."""
        column = 0
        for match in _ANSI_OR_TEXT.finditer(segment):
            text, escape = match.group("text"), match.group("escape")
            if text:
                piece = text.decode("utf-8", errors="replace")
                self.text = self.text[:column] + piece + self.text[column + len(piece):]
                column += len(piece)
            elif escape in (b"\x1b[K", b"\x1b[0K"):
                self.text = self.text[:column]
            elif escape == b"\x1b[2K":
                self.text = " " * column


def relay_output(source: BinaryIO | int, terminal: BinaryIO | None, log: TextIO, chunk_size: int = 4096,
                 tail: int = 20) -> list[str]:
    """Copy a child's output to the terminal as it arrives and to ``log`` line by line, until end of file.

    Args:
        source (`BinaryIO` or `int`): the read end of the child's stdout pipe (a binary file or a file
            descriptor); it is read with `os.read`, so a read returns as soon as any output is there.
        terminal (`BinaryIO`, *optional*): where the raw bytes go, flushed after every read
            (``sys.stdout.buffer``, `stdout_buffer`); None to relay nothing.
        log (`TextIO`): gets every finished line as it last looked on the screen (`_ScreenLine`: the redraws
            after each ``\\r`` and erase-in-line applied, other escape sequences dropped), flushed as soon as a
            line ends; the unfinished last line too (unless blank), at end of file.
        chunk_size (`int`): the most bytes one read takes.
        tail (`int`): how many of the last non-empty lines to return.

    Returns:
        `list[str]`: the last ``tail`` non-empty lines, as logged (for an error message when the child fails).
    """
    fd = source if isinstance(source, int) else source.fileno()
    screen = _ScreenLine()
    last: collections.deque[str] = collections.deque(maxlen=tail)
    while True:
        chunk = os.read(fd, chunk_size)
        if not chunk:
            break
        if terminal is not None:
            terminal.write(chunk)
            terminal.flush()
        *finished, rest = chunk.split(b"\n")
        for part in finished:
            screen.feed(part)
            line = screen.finish()
            log.write(line + "\n")
            if line:
                last.append(line)
        screen.feed(rest)
        if finished:
            log.flush()
    line = screen.finish()  # what the child left on its unfinished last line, if anything
    if line:
        log.write(line + "\n")
        last.append(line)
    log.flush()
    return list(last)


def stdout_buffer() -> BinaryIO | None:
    """The terminal's byte stream (None when stdout has none, e.g. under a test's capture)."""
    sys.stdout.flush()
    return getattr(sys.stdout, "buffer", None)
