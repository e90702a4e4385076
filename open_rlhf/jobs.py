"""Background training jobs: a reward model or a DPO policy trained on the web demo's votes by the stage scripts.

A `TrainingJob` runs ``scripts/train_dpo.py`` or ``scripts/train_reward.py`` (the same scripts a user runs, with
their default configs) as a child process in its own session, reading ``--dataset_name <feedback folder>``: the
arena's vote files load as TRL preference data (`open_rlhf.data`, `open_rlhf.arena`). The job's state comes from
the process and the stage's own files: the step and loss from ``metrics.jsonl`` (`open_rlhf.progress.read_metrics`),
completion from the stage's marker (`open_rlhf.outputs.is_complete`). Stopping sends SIGTERM to the whole process
group (SIGKILL after a grace period); the output folder is kept, so the stage resumes from its last checkpoint if it
is started again with the same ``output_dir``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from open_rlhf import outputs
from open_rlhf.progress import read_metrics

REPO_ROOT = Path(__file__).resolve().parents[1]
JOB_KINDS = {"dpo": ("scripts/train_dpo.py", "config/dpo/plain.yaml"),
             "reward": ("scripts/train_reward.py", "config/reward/default.yaml")}
LOG_NAME = "job.log"


@dataclass
class JobStatus:
    """What a job is doing.

    Attributes:
        state (`str`): ``"running"``, ``"finished"`` (the model is published), ``"failed"`` or ``"stopped"``.
        step, max_steps (`int`): training progress from the stage's metrics (0 before the first log).
        losses (`list[tuple[int, float]]`): ``(step, loss)`` of every logged step.
        log_tail (`str`): the last lines of the job's output.
        output_dir (`str`): where the model is written.
        returncode (`int`, *optional*): the process's exit status once it has ended.
    """

    state: str
    step: int
    max_steps: int
    losses: list[tuple[int, float]]
    log_tail: str
    output_dir: str
    returncode: int | None

    def describe(self) -> str:
        progress = f"step {self.step}/{self.max_steps}" if self.max_steps else "loading the model and data"
        loss = f", loss {self.losses[-1][1]:.4f}" if self.losses else ""
        return {"running": f"running: {progress}{loss}",
                "finished": f"finished: {self.output_dir} ({progress}{loss}); it is in the model picker now",
                "stopped": f"stopped at {progress}; {self.output_dir} is kept",
                "failed": f"failed (exit status {self.returncode}); see the log below"}[self.state]


def job_command(kind: str, model: str, dataset: str, output_dir: str, max_steps: int = 20,
                learning_rate: float | None = None, beta: float | None = None, batch_size: int = 4,
                extra: list[str] | None = None) -> list[str]:
    """The stage command of a job: ``python scripts/train_<kind>.py --config config/<kind>/default.yaml ...``.

    No eval split is held out (``--eval_size 0``: a few dozen votes are all training data), every step is logged,
    and ``save_steps`` is the run's length (one checkpoint at the end, which the final save replaces).

    Raises:
        ValueError: for an unknown ``kind`` or a non-positive ``max_steps`` / ``batch_size``.
    """
    if kind not in JOB_KINDS:
        raise ValueError(f"job kind must be one of {sorted(JOB_KINDS)}, got {kind!r}")
    if max_steps < 1 or batch_size < 1:
        raise ValueError(f"max_steps and batch_size must be >= 1, got {max_steps} and {batch_size}")
    script, config = JOB_KINDS[kind]
    command = [sys.executable, str(REPO_ROOT / script), "--config", str(REPO_ROOT / config),
               "--model_name_or_path", model, "--dataset_name", dataset, "--output_dir", output_dir,
               "--eval_size", "0", "--max_steps", str(max_steps), "--per_device_train_batch_size", str(batch_size),
               "--logging_steps", "1", "--save_steps", str(max_steps)]
    if learning_rate is not None:
        command += ["--learning_rate", str(learning_rate)]
    if beta is not None and kind == "dpo":
        command += ["--beta", str(beta)]
    return command + list(extra or [])


def new_job_dir(runs_dir: str | Path, kind: str) -> Path:
    """A new ``<runs_dir>/feedback-<kind>-<UTC time>`` folder name (not created); never an existing one."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out, n = Path(runs_dir) / f"feedback-{kind}-{stamp}", 1
    while out.exists():
        n += 1
        out = Path(runs_dir) / f"feedback-{kind}-{stamp}-{n}"
    return out


class TrainingJob:
    """A stage script running in the background; see the module docstring.

    Args:
        command (`list[str]`): the command (`job_command`).
        output_dir (`str` or `Path`): the stage's ``--output_dir``; the job's output goes to ``<output_dir>/job.log``.
        max_steps (`int`): the run's length, shown before the stage logs its first step.
    """

    def __init__(self, command: list[str], output_dir: str | Path, max_steps: int):
        self.command = command
        self.output_dir = Path(output_dir)
        self.max_steps = max_steps
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.output_dir / LOG_NAME
        self._stopped = False
        self._lock = threading.Lock()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as log:
            log.write(("$ " + " ".join(command) + "\n").encode())
            log.flush()
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env, start_new_session=True)
        self.started_at = time.time()

    @classmethod
    def start(cls, kind: str, model: str, dataset: str, runs_dir: str | Path = "runs", **kwargs) -> TrainingJob:
        """Start a ``kind`` job (``"dpo"`` or ``"reward"``) on ``model`` with the data at ``dataset`` in a new
        ``runs/feedback-<kind>-<time>/`` folder; ``kwargs`` go to `job_command`."""
        output_dir = new_job_dir(runs_dir, kind).resolve()
        if model != "default" and Path(model).expanduser().exists():
            model = str(Path(model).expanduser().resolve())  # the job's command names absolute paths only
        command = job_command(kind, model, str(Path(dataset).resolve()), str(output_dir), **kwargs)
        return cls(command, output_dir, kwargs.get("max_steps", 20))

    def poll(self) -> JobStatus:
        """The job's current `JobStatus` (cheap: reads two small files)."""
        returncode = self.process.poll()
        metrics = read_metrics(self.output_dir)
        losses = [(int(m["step"]), float(m["loss"])) for m in metrics if isinstance(m.get("loss"), (int, float))]
        step = max([int(m["step"]) for m in metrics] or [0])
        max_steps = max([int(m.get("max_steps") or 0) for m in metrics] or [self.max_steps]) or self.max_steps
        if returncode is None:
            state = "running"
        elif outputs.is_complete(self.output_dir):
            state = "finished"
        else:
            state = "stopped" if self._stopped else "failed"
        return JobStatus(state, step, max_steps, losses, self.log_tail(), str(self.output_dir), returncode)

    def log_tail(self, lines: int = 15, max_bytes: int = 20000) -> str:
        """The last ``lines`` lines of the job's output, with progress-bar redraws resolved."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log_path) - max_bytes))
                text = f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
        # a progress bar redraws its line with "\r": keep what the line last showed
        screen = [([part for part in line.split("\r") if part.strip()] or [""])[-1] for line in text.split("\n")]
        return "\n".join(screen[-lines:]).rstrip()

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the stage: SIGTERM to its process group, SIGKILL after ``grace_s`` seconds. Its folder stays."""
        with self._lock:
            if self.process.poll() is not None:
                return
            self._stopped = True
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass

    def wait(self, timeout: float | None = None) -> JobStatus:
        """Wait for the job to end (or ``timeout`` seconds) and return its status."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        return self.poll()
