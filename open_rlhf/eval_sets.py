"""Held-out evaluation prompts from the local public data: conversational prompts plus, where the data has
them, gold answers, reference demonstrations and categories.

The sets (`EVAL_SETS`), with the file each reads under ``--data_dir`` (the shared data folder, e.g.
``../shared/data``; see its README for sources and licenses):

- ``builtin``: the built-in arithmetic task's held-out stream (no file); gold answers.
- ``gsm8k``: ``gsm8k/test.jsonl``, 1,319 problems; gold answers (the ``#### N`` number).
- ``mt_bench``: ``mt_bench/question.jsonl``, 80 questions; the first turn only, as a one-turn prompt;
  categories (writing, roleplay, ..., 10 each); references: the question's reference answer to the first
  turn where it has one (39 of 80, None elsewhere).
- ``self_instruct``: ``self-instruct/user_oriented_instructions.jsonl``, 252 instructions; the instruction,
  then a blank line and the first instance's input when that is non-empty; references: the first instance's
  output (a human-written demonstration, for `open_rlhf.metrics.perplexity`); categories: the motivating app.

``builtin`` and ``gsm8k`` are loaded with `open_rlhf.evaluation.held_out_prompts`
(`open_rlhf.data.load_splits`, kind ``"prompt"``), so ``limit`` and ``seed`` give exactly the prompts a stage
run on that source with ``--eval_size limit --split_seed seed`` held out of training (the pipeline's
``--eval_prompts``). The other sets are never trained on; a ``limit`` below their size takes a seeded sample,
kept in file order.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from open_rlhf import data, evaluation
from open_rlhf.errors import ConfigError, DataFormatError, DataNotFoundError

__all__ = ["BUILTIN_EVAL_SIZE", "EVAL_SETS", "EvalSet", "load_eval_set"]

# Eval set -> its file under --data_dir (None: generated, no file).
EVAL_SETS: dict[str, str | None] = {
    "builtin": None,
    "gsm8k": "gsm8k/test.jsonl",
    "mt_bench": "mt_bench/question.jsonl",
    "self_instruct": "self-instruct/user_oriented_instructions.jsonl",
}
BUILTIN_EVAL_SIZE = 64  # prompts of ``builtin`` when no limit is given: the pipeline's default --eval_prompts


@dataclass
class EvalSet:
    """Held-out prompts of one eval set, with per-prompt extras aligned to ``prompts``.

    Attributes:
        name (`str`): the eval set, a key of `EVAL_SETS`.
        prompts (`list[list[dict[str, str]]]`): `N` conversational prompts
            ``[{"role": "user", "content": ...}]``.
        answers (`list[str]`, *optional*): `N` gold final answers (``builtin``, ``gsm8k``), for
            `open_rlhf.tasks.gsm8k.is_correct`.
        references (`list[str | None]`, *optional*): `N` reference responses (``self_instruct``: all present;
            ``mt_bench``: None where the question has none).
        categories (`list[str]`, *optional*): `N` category labels (``mt_bench``: the category;
            ``self_instruct``: the motivating app).
    """

    name: str
    prompts: list[list[dict[str, str]]]
    answers: list[str] | None = None
    references: list[str | None] | None = None
    categories: list[str] | None = None

    def __post_init__(self):
        for extra in (self.answers, self.references, self.categories):
            assert extra is None or len(extra) == len(self.prompts)

    def __len__(self) -> int:
        return len(self.prompts)


def _user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for each non-empty line (`open_rlhf.data`'s reader); a bad line is a
    `DataFormatError` naming it."""
    try:
        records = data._read_jsonl(path)
    except DataFormatError as err:
        raise DataFormatError(f"{err} Or restore the file from the shared data (its README gives the sha256).") from err
    for number, record in records:
        if not isinstance(record, dict):
            raise DataFormatError(f"line {number} of {path} is a JSON {type(record).__name__}, not an object. Fix: "
                                  "restore the file from the shared data.")
    if not records:
        raise DataFormatError(f"{path} holds no records. Fix: restore the file from the shared data.")
    return records


def _field(record: dict, key: str, kind: type, path: Path, number: int):
    value = record.get(key)
    if not isinstance(value, kind) or (kind is list and not value):
        what = "a non-empty list" if kind is list else f"a {kind.__name__}"
        got = type(value).__name__ if key in record else "nothing"
        raise DataFormatError(f"line {number} of {path}: field '{key}' must be {what}, got {got}. Fix: "
                              "restore the file from the shared data (its README gives the format).")
    return value


def _mt_bench(path: Path) -> EvalSet:
    prompts, references, categories = [], [], []
    for number, record in _read_jsonl(path):
        turns = _field(record, "turns", list, path, number)
        if not isinstance(turns[0], str):
            raise DataFormatError(f"line {number} of {path}: the first of 'turns' must be a string")
        prompts.append(_user(turns[0]))
        categories.append(_field(record, "category", str, path, number))
        reference = record.get("reference")
        references.append(reference[0] if isinstance(reference, list) and reference
                          and isinstance(reference[0], str) else None)
    return EvalSet("mt_bench", prompts, references=references, categories=categories)


def _self_instruct(path: Path) -> EvalSet:
    prompts, references, categories = [], [], []
    for number, record in _read_jsonl(path):
        instruction = _field(record, "instruction", str, path, number).strip()
        instance = _field(record, "instances", list, path, number)[0]
        if not (isinstance(instance, dict) and isinstance(instance.get("input"), str)
                and isinstance(instance.get("output"), str)):
            raise DataFormatError(f"line {number} of {path}: the first of 'instances' must be an object with "
                                  "string fields 'input' and 'output'")
        given = instance["input"].strip()
        prompts.append(_user(f"{instruction}\n\n{given}" if given else instruction))
        references.append(instance["output"])
        categories.append(str(record.get("motivation_app", "")))
    return EvalSet("self_instruct", prompts, references=references, categories=categories)


def _held_out(name: str, source: str, limit: int | None, seed: int) -> EvalSet:
    """``builtin`` / ``gsm8k`` through `evaluation.held_out_prompts`: the prompts training held out."""
    if name == "builtin":
        prompts, answers = evaluation.held_out_prompts(source, limit or BUILTIN_EVAL_SIZE, seed)
        return EvalSet(name, prompts, answers=answers)
    everything = data.load_prompt_dataset(source)
    # The whole file: load_splits refuses an eval split that leaves no training data.
    if limit is None or limit >= len(everything):
        answers = list(everything["answer"]) if "answer" in everything.column_names else None
        return EvalSet(name, list(everything["prompt"]), answers=answers)
    prompts, answers = evaluation.held_out_prompts(source, limit, seed)
    return EvalSet(name, prompts, answers=answers)


def _sample(eval_set: EvalSet, limit: int | None, seed: int) -> EvalSet:
    if limit is None or limit >= len(eval_set):
        return eval_set
    keep = sorted(random.Random(seed).sample(range(len(eval_set)), limit))

    def pick(values):
        return None if values is None else [values[i] for i in keep]

    return EvalSet(eval_set.name, pick(eval_set.prompts), pick(eval_set.answers), pick(eval_set.references),
                   pick(eval_set.categories))


def load_eval_set(name: str, data_dir: str | Path | None = None, limit: int | None = None,
                  seed: int = 42) -> EvalSet:
    """Load an eval set's held-out prompts (see the module docstring for each set).

    Args:
        name (`str`): one of `EVAL_SETS` (``"builtin"``, ``"gsm8k"``, ``"mt_bench"``, ``"self_instruct"``;
            ``-`` is read as ``_``).
        data_dir (`str` or `Path`, *optional*): the shared data folder holding the files of `EVAL_SETS`;
            needed for every set but ``builtin``.
        limit (`int`, *optional*): at most this many prompts, >= 1. For ``builtin`` and ``gsm8k`` the held-out
            split of that size (default: 64 for ``builtin``, the whole file for ``gsm8k``); for the others a
            seeded sample in file order (default: all).
        seed (`int`): the split / sample seed (the pipeline's ``--split_seed``).

    Returns:
        `EvalSet`.

    Raises:
        ConfigError: for an unknown ``name`` (the message lists the eval sets), a ``limit`` that is not a
            whole number >= 1, or no ``data_dir`` for a set that reads a file.
        DataNotFoundError: when the set's file is not under ``data_dir`` (the message names the file and
            ``--data_dir``).
        DataFormatError: for a file that is not the expected JSON Lines (the message names the line and
            field).
    """
    key = name.strip().lower().replace("-", "_")
    if key not in EVAL_SETS:
        raise ConfigError(f"unknown eval set {name!r}; the eval sets are: {', '.join(EVAL_SETS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"the eval set limit must be a whole number >= 1 (or None for all), got {limit!r}")
    relative = EVAL_SETS[key]
    if relative is None:
        return _held_out(key, "builtin", limit, seed)
    if data_dir is None:
        raise ConfigError(f"eval set {key!r} reads {relative} under the shared data folder. Fix: pass "
                          "--data_dir (e.g. --data_dir ../shared/data).")
    path = Path(data_dir).expanduser() / relative
    if not path.is_file():
        raise DataNotFoundError(f"eval set {key!r}: {path} does not exist. Fix: point --data_dir at the "
                                f"shared data folder, the one holding {relative} (got --data_dir "
                                f"{data_dir}).")
    if key == "gsm8k":
        return _held_out(key, str(path), limit, seed)
    return _sample(_mt_bench(path) if key == "mt_bench" else _self_instruct(path), limit, seed)
