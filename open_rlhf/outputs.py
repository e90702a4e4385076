"""A stage's output folder: never overwritten, resumed from its last checkpoint, its final model published
atomically behind a completion marker.

Rules: an output_dir is never deleted; a stage resumes from its last ``checkpoint-N``; a folder that holds a
finished stage (`COMPLETE_MARKER`) refuses to be trained into again; the final model is moved into place only
once it is completely written (`open_rlhf.atomic.publish_entries`), and the marker is written last.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from open_rlhf.atomic import atomic_write_text, publish_entries
from open_rlhf.errors import OutputDirError
from open_rlhf.memory import peak_memory

COMPLETE_MARKER = "training_complete.json"
FINAL_TMP = ".final.tmp"  # where a distributed run writes its final model before it is published
INCOMPLETE_PREFIX = "incomplete-"  # a half-written checkpoint-N is renamed incomplete-checkpoint-N[-k]
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")  # transformers.trainer_utils' pattern

logger = logging.getLogger(__name__)


def is_complete(output_dir: str | Path) -> bool:
    """True when ``output_dir`` holds a finished stage (its completion marker exists)."""
    return (Path(output_dir) / COMPLETE_MARKER).is_file()


def prepare_output_dir(output_dir: str | Path) -> str | None:
    """Check ``output_dir`` before training and return the checkpoint to resume from, if any.

    Returns:
        `str | None`: the last ``checkpoint-N`` folder (via `transformers.trainer_utils.get_last_checkpoint`),
        after every half-written one was moved aside to ``incomplete-checkpoint-N`` with a warning.

    Raises:
        OutputDirError: when ``output_dir`` already holds a finished stage; nothing is overwritten. Pick another
            ``--output_dir`` (or move the old one away).
    """
    from transformers.trainer_utils import get_last_checkpoint

    output_dir = Path(output_dir)
    if is_complete(output_dir):
        raise OutputDirError(
            f"{output_dir} already holds a finished run ({COMPLETE_MARKER} exists); refusing to overwrite it. "
            "Fix: use another --output_dir, or move the old one away."
        )
    if not output_dir.is_dir():
        return None
    _move_aside_invalid_checkpoints(output_dir)
    return get_last_checkpoint(str(output_dir))


def _checkpoint_is_valid(folder: Path, step: int) -> bool:
    """Whether ``checkpoint-<step>`` was completely written: its ``trainer_state.json`` parses and names ``step``.

    Both transformers' ``Trainer._save_checkpoint`` and our PPO trainer write ``trainer_state.json`` last (after
    the weights, optimizer, scheduler and RNG states), so its presence marks a finished save. transformers 5.23
    writes straight into ``checkpoint-N/``: a kill during the save leaves a folder that `get_last_checkpoint`
    would pick, and ``Trainer.train`` would then silently restart at step 0 (no trainer state) with missing
    optimizer state.
    """
    try:
        state = json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and state.get("global_step") == step


def _checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for entry in output_dir.iterdir():
        match = _CHECKPOINT.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def valid_checkpoints(output_dir: str | Path) -> list[int]:
    """The steps of the completely written ``checkpoint-N`` folders of ``output_dir``, in order."""
    return [step for step, folder in _checkpoints(Path(output_dir)) if _checkpoint_is_valid(folder, step)]


def invalid_checkpoints(output_dir: str | Path) -> list[Path]:
    """The half-written ``checkpoint-N`` folders of ``output_dir`` (a save that was killed)."""
    return [folder for step, folder in _checkpoints(Path(output_dir)) if not _checkpoint_is_valid(folder, step)]


def remove_checkpoints(output_dir: str | Path) -> int:
    """Delete the ``checkpoint-N`` folders of a finished stage; its final model and marker stay.

    A checkpoint only serves to resume a stopped stage, and holds the optimizer states (about three times the
    model's size), so a sweep of many points fills a disk with them (`open_rlhf.sweep` calls this per finished
    point). Half-written checkpoints moved aside (``incomplete-checkpoint-N``) are left alone.

    Returns:
        `int`: the bytes freed.

    Raises:
        OutputDirError: ``output_dir`` holds no finished stage (no `COMPLETE_MARKER`): its checkpoints may still be
            needed to resume it, so nothing is deleted.
    """
    output_dir = Path(output_dir)
    if not is_complete(output_dir):
        raise OutputDirError(f"{output_dir} holds no finished stage ({COMPLETE_MARKER} is missing): its checkpoints "
                             "are what a resume needs, so none is deleted. Fix: finish (resume) the stage first.")
    freed = 0
    for _, folder in _checkpoints(output_dir):
        freed += sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        shutil.rmtree(folder)
    return freed


def _move_aside_invalid_checkpoints(output_dir: Path) -> None:
    """Rename every half-written ``checkpoint-N`` to ``incomplete-checkpoint-N`` (never deleted), with a warning,
    so that neither the resume nor transformers' checkpoint rotation (``checkpoint-*``) picks it up.
    Only the main process renames; every process then sees the same valid checkpoints."""
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        for folder in invalid_checkpoints(output_dir):
            target = folder.with_name(INCOMPLETE_PREFIX + folder.name)
            n = 1
            while target.exists():
                n += 1
                target = folder.with_name(f"{INCOMPLETE_PREFIX}{folder.name}-{n}")
            os.replace(folder, target)
            logger.warning("%s was not completely written (no valid trainer_state.json: the save was interrupted); "
                           "moved aside to %s and not resumed from. Delete it once you no longer need it.",
                           folder, target.name)
    state.wait_for_everyone()


def restore_token_count(trainer, checkpoint: str | None) -> None:
    """Restore the running token count that TRL's SFT and DPO trainers log as ``num_tokens``, after a resume.

    TRL 1.16's `SFTTrainer` and `DPOTrainer` keep it in ``trainer._total_train_tokens``, which no checkpoint holds:
    resumed, the count restarts at 0 and the logged ``num_tokens`` no longer matches an uninterrupted run
    (found by ``scripts/chaos_resume.py``). It is set to the last value the checkpoint's ``log_history`` logged at
    or before its step: exact when ``save_steps`` is a multiple of ``logging_steps`` (every preset), else short by
    the tokens of the steps since that log. GRPO logs ``state.num_input_tokens_seen``, which is restored already.
    """
    if checkpoint is None or not hasattr(trainer, "_total_train_tokens"):
        return
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    logged = [h["num_tokens"] for h in state.get("log_history", [])
              if "num_tokens" in h and h.get("step", 0) <= state.get("global_step", 0)]
    if logged:
        trainer._total_train_tokens = int(logged[-1])


def save_final(output_dir: str | Path, save_fn: Callable[[Path], None], info: dict) -> None:
    """Save the final model atomically, then mark the stage complete.

    ``save_fn(tmp_dir)`` writes the model (``save_pretrained``) into a temporary folder inside ``output_dir``;
    its entries are then renamed into ``output_dir`` and the completion marker (with ``info`` and the stage
    process's own peak memory, `open_rlhf.memory.peak_memory`; with several processes, the main one's) is
    written last, so a crash leaves either no final model or a complete one, and checkpoints are never touched.
    Call it on every process of a distributed run.
    """
    from accelerate import PartialState

    state = PartialState()
    output_dir = Path(output_dir)
    # Every process calls save_fn into one shared folder (sharded FSDP/DeepSpeed saves need all of them; the
    # trainers write on the main process only), then the main process publishes it. With one process the
    # barriers are no-ops.
    tmp = output_dir / FINAL_TMP
    if state.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # only our own leftover of an interrupted final save
        tmp.mkdir(parents=True)
    state.wait_for_everyone()
    save_fn(tmp)
    state.wait_for_everyone()
    if state.is_main_process:
        publish_entries(tmp, output_dir)
        tmp.rmdir()
    if state.is_main_process:
        atomic_write_text(output_dir / COMPLETE_MARKER,
                          json.dumps({"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **peak_memory(), **info},
                                     indent=1, default=str))
    state.wait_for_everyone()


def read_log_history(output_dir: str | Path) -> list[dict]:
    """The ``log_history`` of a finished stage's ``trainer_state.json`` (TRL stages and our PPO), or []."""
    path = Path(output_dir) / "trainer_state.json"
    if not path.is_file():
        return []
    return json.loads(path.read_text()).get("log_history", [])


def save_trainer(trainer, folder: Path) -> None:
    """Save a TRL/transformers trainer's model (``save_pretrained``; the adapter for PEFT), tokenizer and state."""
    trainer.save_model(str(folder))
    if trainer.is_world_process_zero():
        trainer.state.save_to_json(str(Path(folder) / "trainer_state.json"))


def new_results_dir(output_dir: str | None, kind: str, hint: str = "") -> Path:
    """The folder for the results of an evaluation command (not created here): ``output_dir``, or a new
    ``runs/<kind>/<UTC time>/``. Earlier results are never overwritten.

    Args:
        output_dir: the user's ``--output_dir`` (None: a new timestamped folder).
        kind: ``eval``, ``safety``, ...: the folder under ``runs/`` and the command's name in messages.
        hint: a sentence appended to the error (e.g. what in the old folder can be reused).

    Raises:
        OutputDirError: when ``output_dir`` exists and is not an empty folder.
    """
    from datetime import datetime, timezone

    if output_dir is None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        out, n = Path("runs") / kind / stamp, 1
        while out.exists():
            n += 1
            out = Path("runs") / kind / f"{stamp}-{n}"
        return out
    out = Path(output_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputDirError(f"--output_dir {out} already exists and is not empty; results are never overwritten. "
                             f"Fix: pass a new folder, or leave --output_dir out for runs/{kind}/<time>/." +
                             (f" {hint}" if hint else ""))
    return out
