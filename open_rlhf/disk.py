"""Free-disk check before a stage or the pipeline writes: fail in a second, not after an hour at the first save.

The estimate is an upper bound of what a stage holds on disk at its peak: the final model plus the checkpoints
that coexist while transformers rotates them (``save_total_limit`` + 1: the new one is written before the oldest is
deleted), each with the weights and the optimizer's states, for every trained model (PPO also trains a value model).
Training keeps fp32 weights (bf16 is autocast only), so 4 bytes per parameter; AdamW keeps 2 states per parameter.
With LoRA only the adapter is saved, so the estimate is far too high there: skip the check
(``OPEN_RLHF_SKIP_DISK_CHECK=1``, or ``--skip_disk_check`` in the pipeline).

Measured: ``make pipeline`` on the default 135M model (SFT, reward model, PPO with a value model, each with
``save_total_limit: 1``) took 12 GB; `estimate_pipeline_bytes` gives 12.3 GB for it (134,515,008 parameters: three
finished stages of 2.15, 2.15 and 4.30 GB, one extra PPO checkpoint of 3.23 GB while it rotates, 0.5 GB margin).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from pathlib import Path

from open_rlhf.errors import UserError

SKIP_ENV = "OPEN_RLHF_SKIP_DISK_CHECK"
GB = 1e9
MARGIN_BYTES = int(0.5 * GB)  # logs, tokenizer, trainer state, event files, datasets' cache writes
_DTYPE_BYTES = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "U8": 1, "I8": 1, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1}


class DiskSpaceError(UserError, OSError):
    """Not enough free disk for a stage or the pipeline."""


def estimate_stage_bytes(num_parameters: int, *, trained_models: int = 1, bytes_per_parameter: int = 4,
                         optimizer_states: int = 2, checkpoints_on_disk: int = 2,
                         margin_bytes: int = MARGIN_BYTES) -> int:
    """Peak bytes a stage writes: ``P * b * m * (1 + (1 + s) * c) + margin``.

    Args:
        num_parameters: parameters of one trained model (P).
        trained_models: models trained and saved (m: 2 for PPO with a value model of the policy's size).
        bytes_per_parameter: of the saved weights and each optimizer state (b: 4 for fp32).
        optimizer_states: per parameter (s: 2 for Adam/AdamW, 0 for SGD without momentum).
        checkpoints_on_disk: checkpoints that coexist at the peak (c: ``save_total_limit + 1``; 0 without saves).
        margin_bytes: a fixed margin.

    Returns:
        `int`: bytes (the final model, plus ``c`` checkpoints of weights and optimizer states, plus the margin).
    """
    weights = num_parameters * bytes_per_parameter * trained_models
    return weights + weights * (1 + optimizer_states) * checkpoints_on_disk + margin_bytes


def checkpoints_on_disk(save_strategy: str, save_total_limit: int | None, save_steps: float = 0,
                        max_steps: int = -1) -> int:
    """How many checkpoints coexist at the peak: 0 without saves, else ``save_total_limit + 1`` (rotation writes
    the new one first), at most the number of saves when it is known (``max_steps // save_steps``)."""
    strategy = str(getattr(save_strategy, "value", save_strategy))
    if strategy == "no":
        return 0
    saves = None
    if strategy == "steps" and max_steps and max_steps > 0 and save_steps:
        saves = int(1 / save_steps) if save_steps < 1 else int(max_steps // save_steps)
    if saves is not None:
        return min(save_total_limit + 1, saves) if save_total_limit else saves
    return save_total_limit + 1 if save_total_limit else 3  # unknown count (epochs, no limit): a guess


def count_parameters(model_path: str | Path) -> int | None:
    """Parameters of a local model folder, from its safetensors headers (nothing is loaded); None when unknown
    (a hub id, or no ``*.safetensors``)."""
    folder = Path(model_path)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    total = 0
    for path in files:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, info in header.items():
            if name != "__metadata__":
                total += math.prod(info["shape"])
    return total


def free_bytes(folder: str | Path) -> int:
    """Free bytes on the file system of ``folder`` (its nearest existing parent when it does not exist yet)."""
    path = Path(folder).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def check_free_disk(folder: str | Path, needed_bytes: int, what: str, override: str | None = None) -> None:
    """Raise `DiskSpaceError` when ``folder``'s file system has less than ``needed_bytes`` free.

    Skipped when ``$OPEN_RLHF_SKIP_DISK_CHECK`` is set (to anything but 0/empty).

    Raises:
        DiskSpaceError: naming the folder, the free and the needed GB and how to override.
    """
    if os.environ.get(SKIP_ENV, "") not in ("", "0"):
        return
    free = free_bytes(folder)
    if free < needed_bytes:
        how = override or f"set {SKIP_ENV}=1"
        raise DiskSpaceError(
            f"not enough free disk for {what} in {folder}: {free / GB:.1f} GB free, about {needed_bytes / GB:.1f} GB "
            f"needed (final model + checkpoints with optimizer states + margin, open_rlhf.disk). Fix: free space, "
            f"use another --output_dir or a lower --save_total_limit; or, if you know it fits, {how}.")


def stage_estimate(training_args, num_parameters: int) -> int:
    """`estimate_stage_bytes` for a stage's `TrainingArguments` (save strategy, limit, steps); ``num_parameters``
    of all its trained models together."""
    kept = checkpoints_on_disk(training_args.save_strategy, training_args.save_total_limit,
                               training_args.save_steps, training_args.max_steps)
    return estimate_stage_bytes(num_parameters, checkpoints_on_disk=kept)


def check_stage_disk(name: str, training_args, trained_models: list, use_peft: bool = False) -> None:
    """Before a stage trains: `check_free_disk` at its ``output_dir`` against `stage_estimate` for the parameters
    of ``trained_models`` (None entries ignored; tied weights counted once). Skipped with LoRA (``use_peft``:
    only adapters are saved, the estimate would be far too high).

    Raises:
        DiskSpaceError: see `check_free_disk`.
    """
    if use_peft:
        return
    params = sum(p.numel() for m in trained_models if m is not None for p in m.parameters())
    check_free_disk(training_args.output_dir, stage_estimate(training_args, params), f"the {name} stage")


def estimate_pipeline_bytes(num_parameters: int, stages: list[tuple[int, int]], bytes_per_parameter: int = 4,
                            optimizer_states: int = 2, margin_bytes: int = MARGIN_BYTES) -> int:
    """Peak bytes of several stages run one after the other, each leaving its final model and checkpoints behind.

    Args:
        num_parameters: of the starting model (every stage trains a model of its size).
        stages: per stage ``(trained_models, checkpoints_on_disk)`` (`checkpoints_on_disk`, rotation included).

    Returns:
        `int`: every stage after it finished (final model + ``c - 1`` checkpoints), plus the largest single
        checkpoint (the one extra while the biggest stage rotates), plus the margin once.
    """
    weights = [num_parameters * bytes_per_parameter * m for m, _ in stages]
    checkpoint = [w * (1 + optimizer_states) if c else 0 for w, (_, c) in zip(weights, stages, strict=True)]
    kept = [w + ck * max(c - 1, 0) for w, ck, (_, c) in zip(weights, checkpoint, stages, strict=True)]
    return sum(kept) + max(checkpoint, default=0) + margin_bytes
