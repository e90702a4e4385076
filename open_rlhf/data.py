"""Load any data source into TRL's standard columns, with errors that say where and how to fix.

Sources: a local ``.jsonl``, ``.json``, ``.jsonl.gz``, ``.json.gz`` or ``.parquet`` file, a folder of them,
a Hugging Face Hub dataset id, or ``"builtin"`` (the arithmetic task of `open_rlhf.tasks.arithmetic`).
JSON and JSON Lines are parsed here (not by `datasets`), so that a bad record is reported with its file and
line. Known raw formats are converted to TRL's standard formats (conversational):

- hh-rlhf transcripts (``chosen``/``rejected`` strings ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``) ->
  ``prompt`` (the shared turns, user/assistant alternating) / ``chosen`` / ``rejected`` (the final
  Assistant turns); pairs with an empty final turn are skipped with a counted warning, while a transcript
  with no ``"\\n\\nAssistant:"`` turn or a pair with equal final turns is an error (not skipped: the shared
  real file, hh-rlhf harmless-base test, has neither);
- GSM8K (``question``/``answer`` ending in ``"#### N"``) -> ``prompt`` (the question plus
  `open_rlhf.tasks.gsm8k.ANSWER_INSTRUCTION`) / ``completion`` (the worked answer without the ``<<48/2=24>>``
  calculator annotations) / ``answer`` (the final number, normalised);
- TRL's own formats (prompt-completion, preference, implicit-prompt preference, messages, prompt-only,
  unpaired preference) pass through, string prompts wrapped as conversations when ``conversational=True``
  (hh-rlhf and GSM8K are always converted to conversations);
- Arena votes (`open_rlhf.arena`: preference records with a ``vote`` field, a folder of ``votes-*.jsonl``) ->
  the preference pairs of the decisive votes (`DECISIVE_VOTES`) only: a ``"tie"`` or ``"both_bad"`` record holds
  its two answers in position order, not as a preference, so every loader skips it (one info line counts them);
  a source with no decisive vote, or an unknown ``vote`` value, is an error.

A ``.jsonl`` file whose last line has no final newline and is not valid JSON (a partial line left by an
interrupted append, e.g. a server killed while writing a vote) is read without that line, with a warning; any
other bad line is an error.

Only TRL's standard columns and ``answer`` (as a string) are kept. In every pair format (hh-rlhf, preference,
implicit-prompt preference) a pair whose chosen equals its rejected is an error, and so is a chosen or rejected
string that is an hh-rlhf transcript without an Assistant turn (which TRL's common-prefix prompt extraction would
otherwise cut into a meaningless pair).

Data larger than memory (``--streaming``, `load_streaming_splits`): a ``.jsonl``, ``.jsonl.gz`` or ``.parquet``
file, a folder of them or a Hub id is read one record at a time into a `datasets.IterableDataset`, with the same
detection, conversion and errors (a bad record is reported with its file and line when the stream reaches it); the
eval set is the stream's first ``eval_size`` examples. A ``.json`` file is one document and cannot be streamed.

The stage loaders (`load_sft_dataset`, `load_preference_dataset`, `load_prompt_dataset`, `load_splits`,
`load_streaming_splits`) are what the stages call. Every caller error is an `open_rlhf.errors.UserError`: a `DataFormatError` (a
`ValueError`) naming the file, the line (1-based) or item, the field and the fix; a `DataNotFoundError` for a
missing file; a `ConfigError` for a bad ``eval_size`` or ``max_samples``.
"""

from __future__ import annotations

import gzip
import itertools
import json
import logging
import os
import random
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset, IterableDataset

from open_rlhf.errors import ConfigError, DataFormatError, DataNotFoundError
from open_rlhf.tasks import arithmetic
from open_rlhf.tasks.gsm8k import normalize_number, user_prompt

logger = logging.getLogger(__name__)

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet")
# Format name -> the columns that identify it (for detection and for error messages).
FORMATS = {
    "hh_rlhf": "chosen, rejected (strings '\\n\\nHuman: ...\\n\\nAssistant: ...', no prompt)",
    "gsm8k": "question, answer (answer ends with '#### N')",
    "prompt_completion": "prompt, completion",
    "preference": "prompt, chosen, rejected",
    "implicit_preference": "chosen, rejected (sharing the prompt as a prefix, no prompt column)",
    "messages": "messages",
    "prompt_only": "prompt",
    "unpaired_preference": "prompt, completion, label",
    "stepwise": "prompt, completions (a list of steps), labels (one true/false per step)",
}
PAIR_FORMATS = ("hh_rlhf", "preference", "implicit_preference")  # the formats that hold preference pairs
# The ``vote`` field of Arena votes (`open_rlhf.arena` writes them and re-exports these); only the decisive ones
# are preference pairs.
VOTE_TYPES = ("a_better", "b_better", "tie", "both_bad")
DECISIVE_VOTES = ("a_better", "b_better")
BUILTIN_SOURCES = ("builtin", "builtin:arithmetic")
BUILTIN_SIZES = {"sft": 2000, "preference": 2000, "prompt": 2000, "stepwise": 2000}
EVAL_SPLITS = ("eval", "test", "validation")
# Split names that mark a folder's files as laid out by split ("train.jsonl", "test-00000.parquet").
SPLIT_NAMES = tuple(dict.fromkeys(("train", "test", "eval", "validation", "dev", *EVAL_SPLITS)))

_HH_MARKER = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_CALCULATOR_ANNOTATION = re.compile(r"<<[^<>]*>>")
_MESSAGE_ROLES = ("system", "user", "assistant", "tool")
# A file name starting with a split name not followed by a letter ("test.jsonl", "train-1.parquet", not "testimonials").
_SPLIT_FILE = re.compile(rf"(?:{'|'.join(SPLIT_NAMES)})(?![a-z])", flags=re.IGNORECASE)


# ---------------------------------------------------------------------------------------------------------
# Reading records with their locations
# ---------------------------------------------------------------------------------------------------------

@dataclass
class _Records:
    """Rows of a source plus where each came from, so that errors can point at a file and line."""

    rows: list[dict[str, Any]]
    name: str  # the source as the user gave it
    # Per row: (index into `files`, 1-based line/item/row number). Empty: rows are numbered in `name`.
    origins: list[tuple[int, int]] = field(default_factory=list)
    files: list[tuple[str, str]] = field(default_factory=list)  # (path, "line" | "item" | "row")

    def where(self, index: int) -> str:
        if not self.origins:
            return f"record {index + 1} of {self.name}"
        file_index, number = self.origins[index]
        path, unit = self.files[file_index]
        return f"{unit} {number} of {path}"


def _is_builtin(source: str) -> bool:
    if source.strip().lower() in BUILTIN_SOURCES:
        return True
    if source.strip().lower().startswith("builtin:"):
        raise ConfigError(f"unknown built-in task {source!r}; the built-in sources are {BUILTIN_SOURCES}")
    return False


def _has_supported_suffix(name: str) -> bool:
    return name.lower().endswith(SUPPORTED_SUFFIXES)


def _looks_local(source: str) -> bool:
    """True for a path that exists or cannot be a Hub id ("org/name"): a data-file suffix, ``/ . ~``."""
    return (Path(source).expanduser().exists() or _has_supported_suffix(source)
            or source.startswith(("/", ".", "~")) or source.count("/") > 1)


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
        if path.name.lower().endswith(".gz"):
            raw = gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as err:
        raise DataFormatError(f"truncated or corrupt gzip file {path}: {err}. Fix: download or compress the "
                              f"file again (`gzip -t {path}` checks it).") from err
    return raw


def _read_text(path: Path, raw: bytes | None = None) -> str:
    raw = _read_bytes(path) if raw is None else raw
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataFormatError(f"{path} is not UTF-8 text (byte {err.start}: {err.reason}). Fix: re-encode "
                              f"it as UTF-8.") from err


def _read_jsonl(path: Path) -> list[tuple[int, Any]]:
    """``(line number, parsed JSON)`` of each non-blank line; a partial last line (no final newline, not valid
    JSON: an interrupted append) is skipped with a warning."""
    raw = _read_bytes(path)
    # The last line is cut off as bytes: a write interrupted inside a multi-byte character is not UTF-8.
    cut = raw.rfind(b"\n") + 1
    records = []
    # Split on "\n" only: str.splitlines() would also split on U+2028 inside JSON strings.
    lines = _read_text(path, raw[:cut]).split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            raise DataFormatError(f"bad JSON on line {number} of {path}: {err.msg} (column {err.colno}). Fix: "
                                  f"each line of a .jsonl file must be one complete JSON object.") from err
    last = raw[cut:]
    if last.strip():
        try:
            records.append((len(lines), json.loads(last.decode("utf-8-sig"))))
        except (UnicodeDecodeError, json.JSONDecodeError):
            _warn_partial_line(len(lines), path)
    return records


def _warn_partial_line(number: int, path: Path) -> None:
    logger.warning("skipped line %d of %s: a partial line (no final newline, not valid JSON) left by an "
                   "interrupted append, e.g. a server killed while writing", number, path)


def _read_json(path: Path, split: str) -> list[tuple[int, Any]]:
    text = _read_text(path)
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFormatError(f"bad JSON on line {err.lineno} of {path}: {err.msg} (column {err.colno}). "
                              f"Fix: the file must hold one JSON list of objects.") from err
    if isinstance(data, dict):
        keys = [key for key in (split, "data") if isinstance(data.get(key), list)]
        if not keys:
            raise DataFormatError(f"{path} holds a JSON object with keys {sorted(data)}, but no list of records "
                                  f"under {split!r} or 'data'. Fix: make the file a JSON list of objects, or "
                                  f"put that list under the key 'data'.")
        data = data[keys[0]]
    if not isinstance(data, list):
        raise DataFormatError(f"{path} holds a JSON {type(data).__name__}, not a list of records. Fix: make "
                              f"the file a JSON list of objects.")
    return list(enumerate(data, start=1))


def _read_parquet(path: Path) -> list[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as err:
        raise DataFormatError(f"cannot read parquet file {path}: {err}. Fix: the file is truncated or not "
                              f"parquet; write it again (e.g. `Dataset.to_parquet`).") from err
    return list(enumerate(rows, start=1))


def _read_file(path: Path, split: str, records: _Records, in_folder: bool = False) -> None:
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        unit, numbered = "line", _read_jsonl(path)
    elif name.endswith((".json", ".json.gz")):
        unit, numbered = "item", _read_json(path, split)
    elif name.endswith(".parquet"):
        unit, numbered = "row", _read_parquet(path)
    else:
        raise DataFormatError(f"{path}: unsupported file type. Fix: use one of {', '.join(SUPPORTED_SUFFIXES)}.")
    if not numbered:
        if in_folder and unit == "line" and path.stat().st_size:  # only a partial line (warned): no record yet
            return
        raise DataFormatError(f"{path} is empty: no records found. Fix: give a file with at least one record.")
    records.files.append((str(path), unit))
    file_index = len(records.files) - 1
    for number, row in numbered:
        _check_object(row, f"{unit} {number} of {path}")
        records.rows.append(row)
        records.origins.append((file_index, number))


def _check_object(row: Any, where: str) -> None:
    if not isinstance(row, dict):
        raise DataFormatError(f"{where} is a JSON {type(row).__name__}, not an object. Fix: every record must be "
                              f'an object such as {{"prompt": "...", "completion": "..."}}.')


def _folder_files(folder: Path, split: str) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and _has_supported_suffix(p.name))
    if not files:
        raise DataFormatError(f"folder {folder} holds no data file. Fix: put files ending in "
                              f"{', '.join(SUPPORTED_SUFFIXES)} in it.")
    # A folder laid out by split (train.jsonl, test.jsonl, train-00001.parquet) gives only `split`'s files.
    for_split = [p for p in files if p.name.lower().startswith(split.lower())]
    if for_split:
        return for_split
    by_split = [p.name for p in files if _SPLIT_FILE.match(p.name)]
    if by_split:
        def listing(names: list[str]) -> str:
            return ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")

        raise DataFormatError(f"folder {folder} holds files named by split ({listing(by_split)}) but none for split "
                              f"{split!r} (data files found: {listing([p.name for p in files])}). Fix: pass the file "
                              f"path directly, or name a file '{split}.jsonl' (a name starting with {split!r}).")
    return files


def _kind(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


class _Consistency:
    """Checks, one record at a time, that every record has the first record's fields, each of one JSON type
    (the same check for a list of records and for a stream: it keeps only the first record's fields and, per
    field, the first type seen and where)."""

    def __init__(self):
        self.first: dict[str, Any] | None = None
        self.first_where = ""
        self.kinds: dict[str, tuple[str, str]] = {}  # field -> (JSON type, where it was first seen)

    def check(self, row: dict[str, Any], where: str) -> None:
        if self.first is None:
            self.first, self.first_where = row, where
        elif row.keys() != self.first.keys():
            missing = sorted(self.first.keys() - row.keys())
            extra = sorted(row.keys() - self.first.keys())
            problem = (f"missing field '{missing[0]}'" if missing
                       else f"field '{extra[0]}' that the first record lacks")
            raise DataFormatError(f"{where}: record has {problem} (the first record, {self.first_where}, has "
                                  f"fields {sorted(self.first)}). Fix: give every record the same fields.")
        for key, value in row.items():
            kind = _kind(value)
            if kind is None:
                continue
            if key not in self.kinds:
                self.kinds[key] = (kind, where)
            elif self.kinds[key][0] != kind:
                raise DataFormatError(f"{where}: field '{key}' is a {kind}, but it is a {self.kinds[key][0]} in "
                                      f"{self.kinds[key][1]}. Fix: give field '{key}' the same type in every "
                                      f"record.")


def _check_consistent(records: _Records) -> None:
    """Every record has the first record's fields, each of the same JSON type."""
    checker = _Consistency()
    for index, row in enumerate(records.rows):
        checker.check(row, records.where(index))


def _read_records(source: str, split: str = "train") -> _Records:
    path = Path(source).expanduser()
    if path.is_dir():
        records = _Records(rows=[], name=str(path))
        for file in _folder_files(path, split):
            _read_file(file, split, records, in_folder=True)
        if not records.rows:
            raise DataFormatError(f"folder {path} holds no complete record yet. Fix: give it at least one record.")
    elif path.is_file():
        records = _Records(rows=[], name=str(path))
        _read_file(path, split, records)
    elif _looks_local(source):
        raise DataNotFoundError(f"no such data file or folder: {path}. Fix: check the path, or pass 'builtin' "
                                f"for the built-in task.")
    else:
        dataset = datasets.load_dataset(source, split=split)
        return _Records(rows=dataset.to_list(), name=f"hub dataset {source!r} (split {split!r})")
    _check_consistent(records)
    return records


def _to_dataset(rows: list[dict[str, Any]], name: str) -> Dataset:
    import pyarrow as pa

    try:
        return Dataset.from_list(rows)
    except (pa.ArrowException, TypeError, ValueError) as err:
        raise DataFormatError(f"{name}: the records cannot be stored as one table ({err}). Fix: give each "
                              f"field the same nested structure in every record.") from err


def load_records(source: str, split: str = "train") -> Dataset:
    """Read a data source as it is (no conversion): a local file, a folder of files, or a Hub dataset.

    Args:
        source (`str`): a ``.jsonl``, ``.json`` (a list of objects, or an object with that list under
            ``split`` or ``"data"``), ``.jsonl.gz``, ``.json.gz`` or ``.parquet`` file; a folder (its
            supported files, sorted by name and concatenated; if some names start with ``split``, only
            those; if none does but some start with another split name of `SPLIT_NAMES`, an error);
            otherwise a Hugging Face Hub id loaded with `datasets.load_dataset`.
        split (`str`): the split of a Hub dataset (and the file-name filter for folders).

    Returns:
        `datasets.Dataset` with one row per record.

    Raises:
        DataNotFoundError: when ``source`` looks like a local path (has a data-file suffix, starts with
            ``/``, ``.`` or ``~``) and does not exist.
        DataFormatError: for an empty file, bad JSON (with its line; a partial last line of a ``.jsonl``
            file, with no final newline, is skipped with a warning instead), a record that is not an object, a
            truncated or corrupt gzip or parquet file, records whose fields or field types differ from the
            first record's, an empty folder, a folder whose files are named by split but not by ``split``.
    """
    if _is_builtin(source):
        raise ValueError(f"{source!r} is the built-in task; load it with load_sft_dataset, "
                         f"load_preference_dataset or load_prompt_dataset.")
    if not _looks_local(source):
        # Hub dataset: keep `datasets`' own table (no round trip through Python objects).
        return datasets.load_dataset(source, split=split)
    records = _read_records(source, split)
    return _to_dataset(records.rows, records.name)


# ---------------------------------------------------------------------------------------------------------
# Format detection
# ---------------------------------------------------------------------------------------------------------

def _is_hh_transcript(value: Any) -> bool:
    return isinstance(value, str) and "Human:" in value and "Assistant:" in value


def _detect(columns: list[str], first_row: dict[str, Any] | None, name: str) -> str:
    cols = set(columns)
    if {"chosen", "rejected"} <= cols:
        if "prompt" in cols:
            return "preference"
        if first_row is not None and _is_hh_transcript(first_row.get("chosen")):
            return "hh_rlhf"
        return "implicit_preference"
    if "messages" in cols:
        return "messages"
    if {"prompt", "completions", "labels"} <= cols:
        return "stepwise"
    if "prompt" in cols and "completion" in cols:
        return "unpaired_preference" if "label" in cols else "prompt_completion"
    if "prompt" in cols and not cols & {"chosen", "rejected", "completion"}:
        return "prompt_only"
    if {"question", "answer"} <= cols:
        return "gsm8k"
    accepted = "; ".join(f"{fmt}: {cols_}" for fmt, cols_ in FORMATS.items())
    raise DataFormatError(f"{name}: unknown data format, columns found: {sorted(cols)}. Fix: rename the "
                          f"columns to one of the accepted formats ({accepted}).")


def detect_format(dataset: Dataset) -> str:
    """The format of a dataset, from its column names (and, for chosen/rejected, its first record).

    Args:
        dataset (`datasets.Dataset`): as returned by `load_records`.

    Returns:
        `str`, one of ``"hh_rlhf"``, ``"gsm8k"``, ``"prompt_completion"``, ``"preference"``,
        ``"implicit_preference"``, ``"messages"``, ``"prompt_only"``, ``"unpaired_preference"``, ``"stepwise"``.

    Raises:
        DataFormatError: when the columns match no known format; the message lists the columns found and
            the formats accepted.
    """
    first_row = dataset[0] if len(dataset) else None
    return _detect(dataset.column_names, first_row, "dataset")


# ---------------------------------------------------------------------------------------------------------
# Conversion to TRL's standard formats
# ---------------------------------------------------------------------------------------------------------

def _type_name(value: Any) -> str:
    return _kind(value) or "null"


def _check_text(value: Any, column: str, where: str) -> str:
    if not isinstance(value, str):
        raise DataFormatError(f"{where}: field '{column}' must be a string, got a {_type_name(value)}. Fix: "
                              f"store '{column}' as text.")
    return value


def _check_turns(value: Any, column: str, where: str) -> str | list[dict[str, str]]:
    """A string or a list of {"role", "content"} messages (TRL's standard vs. conversational types)."""
    if isinstance(value, str):
        return value
    fix = (f"Fix: give '{column}' as a string or as a list of messages like "
           f'[{{"role": "user", "content": "..."}}].')
    if not isinstance(value, list):
        raise DataFormatError(f"{where}: field '{column}' must be a string or a list of messages, got a "
                              f"{_type_name(value)}. {fix}")
    for position, message in enumerate(value, start=1):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise DataFormatError(f"{where}: message {position} of field '{column}' is not a "
                                  f"{{'role': str, 'content': str}} object. {fix}")
        if message["role"] not in _MESSAGE_ROLES:
            raise DataFormatError(f"{where}: message {position} of field '{column}' has role "
                                  f"{message['role']!r}; roles must be one of {_MESSAGE_ROLES}. {fix}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _as_messages(value: str | list[dict[str, str]], role: str, conversational: bool):
    if isinstance(value, str) and conversational:
        return [{"role": role, "content": value}]
    return value


def _check_hh_has_assistant(value: Any, column: str, where: str) -> None:
    """An hh-rlhf transcript (a string with a ``"\\n\\nHuman:"`` turn) must have an Assistant turn."""
    if isinstance(value, str) and "\n\nHuman:" in value and "\n\nAssistant:" not in value:
        raise DataFormatError(f"{where}: field '{column}' is an hh-rlhf transcript with no '\\n\\nAssistant:' "
                              f"turn. Fix: an hh-rlhf transcript needs a final Assistant turn "
                              f"('\\n\\nHuman: ...\\n\\nAssistant: ...', the response after it); complete "
                              f"the transcript or drop the record.")


def _check_pair_differs(chosen: Any, rejected: Any, where: str, what: str = "") -> None:
    if chosen == rejected:
        raise DataFormatError(f"{where}: fields 'chosen' and 'rejected' are the same{what}, so the pair prefers "
                              f"nothing. Fix: chosen and rejected must differ; drop this record or give the "
                              f"rejected response.")


def _split_hh(chosen: str, rejected: str, where: str):
    """(prompt messages, final chosen turn, final rejected turn) of two hh-rlhf transcripts, or None.

    The prompt is the shared prefix of the two transcripts up to its last ``"\\n\\nAssistant:"`` marker
    (as TRL's own hh-rlhf script does), so a final turn may itself contain text like ``"Human:"`` (a handful
    of hh-rlhf responses do). Consecutive turns of one speaker (4 harmless-base prompts) are merged with a
    blank line so that roles alternate. Returns None for a prompt that is not a Human/Assistant dialogue
    ending with a Human turn.
    """
    shared = os.path.commonprefix([chosen, rejected])
    markers = [m for m in _HH_MARKER.finditer(shared) if m.group(1) == "Assistant"]
    if not markers:
        raise DataFormatError(f"{where}: fields 'chosen' and 'rejected' share no prompt ending in "
                              f"'\\n\\nAssistant:'. Fix: both transcripts must repeat the same dialogue and "
                              f"differ only in the final Assistant turn.")
    cut = markers[-1]
    chosen_final, rejected_final = chosen[cut.end():], rejected[cut.end():]
    if "\n\nHuman:" in chosen_final or "\n\nHuman:" in rejected_final:
        raise DataFormatError(f"{where}: fields 'chosen' and 'rejected' do not share the prompt (they differ "
                              f"before the final Assistant turn). Fix: both transcripts must repeat the same "
                              f"dialogue and differ only in the final Assistant turn.")
    parts = _HH_MARKER.split(chosen[:cut.start()])
    if parts[0].strip():
        return None
    messages: list[dict[str, str]] = []
    for speaker, text in zip(parts[1::2], parts[2::2], strict=True):
        role = _HH_ROLES[speaker]
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] = f"{messages[-1]['content']}\n\n{text.strip()}"
        else:
            messages.append({"role": role, "content": text.strip()})
    if not messages or messages[-1]["role"] != "user":
        return None
    return messages, chosen_final.strip(), rejected_final.strip()


def _hh_row(row: dict[str, Any], where: str) -> tuple[dict[str, Any] | None, str | None]:
    """``(converted row, None)`` of one hh-rlhf record, or ``(None, "empty" | "malformed")`` for a skipped one."""
    chosen = _check_text(row["chosen"], "chosen", where)
    rejected = _check_text(row["rejected"], "rejected", where)
    _check_hh_has_assistant(chosen, "chosen", where)
    _check_hh_has_assistant(rejected, "rejected", where)
    split = _split_hh(chosen, rejected, where)
    if split is None:
        return None, "malformed"
    prompt, chosen_final, rejected_final = split
    if not chosen_final or not rejected_final:
        return None, "empty"
    _check_pair_differs(chosen_final, rejected_final, where, " (the same final Assistant turn)")
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen_final}],
            "rejected": [{"role": "assistant", "content": rejected_final}]}, None


def _warn_hh_skipped(name: str, skipped: dict[str, int]) -> None:
    if skipped.get("empty"):
        logger.warning("%s: skipped %d hh-rlhf records whose final chosen or rejected turn is empty",
                       name, skipped["empty"])
    if skipped.get("malformed"):
        logger.warning("%s: skipped %d hh-rlhf records whose prompt is not a Human/Assistant dialogue ending "
                       "with a Human turn", name, skipped["malformed"])


def _convert_hh(records: _Records) -> list[dict[str, Any]]:
    rows, skipped = [], {"empty": 0, "malformed": 0}
    for index, row in enumerate(records.rows):
        converted, reason = _hh_row(row, records.where(index))
        if converted is None:
            skipped[reason] += 1
        else:
            rows.append(converted)
    _warn_hh_skipped(records.name, skipped)
    return rows


def _gsm8k_row(row: dict[str, Any], where: str) -> dict[str, Any]:
    question = _check_text(row["question"], "question", where)
    solution = _check_text(row["answer"], "answer", where)
    if "#### " not in solution:
        raise DataFormatError(f"{where}: field 'answer' has no '#### ' marker. Fix: end every GSM8K answer "
                              f"with a line '#### N' giving the final number.")
    final = solution.rsplit("#### ", 1)[1].strip()
    answer = normalize_number(final)
    if answer is None:
        raise DataFormatError(f"{where}: field 'answer' ends with '#### {final}', which is not a number. "
                              f"Fix: write the final answer as a number after '#### '.")
    return {"prompt": [{"role": "user", "content": user_prompt(question)}],
            "completion": [{"role": "assistant", "content": _CALCULATOR_ANNOTATION.sub("", solution).strip()}],
            "answer": answer}


def _convert_gsm8k(records: _Records) -> list[dict[str, Any]]:
    return [_gsm8k_row(row, records.where(index)) for index, row in enumerate(records.rows)]


def _implicit_row(row: dict[str, Any], where: str, conversational: bool) -> dict[str, Any]:
    from trl import maybe_extract_prompt

    chosen = _check_turns(row["chosen"], "chosen", where)
    rejected = _check_turns(row["rejected"], "rejected", where)
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise DataFormatError(f"{where}: 'chosen' and 'rejected' must both be strings or both be lists of "
                              f"messages. Fix: give them the same type.")
    _check_hh_has_assistant(chosen, "chosen", where)
    _check_hh_has_assistant(rejected, "rejected", where)
    _check_pair_differs(chosen, rejected, where)
    extracted = maybe_extract_prompt({"chosen": chosen, "rejected": rejected})
    if not extracted["prompt"]:
        raise DataFormatError(f"{where}: fields 'chosen' and 'rejected' share no prompt prefix. Fix: add a "
                              f"'prompt' column, or repeat the same prompt at the start of both.")
    return {"prompt": _as_messages(extracted["prompt"], "user", conversational),
            "chosen": _as_messages(extracted["chosen"], "assistant", conversational),
            "rejected": _as_messages(extracted["rejected"], "assistant", conversational),
            **_extra(row)}


def _convert_implicit(records: _Records, conversational: bool) -> list[dict[str, Any]]:
    return [_implicit_row(row, records.where(index), conversational) for index, row in enumerate(records.rows)]


def _extra(row: dict[str, Any]) -> dict[str, Any]:
    """The columns kept beside the standard ones: just the gold ``answer`` (as a string)."""
    if "answer" in row and row["answer"] is not None:
        return {"answer": str(row["answer"])}
    return {}


_STANDARD_ROLES = {"prompt": "user", "completion": "assistant", "chosen": "assistant", "rejected": "assistant"}
_STANDARD_COLUMNS = {"prompt_completion": ("prompt", "completion"), "preference": ("prompt", "chosen", "rejected"),
                     "prompt_only": ("prompt",), "unpaired_preference": ("prompt", "completion"),
                     "messages": ("messages",)}


def _standard_row(row: dict[str, Any], fmt: str, where: str, conversational: bool) -> dict[str, Any]:
    values = {column: _check_turns(row[column], column, where) for column in _STANDARD_COLUMNS[fmt]}
    if fmt == "messages":
        if isinstance(values["messages"], str) or not values["messages"]:
            raise DataFormatError(f"{where}: field 'messages' must be a non-empty list of messages. Fix: "
                                  f'give it as [{{"role": "user", "content": "..."}}, ...].')
        return {"messages": values["messages"], **_extra(row)}
    # TRL needs all the columns of a row to be strings or all conversational: wrap the strings when any
    # column is conversational, or when asked to.
    wrap = conversational or any(not isinstance(v, str) for v in values.values())
    out = {column: _as_messages(value, _STANDARD_ROLES[column], wrap) for column, value in values.items()}
    if fmt == "preference":
        _check_pair_differs(out["chosen"], out["rejected"], where)
    if fmt == "unpaired_preference":
        if not isinstance(row["label"], bool):
            raise DataFormatError(f"{where}: field 'label' must be true or false, got "
                                  f"{row['label']!r}. Fix: label desirable completions true and "
                                  f"undesirable ones false.")
        out["label"] = row["label"]
    return {**out, **_extra(row)}


def _convert_standard(records: _Records, fmt: str, conversational: bool) -> list[dict[str, Any]]:
    return [_standard_row(row, fmt, records.where(index), conversational) for index, row in enumerate(records.rows)]


def _convert_stepwise(records: _Records, conversational: bool) -> list[dict[str, Any]]:
    """Stepwise supervision (TRL's format): ``completions`` a list of step strings, ``labels`` one bool per step."""
    rows = []
    for index, row in enumerate(records.rows):
        where = records.where(index)
        prompt = _as_messages(_check_turns(row["prompt"], "prompt", where), "user", conversational)
        steps, labels = row["completions"], row["labels"]
        if not isinstance(steps, list) or not steps or not all(isinstance(s, str) and s.strip() for s in steps):
            raise DataFormatError(f"{where}: field 'completions' must be a non-empty list of non-empty step strings, "
                                  f"got {steps!r:.80}. Fix: one string per solution step, e.g. one per line.")
        if not isinstance(labels, list) or len(labels) != len(steps) or not all(isinstance(x, bool) for x in labels):
            raise DataFormatError(f"{where}: field 'labels' must be a list of {len(steps)} true/false values, one per "
                                  f"step of 'completions', got {labels!r:.80}. Fix: label each step true (correct) "
                                  f"or false (wrong).")
        rows.append({"prompt": prompt, "completions": list(steps), "labels": list(labels), **_extra(row)})
    return rows


def _is_decisive(row: dict[str, Any], where: str) -> bool:
    """Whether an Arena vote record is a preference pair (`DECISIVE_VOTES`); an unknown ``vote`` is an error."""
    if row["vote"] not in VOTE_TYPES:
        raise DataFormatError(f"{where}: field 'vote' is {row['vote']!r}, not an Arena vote. Fix: 'vote' must be "
                              f"one of {', '.join(VOTE_TYPES)} (as `open_rlhf.arena.vote_record` writes it); correct "
                              f"or drop the record.")
    return row["vote"] in DECISIVE_VOTES


def _decisive_votes(records: _Records) -> _Records:
    """The Arena votes of ``records`` whose ``vote`` is decisive (`DECISIVE_VOTES`), with their origins."""
    if not records.origins:  # a Hub dataset: number the rows as `_Records.where` does, before dropping some
        records = _Records(records.rows, records.name, [(0, n) for n in range(1, len(records.rows) + 1)],
                           [(records.name, "record")])
    skipped = dict.fromkeys(VOTE_TYPES, 0)
    keep = []
    for index, row in enumerate(records.rows):
        if _is_decisive(row, records.where(index)):
            keep.append(index)
        else:
            skipped[row["vote"]] += 1
    if not keep:
        raise DataFormatError(f"{records.name}: no decisive votes yet: its {len(records.rows)} Arena votes are all "
                              f"ties or both-bad, which are not preference pairs. Fix: vote A or B in the Arena "
                              f"(a_better / b_better) before training on the votes.")
    logger.info("%s: %d decisive Arena votes kept as preference pairs; skipped %d ties and %d both-bad votes",
                records.name, len(keep), skipped["tie"], skipped["both_bad"])
    return _Records([records.rows[i] for i in keep], records.name, [records.origins[i] for i in keep],
                    records.files)


def _standardize(records: _Records, conversational: bool) -> tuple[str, list[dict[str, Any]]]:
    """(detected format, rows in a TRL standard format) of the records."""
    columns = list(records.rows[0]) if records.rows else []
    fmt = _detect(columns, records.rows[0] if records.rows else None, records.name)
    if fmt in PAIR_FORMATS and "vote" in columns:
        records = _decisive_votes(records)
    if fmt == "hh_rlhf":
        rows = _convert_hh(records)
    elif fmt == "gsm8k":
        rows = _convert_gsm8k(records)
    elif fmt == "implicit_preference":
        rows = _convert_implicit(records, conversational)
    elif fmt == "stepwise":
        rows = _convert_stepwise(records, conversational)
    else:
        rows = _convert_standard(records, fmt, conversational)
    if not rows:
        raise DataFormatError(f"{records.name}: no usable records left after conversion. Fix: check the "
                              f"warnings above for the records that were skipped.")
    return fmt, rows


# ---------------------------------------------------------------------------------------------------------
# Stage loaders
# ---------------------------------------------------------------------------------------------------------

def _truncate(dataset: Dataset, max_samples: int | None, seed: int) -> Dataset:
    if max_samples is None:
        return dataset
    if max_samples <= 0:
        raise ConfigError(f"max_samples must be a positive number of examples or None, got {max_samples}")
    return dataset.shuffle(seed=seed).select(range(min(max_samples, len(dataset))))


def _builtin_split(split: str) -> str:
    if split == "train":
        return "train"
    if split in EVAL_SPLITS:
        return "eval"
    raise ValueError(f"the built-in task has splits 'train' and 'eval' ({', '.join(EVAL_SPLITS)}), got {split!r}")


def _load(source: str, split: str, conversational: bool) -> tuple[str, list[dict[str, Any]], str]:
    records = _read_records(source, split)
    fmt, rows = _standardize(records, conversational)
    return fmt, rows, records.name


def _sft_example(row: dict[str, Any], fmt: str) -> dict[str, Any] | None:
    """An SFT example from a converted preference row: a pair's chosen answer, an unpaired row's completion when
    its ``label`` is true (None otherwise); other formats are SFT examples already."""
    if fmt in PAIR_FORMATS:
        return {"prompt": row["prompt"], "completion": row["chosen"], **_extra(row)}
    if fmt == "unpaired_preference":
        return {"prompt": row["prompt"], "completion": row["completion"], **_extra(row)} if row["label"] else None
    return row


def load_sft_dataset(source: str, split: str = "train", builtin_size: int = BUILTIN_SIZES["sft"],
                     max_samples: int | None = None, seed: int = 42, conversational: bool = True) -> Dataset:
    """SFT data: ``prompt``/``completion`` (+ ``answer`` when the source has one), or ``messages``.

    Preference data (hh-rlhf, prompt/chosen/rejected) gives SFT on the chosen responses; unpaired preference
    data gives its ``label=True`` completions.

    Args:
        source (`str`): a file, folder or Hub id (see `load_records`), or ``"builtin"``.
        split (`str`): the Hub split; for ``"builtin"``, ``"train"`` or an eval split (``"eval"``,
            ``"test"``, ``"validation"``), which comes from the held-out stream.
        builtin_size (`int`): number of built-in examples.
        max_samples (`int`, *optional*): keep the first ``max_samples`` examples after a shuffle with ``seed``.
        seed (`int`): seed of that shuffle.
        conversational (`bool`): wrap string prompts/completions as conversations.

    Returns:
        `datasets.Dataset` in TRL's prompt-completion (or messages) format.

    Raises:
        DataFormatError: for unreadable data, or data without completions (prompt-only).
        DataNotFoundError: for a missing local file (a `FileNotFoundError`).
    """
    if _is_builtin(source):
        dataset = arithmetic.sft_dataset(builtin_size, split=_builtin_split(split))
        return _truncate(dataset, max_samples, seed)
    fmt, rows, name = _load(source, split, conversational)
    if fmt in PAIR_FORMATS or fmt == "unpaired_preference":
        rows = [example for r in rows if (example := _sft_example(r, fmt)) is not None]
    elif fmt == "prompt_only":
        raise DataFormatError(f"{name} holds only prompts ({FORMATS['prompt_only']}); SFT needs completions. "
                              f"Fix: use a dataset with columns {FORMATS['prompt_completion']} or messages.")
    return _truncate(_to_dataset(rows, name), max_samples, seed)


def load_preference_dataset(source: str, split: str = "train", builtin_size: int = BUILTIN_SIZES["preference"],
                            max_samples: int | None = None, seed: int = 42,
                            conversational: bool = True) -> Dataset:
    """Preference pairs: ``prompt``/``chosen``/``rejected`` (+ ``answer`` when the source has one).

    Args:
        source (`str`): a file, folder or Hub id (see `load_records`), or ``"builtin"``.
        split (`str`): the Hub split; for ``"builtin"``, ``"train"`` or an eval split.
        builtin_size (`int`): number of built-in pairs.
        max_samples (`int`, *optional*): keep the first ``max_samples`` pairs after a shuffle with ``seed``.
        seed (`int`): seed of that shuffle.
        conversational (`bool`): wrap string prompts/responses as conversations.

    Returns:
        `datasets.Dataset` in TRL's (explicit-prompt) preference format.

    Raises:
        DataFormatError: for unreadable data, data that is not pairs (hh-rlhf, preference, implicit
            preference), a pair whose chosen equals its rejected, a chosen/rejected hh-rlhf transcript with
            no Assistant turn, or Arena votes (`open_rlhf.arena`) with no decisive vote or an unknown ``vote``.
        DataNotFoundError: for a missing local file (a `FileNotFoundError`).
    """
    if _is_builtin(source):
        dataset = arithmetic.preference_dataset(builtin_size, split=_builtin_split(split))
        return _truncate(dataset, max_samples, seed)
    fmt, rows, name = _load(source, split, conversational)
    if fmt not in PAIR_FORMATS:
        raise DataFormatError(f"{name} is in the {fmt} format ({FORMATS[fmt]}), not preference pairs. Fix: use "
                              f"a dataset with columns {FORMATS['preference']}, or hh-rlhf transcripts.")
    return _truncate(_to_dataset(rows, name), max_samples, seed)


def unpair(pairs: Dataset) -> Dataset:
    """Preference pairs -> unpaired examples: each pair gives ``(prompt, chosen, label=True)`` and
    ``(prompt, rejected, label=False)`` (TRL's `unpair_preference_dataset`; other columns are kept)."""
    from trl.data_utils import unpair_preference_dataset

    return unpair_preference_dataset(pairs)


def load_unpaired_dataset(source: str, split: str = "train", builtin_size: int = BUILTIN_SIZES["preference"],
                          max_samples: int | None = None, seed: int = 42, conversational: bool = True) -> Dataset:
    """Unpaired desirable/undesirable examples for KTO: ``prompt``/``completion``/``label`` (`bool`).

    Native unpaired data is used as it is; preference pairs (hh-rlhf, explicit or implicit prompt, the built-in
    task) are split into two unpaired examples each with `unpair`.

    Args:
        source (`str`): a file, folder or Hub id (see `load_records`), or ``"builtin"``.
        split (`str`): the Hub split; for ``"builtin"``, ``"train"`` or an eval split.
        builtin_size (`int`): number of built-in pairs (twice as many unpaired examples).
        max_samples (`int`, *optional*): keep the first ``max_samples`` examples after a shuffle with ``seed``.
        seed (`int`): seed of that shuffle.
        conversational (`bool`): wrap string prompts/completions as conversations.

    Returns:
        `datasets.Dataset` in TRL's unpaired-preference format.

    Raises:
        DataFormatError: for unreadable data, data that is neither unpaired nor paired preferences, or a bad
            pair (see `load_preference_dataset`).
        DataNotFoundError: for a missing local file (a `FileNotFoundError`).
    """
    if _is_builtin(source):
        return _truncate(unpair(arithmetic.preference_dataset(builtin_size, split=_builtin_split(split))),
                         max_samples, seed)
    dataset, paired = _load_unpaired_source(source, split, conversational)
    return _truncate(unpair(dataset) if paired else dataset, max_samples, seed)


def _load_unpaired_source(source: str, split: str, conversational: bool) -> tuple[Dataset, bool]:
    """``(dataset, paired)``: native unpaired examples (``paired=False``), or the preference pairs of a pair
    source, not yet unpaired (``paired=True``; the same dataset `load_preference_dataset` gives)."""
    fmt, rows, name = _load(source, split, conversational)
    if fmt == "unpaired_preference":
        return _to_dataset(rows, name), False
    if fmt not in PAIR_FORMATS:
        raise DataFormatError(f"{name} is in the {fmt} format ({FORMATS[fmt]}), not (un)paired preferences. Fix: "
                              f"use columns {FORMATS['unpaired_preference']} or {FORMATS['preference']}.")
    return _to_dataset(rows, name), True


def _prompt_of_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation up to (not including) its final assistant turn."""
    if messages[-1]["role"] == "assistant":
        return messages[:-1]
    return messages


def load_prompt_dataset(source: str, split: str = "train", builtin_size: int = BUILTIN_SIZES["prompt"],
                        max_samples: int | None = None, seed: int = 42, conversational: bool = True) -> Dataset:
    """RL prompts: ``prompt`` (+ ``answer`` when the source has one, e.g. GSM8K or the built-in task).

    From SFT or preference data only the prompt is kept; from ``messages`` the conversation up to its final
    assistant turn.

    Args:
        source (`str`): a file, folder or Hub id (see `load_records`), or ``"builtin"``.
        split (`str`): the Hub split; for ``"builtin"``, ``"train"`` or an eval split.
        builtin_size (`int`): number of built-in prompts.
        max_samples (`int`, *optional*): keep the first ``max_samples`` prompts after a shuffle with ``seed``.
        seed (`int`): seed of that shuffle.
        conversational (`bool`): wrap string prompts as conversations.

    Returns:
        `datasets.Dataset` in TRL's prompt-only format.

    Raises:
        DataFormatError: for unreadable data.
        DataNotFoundError: for a missing local file (a `FileNotFoundError`).
    """
    if _is_builtin(source):
        dataset = arithmetic.prompt_dataset(builtin_size, split=_builtin_split(split))
        return _truncate(dataset, max_samples, seed)
    fmt, rows, name = _load(source, split, conversational)
    if fmt == "messages":
        rows = [{"prompt": _prompt_of_messages(r["messages"]), **_extra(r)} for r in rows]
    else:
        rows = [{"prompt": r["prompt"], **_extra(r)} for r in rows]
    return _truncate(_to_dataset(rows, name), max_samples, seed)


def load_stepwise_dataset(source: str, split: str = "train", builtin_size: int = BUILTIN_SIZES["stepwise"],
                          max_samples: int | None = None, seed: int = 42, conversational: bool = True) -> Dataset:
    """Process-reward-model data: step-labelled solutions, or prompts with gold answers to label by Monte Carlo.

    - ``"builtin"``: `open_rlhf.tasks.arithmetic.stepwise_dataset` (labels exact, from where each slip happens).
    - stepwise-supervision data (``prompt``, ``completions``, ``labels``): checked and passed through.
    - anything with prompts and gold answers (GSM8K, prompt + answer): ``prompt`` / ``answer`` rows without labels,
      which the PRM stage labels with Monte-Carlo rollouts (`open_rlhf.inference.prm.monte_carlo_step_labels`).

    Args:
        source (`str`): a file, folder or Hub id (see `load_records`), or ``"builtin"``.
        split, builtin_size, max_samples, seed, conversational: as in `load_prompt_dataset` (``builtin_size``
            counts problems; each gives two rows).

    Returns:
        `datasets.Dataset`: ``prompt``, ``completions``, ``labels`` (+ ``answer``), or ``prompt`` and ``answer``.

    Raises:
        DataFormatError: for unreadable data, a bad ``completions``/``labels`` field (naming the line), or a source
            with neither step labels nor gold answers.
        DataNotFoundError: for a missing local file (a `FileNotFoundError`).
    """
    if _is_builtin(source):
        return _truncate(arithmetic.stepwise_dataset(builtin_size, split=_builtin_split(split)), max_samples, seed)
    fmt, rows, name = _load(source, split, conversational)
    if fmt != "stepwise":
        if not rows or "answer" not in rows[0]:
            raise DataFormatError(f"{name} is in the {fmt} format ({FORMATS[fmt]}) with no gold 'answer' column, so "
                                  f"its steps can be neither read nor labelled. Fix: give step labels "
                                  f"({FORMATS['stepwise']}) or prompts with gold answers (e.g. GSM8K), which are "
                                  f"labelled by Monte-Carlo rollouts.")
        rows = [{"prompt": _prompt_of_messages(r["messages"]) if fmt == "messages" else r["prompt"],
                 "answer": r["answer"]} for r in rows]
    return _truncate(_to_dataset(rows, name), max_samples, seed)


def _eval_amount(eval_size: int | float) -> int | float:
    """``eval_size`` as a count (`int`) or a fraction in (0, 1) (`float`); 64.0 from a CLI float is 64."""
    if isinstance(eval_size, bool) or not isinstance(eval_size, (int, float)) or eval_size < 0:
        raise ConfigError(f"--eval_size must be a count (>= 1) or a fraction (< 1) of the data, got {eval_size!r}")
    if eval_size >= 1:
        if eval_size != int(eval_size):
            raise ConfigError(f"--eval_size {eval_size} is neither a whole count (>= 1) nor a fraction (< 1)")
        return int(eval_size)
    return float(eval_size) if eval_size > 0 else 0


def train_eval_split(dataset: Dataset, eval_size: int | float, seed: int = 42) -> tuple[Dataset, Dataset]:
    """Deterministic train/eval split with `datasets.Dataset.train_test_split`.

    Args:
        dataset (`datasets.Dataset`): the data to split.
        eval_size (`int` or `float`): eval examples: a count (>= 1; a whole float such as ``64.0`` counts),
            or a fraction of the data (< 1); 0 gives an empty eval set.
        seed (`int`): shuffle seed; the same seed gives the same split.

    Returns:
        `tuple[datasets.Dataset, datasets.Dataset | None]`: ``(train, eval)``; eval is None for ``eval_size=0``.

    Raises:
        ValueError: when ``eval_size`` is negative, not a whole count, or leaves no training data.
    """
    amount = _eval_amount(eval_size)
    if amount == 0:
        return dataset, dataset.select([])
    if isinstance(amount, int) and amount >= len(dataset):
        raise ConfigError(f"--eval_size {amount} leaves no training data from {len(dataset)} examples. Fix: use a "
                          "smaller --eval_size or more data.")
    split = dataset.train_test_split(test_size=amount, seed=seed)
    return split["train"], split["test"]


def load_splits(source: str, kind: str, eval_size: int | float, seed: int = 42, max_samples: int | None = None,
                split: str = "train", builtin_size: int | None = None,
                conversational: bool = True) -> tuple[Dataset, Dataset]:
    """Train and eval sets of one stage: a seeded split of the source, or the built-in held-out stream.

    For ``"builtin"`` the eval set is drawn from the eval stream (`open_rlhf.tasks.arithmetic.eval_problems`),
    whose questions occur in no built-in training stream of ``builtin_size`` problems. For other sources the
    whole source is split with `train_eval_split`; for ``kind="unpaired"`` from preference pairs it is the
    pairs that are split (then each half is unpaired with `unpair`), so the two examples of a pair are never
    on different sides and the eval pairs are exactly those of ``kind="preference"`` with the same
    ``eval_size`` and ``seed`` (KTO and DPO are evaluated on the same pairs). Either way ``max_samples`` then
    caps the training set only, so the eval set depends on ``(source, eval_size, seed)`` alone and a run with
    ``max_samples`` is evaluated on the same examples as a run without (never on examples it trained on).

    Args:
        source (`str`): a file, folder or Hub id (see `load_records`), or ``"builtin"``.
        kind (`str`): ``"sft"``, ``"preference"``, ``"unpaired"`` (KTO), ``"prompt"`` or ``"stepwise"`` (PRM):
            which stage loader to use.
            For ``"unpaired"`` from pairs, ``eval_size`` counts pairs of the source (twice as many examples);
            from native unpaired data it counts examples.
        eval_size (`int` or `float`): eval examples, a count (>= 1) or a fraction (< 1; of ``builtin_size``
            for the built-in task); 0 gives no eval set (None), which trainers take as "no evaluation".
        seed (`int`): seed of the split and of the ``max_samples`` shuffle.
        max_samples (`int`, *optional*): cap on the training set (first N after a shuffle with ``seed``); for
            ``"unpaired"`` it counts unpaired examples (as `load_unpaired_dataset` does), not pairs.
        split (`str`): the Hub split to load (ignored for ``"builtin"``).
        builtin_size (`int`, *optional*): built-in training size; defaults to `BUILTIN_SIZES` of ``kind``.
        conversational (`bool`): wrap string prompts/completions as conversations.

    Returns:
        `tuple[datasets.Dataset, datasets.Dataset | None]`: ``(train, eval)``; eval is None for ``eval_size=0``.

    Raises:
        ValueError: for an unknown ``kind``.
        ConfigError: for a bad ``eval_size`` (negative, not a whole count, or leaving no training data) or
            ``max_samples`` (a `ValueError` too).
        DataFormatError: for unreadable data (see the stage loaders).
        DataNotFoundError: for a missing local file (a `FileNotFoundError`).
    """
    loaders: dict[str, Callable[..., Dataset]] = {
        "sft": load_sft_dataset, "preference": load_preference_dataset, "prompt": load_prompt_dataset,
        "unpaired": load_unpaired_dataset, "stepwise": load_stepwise_dataset}
    if kind not in loaders:
        raise ValueError(f"kind must be one of {sorted(loaders)}, got {kind!r}")
    amount = _eval_amount(eval_size)
    if not _is_builtin(source):
        if kind == "unpaired":
            dataset, paired = _load_unpaired_source(source, split, conversational)
        else:
            dataset, paired = loaders[kind](source, split=split, conversational=conversational), False
        train, evaluation = train_eval_split(dataset, amount, seed)
        if paired:  # split the pairs, then unpair each side: no pair has one half in train, one in eval
            train = unpair(train)
            evaluation = unpair(evaluation) if len(evaluation) else evaluation
        return _truncate(train, max_samples, seed), evaluation if len(evaluation) else None
    size = BUILTIN_SIZES["preference" if kind == "unpaired" else kind] if builtin_size is None else builtin_size
    n_eval = amount if isinstance(amount, int) else round(amount * size)
    train = loaders[kind](source, split="train", builtin_size=size, max_samples=max_samples, seed=seed)
    make = {"sft": arithmetic.sft_dataset, "preference": arithmetic.preference_dataset,
            "prompt": arithmetic.prompt_dataset, "stepwise": arithmetic.stepwise_dataset,
            "unpaired": lambda n, **kw: unpair(arithmetic.preference_dataset(n, **kw))}[kind]
    return train, make(n_eval, split="eval", exclude_size=size) if n_eval else None


# ---------------------------------------------------------------------------------------------------------
# Streaming: data larger than memory
# ---------------------------------------------------------------------------------------------------------

STREAMING_KINDS = ("sft", "preference", "unpaired")  # the `load_splits` kinds that `load_streaming_splits` reads
STREAMING_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")  # files read a record at a time
# Pairs unpaired at a time (KTO from pairs): the chosen halves of a block, then its rejected halves, as TRL's
# `unpair_preference_dataset` does with its batched map of 1000 rows; the KTO stage then shuffles each block with its
# seed (`_unpair_blocks`), as it shuffles an in-memory training set (`stages.seeded_order`). A block bounds the
# memory of that shuffle.
_UNPAIR_BLOCK = 1000
_PARQUET_BATCH = 1024  # rows read from a parquet file at a time


def _stream_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed JSON)`` of each non-blank line of a ``.jsonl(.gz)`` file, read a line at a time; the
    same errors as `_read_jsonl`, and the same partial last line skipped with a warning."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    # Bound here: a generator closed at interpreter exit may see module globals already cleared
    gzip_errors = (EOFError, zlib.error, gzip.BadGzipFile)
    number = 0
    try:
        with opener(path, "rb") as file:
            for number, line in enumerate(file, start=1):  # splits on b"\n" only, as `_read_jsonl`
                if number == 1 and line.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark
                    line = line[3:]
                if not line.strip():
                    continue
                partial = not line.endswith(b"\n")  # the last line, without its final newline
                try:
                    record = json.loads(line.decode("utf-8"))
                except UnicodeDecodeError as err:
                    if partial:
                        _warn_partial_line(number, path)
                        return
                    raise DataFormatError(f"line {number} of {path} is not UTF-8 text (byte {err.start} of the "
                                          f"line: {err.reason}). Fix: re-encode the file as UTF-8.") from err
                except json.JSONDecodeError as err:
                    if partial:
                        _warn_partial_line(number, path)
                        return
                    raise DataFormatError(f"bad JSON on line {number} of {path}: {err.msg} (column {err.colno}). "
                                          f"Fix: each line of a .jsonl file must be one complete JSON object.") from err
                yield number, record  # outside the `try`: a generator closed at exit passes its except clauses
    except gzip_errors as err:
        raise DataFormatError(f"truncated or corrupt gzip file {path} (after line {number}): {err}. Fix: download or "
                              f"compress the file again (`gzip -t {path}` checks it).") from err


def _stream_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    """``(row number, row)`` of a parquet file, read `_PARQUET_BATCH` rows at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    number = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=_PARQUET_BATCH):
            for row in batch.to_pylist():
                number += 1
                yield number, row
    except (pa.ArrowException, OSError) as err:
        raise DataFormatError(f"cannot read parquet file {path} (after row {number}): {err}. Fix: the file is "
                              f"truncated or not parquet; write it again (e.g. `Dataset.to_parquet`).") from err


def _stream_files(source: str, split: str) -> list[Path] | None:
    """The files of a local source to stream, in reading order; None for a Hub dataset id."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = _folder_files(path, split)
    elif path.is_file():
        files = [path]
    elif _looks_local(source):
        raise DataNotFoundError(f"no such data file or folder: {path}. Fix: check the path.")
    else:
        return None
    whole = [p for p in files if not p.name.lower().endswith(STREAMING_SUFFIXES)]
    if whole:
        raise DataFormatError(f"{whole[0]} is one JSON document (a list of records), which is read whole, so it "
                              f"cannot be streamed; --streaming reads {', '.join(STREAMING_SUFFIXES)} files a record "
                              f"at a time. Fix: convert it to JSON Lines (`jq -c '.[]' {whole[0].name} > "
                              f"{whole[0].name.split('.')[0]}.jsonl`), or drop --streaming.")
    return files


def _stream_records(source: str, split: str) -> Iterator[tuple[dict[str, Any], str]]:
    """``(record, where)`` of every record of a source, one at a time, checked as `_read_records` checks them
    (an object, the first record's fields and types); ``where`` names the file and line (or row)."""
    files = _stream_files(source, split)
    checker = _Consistency()
    if files is None:  # a Hub dataset, in `datasets`' own streaming mode
        name = f"hub dataset {source!r} (split {split!r})"
        for number, row in enumerate(datasets.load_dataset(source, split=split, streaming=True), start=1):
            where = f"record {number} of {name}"
            checker.check(row, where)
            yield row, where
        return
    for path in files:
        is_jsonl = path.name.lower().endswith((".jsonl", ".jsonl.gz"))
        unit, numbered = ("line", _stream_jsonl(path)) if is_jsonl else ("row", _stream_parquet(path))
        count = 0
        for number, row in numbered:
            where = f"{unit} {number} of {path}"
            _check_object(row, where)
            checker.check(row, where)
            count += 1
            yield row, where
        # An empty file is an error, as in `_read_file` (in a folder, a file holding only a partial line is not)
        if not count and not (len(files) > 1 and is_jsonl and path.stat().st_size):
            raise DataFormatError(f"{path} is empty: no records found. Fix: give a file with at least one record.")


def _kind_error(name: str, fmt: str, kind: str) -> DataFormatError | None:
    """The error of the in-memory stage loader for data of format ``fmt`` given to stage kind ``kind``."""
    if kind == "sft" and fmt == "prompt_only":
        return DataFormatError(f"{name} holds only prompts ({FORMATS['prompt_only']}); SFT needs completions. Fix: "
                               f"use a dataset with columns {FORMATS['prompt_completion']} or messages.")
    if kind == "preference" and fmt not in PAIR_FORMATS:
        return DataFormatError(f"{name} is in the {fmt} format ({FORMATS[fmt]}), not preference pairs. Fix: use a "
                               f"dataset with columns {FORMATS['preference']}, or hh-rlhf transcripts.")
    if kind == "unpaired" and fmt not in (*PAIR_FORMATS, "unpaired_preference"):
        return DataFormatError(f"{name} is in the {fmt} format ({FORMATS[fmt]}), not (un)paired preferences. Fix: "
                               f"use columns {FORMATS['unpaired_preference']} or {FORMATS['preference']}.")
    if fmt == "stepwise":
        return DataFormatError(f"{name} is step-labelled data ({FORMATS['stepwise']}), which only the PRM stage "
                               f"reads. Fix: give this stage {FORMATS['prompt_completion']} or preference data.")
    return None


@dataclass
class _ExampleStream:
    """A stage's examples read from a source one record at a time; each iteration re-reads the source from its
    first record (so every pass gives the same examples in the same order).

    The examples are those the in-memory stage loader gives, in the source's order: SFT rows for ``"sft"``,
    preference pairs for ``"preference"``, and for ``"unpaired"`` native unpaired rows or, from a pair source
    (``paired``), the pairs (unpaired later, after the held-out split).
    """

    source: str
    split: str
    kind: str
    conversational: bool
    name: str = ""
    fmt: str = ""
    paired: bool = False

    def __post_init__(self):
        self.name = str(Path(self.source).expanduser()) if _looks_local(self.source) else (
            f"hub dataset {self.source!r} (split {self.split!r})")
        first = next(_stream_records(self.source, self.split), None)
        if first is None:
            raise DataFormatError(f"{self.name} holds no complete record yet. Fix: give it at least one record.")
        self.fmt = _detect(list(first[0]), first[0], self.name)
        error = _kind_error(self.name, self.fmt, self.kind)
        if error is not None:
            raise error
        self.paired = self.kind == "unpaired" and self.fmt in PAIR_FORMATS

    def _convert(self, row: dict[str, Any], where: str) -> tuple[dict[str, Any] | None, str | None]:
        """``(example, None)``, or ``(None, reason)`` for a record skipped as the in-memory loader skips it."""
        if self.fmt in PAIR_FORMATS and "vote" in row and not _is_decisive(row, where):
            return None, row["vote"]
        if self.fmt == "hh_rlhf":
            return _hh_row(row, where)
        if self.fmt == "gsm8k":
            return _gsm8k_row(row, where), None
        if self.fmt == "implicit_preference":
            return _implicit_row(row, where, self.conversational), None
        return _standard_row(row, self.fmt, where, self.conversational), None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        skipped: dict[str, int] = {}
        count = 0
        for row, where in _stream_records(self.source, self.split):
            example, reason = self._convert(row, where)
            if example is None:
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
            if self.kind == "sft" and (example := _sft_example(example, self.fmt)) is None:
                continue
            count += 1
            yield example
        # Reached only when a pass ends (not when the caller stops early): the counts of the whole pass
        _warn_hh_skipped(self.name, skipped)
        if skipped.get("tie") or skipped.get("both_bad"):
            logger.info("%s: skipped %d ties and %d both-bad Arena votes (not preference pairs)", self.name,
                        skipped.get("tie", 0), skipped.get("both_bad", 0))
        if not count:
            raise DataFormatError(f"{self.name}: no usable records left after conversion. Fix: check the warnings "
                                  f"above for the records that were skipped.")


def _unpair_blocks(pairs: Iterator[dict[str, Any]], seed: int | None = None) -> Iterator[dict[str, Any]]:
    """Pairs -> unpaired examples, `_UNPAIR_BLOCK` pairs at a time: the block's chosen halves (``label=True``),
    then its rejected halves (``label=False``), other columns kept (as `unpair`). With a ``seed``, each block's
    examples are shuffled by a generator seeded with the seed and the block's index, so every pass (and a resume)
    reads the same order and a batch holds both labels."""
    for index in itertools.count():
        block = list(itertools.islice(pairs, _UNPAIR_BLOCK))
        if not block:
            return
        examples = [{**{k: v for k, v in pair.items() if k not in ("chosen", "rejected")},
                     "completion": pair[column], "label": label}
                    for label, column in ((True, "chosen"), (False, "rejected")) for pair in block]
        if seed is not None:
            random.Random(seed * 1_000_003 + index).shuffle(examples)
        yield from examples


def _training_stream(stream: _ExampleStream, skip: int, max_samples: int | None,
                     seed: int | None = None) -> Iterator[dict[str, Any]]:
    """The training examples, endlessly: every pass over the source skips its first ``skip`` examples (the
    held-out ones) and gives at most ``max_samples``, then the next pass starts over."""
    passes = 0
    while True:
        examples = itertools.islice(iter(stream), skip, None)
        if stream.paired:
            cap = None if max_samples is None else -(-max_samples // 2)  # pairs enough for max_samples examples
            examples = _unpair_blocks(itertools.islice(examples, cap), seed)
        count = 0
        for example in itertools.islice(examples, max_samples):
            count += 1
            yield example
        if not count:
            raise DataFormatError(f"{stream.name}: no training examples after the {skip} held-out ones "
                                  f"(--eval_size). Fix: use a smaller --eval_size or more data.")
        passes += 1
        logger.info("streaming: pass %d over %s done (%d training examples); starting pass %d", passes, stream.name,
                    count, passes + 1)


def load_streaming_splits(source: str, kind: str, eval_size: int | float, max_samples: int | None = None,
                          split: str = "train", conversational: bool = True,
                          seed: int | None = None) -> tuple[IterableDataset, Dataset | None]:
    """Train and eval sets of one stage for data larger than memory: the training set streams from the source.

    The source (a ``.jsonl``, ``.jsonl.gz`` or ``.parquet`` file, a folder of them as `load_records` reads a folder,
    or a Hub dataset id in `datasets`' streaming mode) is read one record at a time (a parquet file
    `_PARQUET_BATCH` rows at a time), with the format detection, conversion and errors of the in-memory loaders
    (`load_splits`): a bad record raises when the stream reaches it, naming its file and line (or row), even in
    the middle of training.

    Held-out split: the first ``eval_size`` examples of the source (after conversion; pairs for
    ``kind="unpaired"`` from pairs, as in `load_splits`), held in memory as a `datasets.Dataset`; training skips
    them on every pass. So the two sets are disjoint by position, and the split depends only on the source and
    ``eval_size``: it is the same in every run and every resume, and it costs no pass over the data. A split by a
    hash of each record would spread the eval set over the whole source, but collecting it would read the whole
    source before the first step (or scan it at every evaluation), and its size would only be approximate. The
    price of the first-rows split: a source sorted by topic or date gives an eval set from its start only;
    shuffle such a file once (``shuf data.jsonl > shuffled.jsonl``) before streaming it.

    Training order: the source's own order (no shuffle: a shuffle needs the data in memory, or a buffer that
    makes a resume depend on it; pairs unpaired for KTO are the exception, see ``seed``), endlessly: after the
    last example the next pass starts again after the held-out examples, so ``max_steps`` decides the length of
    training and the Trainer sees one endless epoch. That is what makes a resume exact: transformers' `Trainer`
    resumes an `IterableDataset` by skipping the batches of the steps already trained (``ignore_data_skip=False``,
    the default; the skipped rows are read and tokenised again, not trained on), and its skip count is right only
    within its first epoch.

    Args:
        source (`str`): a ``.jsonl``, ``.jsonl.gz`` or ``.parquet`` file, a folder of them, or a Hub dataset id.
        kind (`str`): ``"sft"``, ``"preference"`` or ``"unpaired"`` (KTO; pairs are unpaired after the split,
            `_UNPAIR_BLOCK` pairs at a time as `unpair` does).
        eval_size (`int`): held-out examples, a count (>= 0; a whole float such as ``64.0`` counts); 0 gives no
            eval set (None). For ``"unpaired"`` from pairs it counts pairs (twice as many examples).
        max_samples (`int`, *optional*): train on the first ``max_samples`` training examples only (unpaired
            examples for ``"unpaired"``), repeated.
        split (`str`): the Hub split, and the file-name filter of a folder (see `load_records`).
        conversational (`bool`): wrap string prompts/completions as conversations.
        seed (`int`, *optional*): for ``"unpaired"`` from pairs, shuffle each block's examples with this seed (the
            same order on every pass and resume). Without it a block gives its `_UNPAIR_BLOCK` desirable examples,
            then its undesirable ones, so KTO's batches are one-sided for a thousand examples at a time.

    Returns:
        `tuple[datasets.IterableDataset, datasets.Dataset | None]`: ``(train, eval)``; ``train`` has no length and
        never ends; eval is None for ``eval_size=0``.

    Raises:
        ConfigError: for ``"builtin"`` (generated in memory: drop --streaming), a kind other than
            `STREAMING_KINDS`, an ``eval_size`` that is a fraction (a stream's length is unknown) or negative, or
            leaves no training example, or a bad ``max_samples``.
        DataFormatError: for a ``.json`` file (one document, read whole: convert it to JSON Lines), data of the
            wrong format for ``kind``, or a bad record, with its file and line (raised when the stream reaches it).
        DataNotFoundError: for a missing local file (a `FileNotFoundError`).
    """
    if _is_builtin(source):
        raise ConfigError(f"--streaming reads data files; {source!r} is the built-in task, generated in memory. Fix: "
                          "drop --streaming, or give a .jsonl, .jsonl.gz or .parquet file.")
    if kind not in STREAMING_KINDS:
        raise ConfigError(f"--streaming: the {kind!r} data kind cannot be streamed; streaming reads the kinds "
                          f"{', '.join(STREAMING_KINDS)} (SFT, reward, DPO, KTO). Fix: drop --streaming.")
    amount = _eval_amount(eval_size)
    if isinstance(amount, float):
        raise ConfigError(f"--eval_size {eval_size} is a fraction, but the length of a stream is unknown until it is "
                          f"read. Fix: with --streaming give --eval_size as a count of examples (e.g. 64), or 0.")
    if max_samples is not None and max_samples <= 0:
        raise ConfigError(f"max_samples must be a positive number of examples or None, got {max_samples}")
    stream = _ExampleStream(source, split, kind, conversational)
    held_out = list(itertools.islice(iter(stream), amount + 1))
    if len(held_out) <= amount:
        raise ConfigError(f"--eval_size {amount} leaves no training data from the {len(held_out)} examples of "
                          f"{stream.name}. Fix: use a smaller --eval_size or more data.")
    evaluation = _to_dataset(held_out[:amount], stream.name) if amount else None
    if evaluation is not None and stream.paired:
        evaluation = unpair(evaluation)
    train = IterableDataset.from_generator(_training_stream,
                                           gen_kwargs={"stream": stream, "skip": amount, "max_samples": max_samples,
                                                       "seed": seed})
    return train, evaluation
