"""What every stage script does around its trainer: output-dir safety, resume, atomic final save, completion marker.

Rules (STYLE.md): an output_dir is never deleted; a stage resumes from its last checkpoint; a finished stage
refuses to be overwritten; the final model is moved into place only once fully written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

COMPLETE_MARKER = "training_complete.json"


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same folder and `os.replace` (no torn files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_complete(output_dir: str | Path) -> bool:
    """True when ``output_dir`` holds a finished stage (its completion marker exists)."""
    return (Path(output_dir) / COMPLETE_MARKER).is_file()


def prepare_output_dir(output_dir: str | Path) -> str | None:
    """Check ``output_dir`` before training and return the checkpoint to resume from, if any.

    Returns:
        `str | None`: the last ``checkpoint-N`` folder (via `transformers.trainer_utils.get_last_checkpoint`).

    Raises:
        FileExistsError: when ``output_dir`` already holds a finished stage; nothing is overwritten. Pick another
            ``--output_dir`` (or move the old one away).
    """
    from transformers.trainer_utils import get_last_checkpoint

    output_dir = Path(output_dir)
    if is_complete(output_dir):
        raise FileExistsError(
            f"{output_dir} already holds a finished run ({COMPLETE_MARKER} exists); refusing to overwrite it. "
            "Use another --output_dir."
        )
    if not output_dir.is_dir():
        return None
    return get_last_checkpoint(str(output_dir))


def save_final(output_dir: str | Path, save_fn: Callable[[Path], None], info: dict) -> None:
    """Save the final model atomically, then mark the stage complete.

    ``save_fn(tmp_dir)`` writes the model (``save_pretrained``) into a temp folder inside ``output_dir``; its
    entries are then renamed into ``output_dir`` and the completion marker (with ``info``) is written last, so a
    crash leaves either no final model or a complete one, and checkpoints are never touched.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".final-", dir=output_dir))
    try:
        save_fn(tmp)
        for entry in tmp.iterdir():
            target = output_dir / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)  # a leftover of an earlier interrupted final save of this same stage
            os.replace(entry, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_text(output_dir / COMPLETE_MARKER,
                      json.dumps({"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **peak_memory(), **info},
                                 indent=1, default=str))


def peak_memory() -> dict[str, float]:
    """This process's peak memory so far, in MB: ``peak_rss_mb`` (resident set, from ``getrusage``) and, with
    CUDA, ``peak_gpu_mb`` (``torch.cuda.max_memory_allocated``). Recorded in every stage's completion marker."""
    import resource
    import sys

    import torch

    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux, bytes on macOS
    out = {"peak_rss_mb": rss_kb / (2**20 if sys.platform == "darwin" else 2**10)}
    if torch.cuda.is_available():
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def read_log_history(output_dir: str | Path) -> list[dict]:
    """The ``log_history`` of a finished stage's ``trainer_state.json`` (TRL stages and our PPO), or []."""
    path = Path(output_dir) / "trainer_state.json"
    if not path.is_file():
        return []
    return json.loads(path.read_text()).get("log_history", [])


def save_trainer(trainer, folder: Path) -> None:
    """Save a TRL/transformers trainer's model (``save_pretrained``; the adapter for PEFT), tokenizer and state."""
    trainer.save_model(str(folder))
    trainer.state.save_to_json(str(Path(folder) / "trainer_state.json"))
