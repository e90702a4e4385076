"""Loaders of the shipped lm-eval tasks: the local public data under ``data_dir`` (lm-eval metadata).

lm-eval calls a task's ``custom_dataset`` with the task's metadata (``version``, ``config_source`` and whatever
``TaskManager(metadata=...)`` / the CLI's ``--metadata`` adds), so ``data_dir`` reaches these functions from
``eval/run_eval.py --data_dir DIR`` or from ``lm-eval run --include_path eval/tasks --metadata '{"data_dir": DIR}'``;
both give the same documents and the same numbers. The files are described in ``../shared/data/README.md``.
"""

from __future__ import annotations

import bz2
import json
from pathlib import Path

import datasets


def _path(data_dir, relative: str, task: str) -> Path:
    if not data_dir:
        raise ValueError(f"task {task} reads local data: give its folder as metadata data_dir "
                         "(eval/run_eval.py --data_dir DIR, or lm-eval --metadata '{\"data_dir\": \"DIR\"}')")
    path = Path(data_dir).expanduser() / relative
    if not path.is_file():
        raise FileNotFoundError(f"task {task} needs {path} (data_dir={data_dir}); "
                                "fix --data_dir to point at the shared public data")
    return path


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def arc_easy(data_dir=None, **_) -> datasets.DatasetDict:
    """ARC-Easy test (2,376 questions) in llm-foundry's layout: ``query`` ("Question: ..."), ``choices``, ``gold``."""
    rows = _jsonl(_path(data_dir, "arc/arc_easy.jsonl", "arc_easy_local"))
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def hellaswag(data_dir=None, **_) -> datasets.DatasetDict:
    """HellaSwag validation (10,042 items) from the plain-text layout of llama.cpp's ``perplexity --hellaswag``.

    Six lines per item: ``activity_label: context``, the gold ending index (0-3), then the four endings, already
    preprocessed upstream like lm-eval's ``hellaswag/utils.py`` does (markers removed, double spaces collapsed).
    One difference to lm-eval's ``hellaswag``: the layout joins ``ctx_a`` and ``ctx_b`` without capitalising
    ``ctx_b``, so a context may continue in lower case ("... on a roof. he").
    """
    path = _path(data_dir, "hellaswag/hellaswag_val_full.txt.bz2", "hellaswag_local")
    with bz2.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise ValueError(f"{path}: {len(lines)} lines is not a multiple of 6 (context, gold, 4 endings per item)")
    rows = [{"query": lines[i], "label": int(lines[i + 1]), "choices": lines[i + 2:i + 6]}
            for i in range(0, len(lines), 6)]
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)})


def gsm8k(data_dir=None, **_) -> datasets.DatasetDict:
    """GSM8K train (7,473; the few-shot pool) and test (1,319): ``question``, ``answer`` ending in ``#### N``."""
    return datasets.DatasetDict({split: datasets.Dataset.from_list(_jsonl(_path(data_dir, f"gsm8k/{split}.jsonl",
                                                                                  "gsm8k_local")))
                                 for split in ("train", "test")})
