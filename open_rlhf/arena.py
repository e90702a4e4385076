"""Arena votes: store each vote durably as a TRL preference pair, read the votes back, rank the models.

The Arena of the web demo shows one prompt answered by two anonymous models, A and B, and the user votes
``"a_better"``, ``"b_better"``, ``"tie"`` or ``"both_bad"`` (`VOTE_TYPES`). `vote_record` turns a vote into one
record in TRL's conversational preference format (``prompt``/``chosen``/``rejected``) plus the vote's metadata,
and `VoteLog` appends it as one line of ``<folder>/votes-<UTC date>.jsonl``, so that the folder trains as it is:
``python scripts/train_dpo.py --dataset_name feedback/``. One line (wrapped here)::

    {"prompt": [{"role": "user", "content": "Name a yellow fruit."}],
     "chosen": [{"role": "assistant", "content": "A banana."}],
     "rejected": [{"role": "assistant", "content": "A cherry."}], "vote": "a_better",
     "model_a": "sft", "model_b": "dpo", "chosen_model": "sft", "rejected_model": "dpo",
     "generation": {"temperature": 0.7, "max_new_tokens": 256}, "timestamp": "2025-06-01T12:00:00.123456Z"}

Only the decisive votes (`DECISIVE_VOTES`) are preference pairs: a tie or both-bad record keeps A's answer as
``chosen`` and B's as ``rejected`` by position only, and the loaders of `open_rlhf.data` skip it (it still counts
in the leaderboard, as a tie). `read_votes` reads every vote back, and `leaderboard` ranks the models by their
Bradley-Terry rating on the Elo scale, as Chatbot Arena does, beside FastChat's online Elo.

Imports from the project only `open_rlhf.data` (the vote vocabulary and its JSON Lines reader, so that a file is
read the same way for training and for the leaderboard) and `open_rlhf.errors`; no gradio.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import threading
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from open_rlhf.data import _MESSAGE_ROLES, DECISIVE_VOTES, VOTE_TYPES, _read_jsonl
from open_rlhf.errors import DataFormatError

__all__ = ["BT_L2_C", "DECISIVE_VOTES", "VOTE_TYPES", "VoteLog", "leaderboard", "read_votes", "vote_record"]

logger = logging.getLogger(__name__)

# C of sklearn's L2-penalised logistic regression in `leaderboard` (see its docstring: a weak prior that keeps a
# model that won every vote finite, and vanishes with many votes).
BT_L2_C = 1.0
ELO_K, ELO_SCALE, ELO_BASE, ELO_INIT = 4.0, 400.0, 10.0, 1000.0  # FastChat's compute_elo / compute_mle_elo
_SCORE_A = {"a_better": 1.0, "b_better": 0.0, "tie": 0.5, "both_bad": 0.5}  # A's score; both-bad is a tie
_TAIL_CHUNK = 1 << 16  # bytes read per step when looking for the last newline of a votes file


# ---------------------------------------------------------------------------------------------------------
# One vote -> one record
# ---------------------------------------------------------------------------------------------------------

def _utc(moment: datetime, name: str) -> datetime:
    if not isinstance(moment, datetime) or moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {moment!r}; pass e.g. "
                         f"datetime.now(timezone.utc)")
    return moment.astimezone(timezone.utc)


def _check_prompt(prompt: Any) -> list[dict[str, str]]:
    if not isinstance(prompt, list) or not prompt:
        raise ValueError(f"prompt must be a non-empty list of {{'role', 'content'}} messages ending with a user "
                         f"turn, got {prompt!r}")
    for position, message in enumerate(prompt, start=1):
        if not (isinstance(message, dict) and message.get("role") in _MESSAGE_ROLES
                and isinstance(message.get("content"), str)):
            raise ValueError(f"message {position} of the prompt is not a {{'role', 'content'}} message with a role "
                             f"in {_MESSAGE_ROLES} and string content: {message!r}")
    if prompt[-1]["role"] != "user" or not prompt[-1]["content"].strip():
        raise ValueError(f"the prompt must end with a non-empty user turn (the message both models answered), "
                         f"but its last message is {prompt[-1]!r}")
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def vote_record(prompt: list[dict[str, str]], answer_a: str, answer_b: str, model_a: str, model_b: str,
                vote: str, generation: dict[str, Any], timestamp: datetime | None = None) -> dict[str, Any]:
    """One Arena vote as one record of TRL's conversational preference format, plus the vote's metadata.

    Args:
        prompt (`list[dict]`): the conversation both models answered, ``{"role", "content"}`` messages (an
            optional system turn first), ending with a non-empty user turn. Copied with only those two keys.
        answer_a (`str`), answer_b (`str`): the answers of the models shown as A and B.
        model_a (`str`), model_b (`str`): the names of those models (hidden from the user until the vote).
        vote (`str`): one of `VOTE_TYPES`.
        generation (`dict`): the generation settings of both answers (temperature, max_new_tokens, seed, ...),
            stored as given; it must be JSON-serialisable for `VoteLog.append`.
        timestamp (`datetime`, *optional*): when the vote was cast, timezone-aware; default now.

    Returns:
        `dict` with exactly these keys, in this order: ``prompt``, ``chosen`` and ``rejected`` (one assistant
        message each: the winner's and the loser's answer), ``vote``, ``model_a``, ``model_b``,
        ``chosen_model``, ``rejected_model``, ``generation``, ``timestamp`` (UTC, ISO-8601 with microseconds and
        a trailing ``"Z"``, e.g. ``"2025-06-01T12:00:00.123456Z"``). For ``"tie"`` and ``"both_bad"`` the
        chosen side is A and the rejected side B by position only: those records are not preference pairs and
        the loaders of `open_rlhf.data` skip them.

    Raises:
        ValueError: for an unknown ``vote``; an empty prompt, a prompt message that is not a ``{"role",
            "content"}`` message, a prompt that does not end with a non-empty user turn; answers or model names
            that are not strings, ``generation`` that is not a dict, a naive ``timestamp``; a decisive vote on
            two answers that are equal after ``str.strip()`` ("the answers are identical: vote tie").
    """
    if vote not in VOTE_TYPES:
        raise ValueError(f"unknown vote {vote!r}; a vote is one of {', '.join(VOTE_TYPES)}")
    messages = _check_prompt(prompt)
    for name, value in (("answer_a", answer_a), ("answer_b", answer_b), ("model_a", model_a), ("model_b", model_b)):
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got a {type(value).__name__}")
    if not isinstance(generation, dict):
        raise ValueError(f"generation must be a dict of the generation settings, got a {type(generation).__name__}")
    if vote in DECISIVE_VOTES and answer_a.strip() == answer_b.strip():
        raise ValueError("the answers are identical: vote tie (a preference pair needs two different answers)")
    moment = _utc(datetime.now(timezone.utc) if timestamp is None else timestamp, "timestamp")
    a_chosen = vote != "b_better"
    return {"prompt": messages,
            "chosen": [{"role": "assistant", "content": answer_a if a_chosen else answer_b}],
            "rejected": [{"role": "assistant", "content": answer_b if a_chosen else answer_a}],
            "vote": vote, "model_a": model_a, "model_b": model_b,
            "chosen_model": model_a if a_chosen else model_b, "rejected_model": model_b if a_chosen else model_a,
            "generation": generation, "timestamp": f"{moment:%Y-%m-%dT%H:%M:%S.%f}Z"}


# ---------------------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------------------

def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tail(fd: int, size: int) -> bytes:
    """The bytes after the last ``b"\\n"`` of the open file ``fd`` of ``size`` bytes (``b""`` if it ends with one)."""
    tail, end = b"", size
    while end > 0:
        start = max(0, end - _TAIL_CHUNK)
        chunk = os.pread(fd, end - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return chunk[newline + 1:] + tail
        tail, end = chunk + tail, start
    return tail


def _is_json_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line.decode("utf-8")), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:  # one write(2) of the whole line, unless the kernel takes only part of it
        view = view[os.write(fd, view):]


class VoteLog:
    """Append-only, durable JSON Lines storage of Arena votes: one file per UTC day in ``folder``.

    Safe under concurrency: `append` holds a `threading.Lock` (threads of one server) and an exclusive
    ``fcntl.flock`` on the day's file (several server processes, or several `VoteLog` objects, sharing a
    folder), so records never interleave. Durable: when `append` returns, the record is on disk (``fsync`` of
    the file, and of the folder when the file is new so that its name survives a crash too): the vote is
    acknowledged. A server killed while writing can leave a partial last line; the next `append` removes it
    (those bytes were never acknowledged) and logs a warning; until then the loaders skip it with a warning.
    Locks are advisory: every writer must go through `VoteLog`. Needs a POSIX system (``fcntl``).

    Args:
        folder (`str` or `Path`): the votes folder (created on the first `append`), e.g. ``"feedback"``.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._lock = threading.Lock()

    def path_for(self, now: datetime) -> Path:
        """The file of the UTC day of ``now`` (timezone-aware): ``folder / "votes-YYYY-MM-DD.jsonl"``.

        Raises:
            ValueError: when ``now`` is naive (no timezone): pass e.g. ``datetime.now(timezone.utc)``.
        """
        return self.folder / f"votes-{_utc(now, 'now'):%Y-%m-%d}.jsonl"

    def _make_folder(self) -> None:
        if self.folder.is_dir():
            return
        missing = [folder for folder in (self.folder, *self.folder.parents) if not folder.exists()]
        self.folder.mkdir(parents=True, exist_ok=True)
        for folder in reversed(missing):
            _fsync_folder(folder.parent)

    def append(self, record: dict[str, Any]) -> Path:
        """Append ``record`` as one line ``json.dumps(record, ensure_ascii=False) + "\\n"`` to today's file (UTC).

        Under both locks: if the file does not end with ``b"\\n"``, its last line is either a complete record
        whose newline is missing (kept: a ``b"\\n"`` is written first) or a partial line left by an interrupted
        append (removed with a warning naming the file: the loaders' rule of `open_rlhf.data` would otherwise
        reject it as a bad line once another line follows it). Then the line is written (one ``write``), the
        file ``fsync``-ed, and, when the file held nothing before, its folder too. On an error while writing,
        the file is cut back to its previous end.

        Args:
            record (`dict`): a vote, as `vote_record` returns it.

        Returns:
            `Path`: the file written. When this returns, the vote is durable.

        Raises:
            ValueError: when ``record`` is not a dict.
            TypeError: when ``record`` is not JSON-serialisable (nothing is written).
            OSError: when the folder or file cannot be created or written (the vote is not acknowledged).
        """
        if not isinstance(record, dict):
            raise ValueError(f"a vote record must be a dict (see vote_record), got a {type(record).__name__}")
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")  # before any write: may raise
        with self._lock:
            self._make_folder()
            path = self.path_for(datetime.now(timezone.utc))
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                end = os.fstat(fd).st_size
                tail = _tail(fd, end) if end else b""
                prefix = b""
                if tail and _is_json_object(tail):
                    prefix = b"\n"
                elif tail:
                    end -= len(tail)
                    os.ftruncate(fd, end)
                    logger.warning("%s: removed a partial last line (%d bytes, not valid JSON) left by an "
                                   "interrupted append, e.g. a server killed while writing; that vote was never "
                                   "acknowledged", path, len(tail))
                try:
                    _write_all(fd, prefix + line)
                    os.fsync(fd)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, end)
                    raise
                if end == 0:  # a new file (or one that held only a partial line): make its name durable too
                    _fsync_folder(self.folder)
            finally:
                os.close(fd)  # releases the flock
        return path


def _check_vote(vote: Any, where: str) -> None:
    if not isinstance(vote, dict) or vote.get("vote") not in VOTE_TYPES:
        found = vote.get("vote") if isinstance(vote, dict) else vote
        raise DataFormatError(f"{where}: not an Arena vote (field 'vote' is {found!r}). Fix: every vote is a "
                              f"record of vote_record, with 'vote' one of {', '.join(VOTE_TYPES)}.")
    for field in ("model_a", "model_b"):
        if not isinstance(vote.get(field), str):
            raise DataFormatError(f"{where}: field '{field}' must be the model's name (a string), got "
                                  f"{vote.get(field)!r}. Fix: write votes with vote_record.")


def read_votes(source: str | Path) -> list[dict[str, Any]]:
    """Every vote record (all four types) of a votes folder or file, in order.

    Args:
        source (`str` or `Path`): a folder (its ``votes-*.jsonl`` files, sorted by name, i.e. by day; other
            files are ignored) or a single ``.jsonl`` file.

    Returns:
        `list[dict]`: the records as stored; ``[]`` when ``source`` does not exist (no vote yet). A partial last
        line (no final newline, not valid JSON: a server killed while writing) is skipped with a warning.

    Raises:
        DataFormatError: for a bad JSON line (with its file and line), or a line that is not an Arena vote (a
            ``vote`` outside `VOTE_TYPES`, a model name that is not a string).
    """
    path = Path(source).expanduser()
    files = sorted(path.glob("votes-*.jsonl")) if path.is_dir() else [path] if path.is_file() else []
    votes = []
    for file in files:
        for number, record in _read_jsonl(file):
            _check_vote(record, f"line {number} of {file}")
            votes.append(record)
    return votes


# ---------------------------------------------------------------------------------------------------------
# Leaderboard
# ---------------------------------------------------------------------------------------------------------

def _bt_ratings(battles: np.ndarray, weights: np.ndarray, n_models: int) -> np.ndarray:
    """Penalised Bradley-Terry ratings (Elo scale) of ``n_models`` from distinct battles ``(a, b, 2 * score_a)``
    of shape `(P, 3)` counted ``weights`` times each; NaN for a model in no battle of positive weight."""
    from sklearn.linear_model import LogisticRegression

    rows = np.arange(len(battles))
    x = np.zeros((len(battles), n_models))
    x[rows, battles[:, 0]] = math.log(ELO_BASE)
    x[rows, battles[:, 1]] = -math.log(ELO_BASE)
    # FastChat counts each vote twice: a win as (x, 1) twice, a loss as (x, 0) twice, a tie as (x, 1) and (x, 0).
    # (x, 1) and (-x, 0) have the same likelihood (no intercept), so we write each vote as one row of class 1 and
    # one of class 0: both classes are always present, which sklearn requires (e.g. after a single vote).
    first = np.where(battles[:, 2] == 0, -1.0, 1.0)[:, None] * x  # label 1: A won or tied, or B won (flipped)
    second = np.where(battles[:, 2] == 2, -1.0, 1.0)[:, None] * x  # label 0: B won or tied, or A won (flipped)
    fit = LogisticRegression(C=BT_L2_C, fit_intercept=False, tol=1e-10, max_iter=10_000)
    fit.fit(np.concatenate([first, second]), np.r_[np.ones(len(battles)), np.zeros(len(battles))],
            sample_weight=np.r_[weights, weights].astype(np.float64))
    ratings = ELO_SCALE * fit.coef_[0] + ELO_INIT
    present = np.zeros(n_models, dtype=bool)
    present[battles[weights > 0, :2].ravel()] = True
    return np.where(present, ratings, np.nan)


def _online_elo(battles: list[tuple[str, str, float]]) -> dict[str, float]:
    """FastChat's ``compute_elo``: sequential Elo updates with K=4 from 1000, in the order of ``battles``."""
    rating: dict[str, float] = {}
    for model_a, model_b, score_a in battles:
        rating_a, rating_b = rating.get(model_a, ELO_INIT), rating.get(model_b, ELO_INIT)
        expected_a = 1 / (1 + ELO_BASE ** ((rating_b - rating_a) / ELO_SCALE))
        rating[model_a] = rating_a + ELO_K * (score_a - expected_a)
        rating[model_b] = rating_b + ELO_K * ((1 - score_a) - (1 - expected_a))
    return rating


def leaderboard(votes: Sequence[dict[str, Any]], bootstrap_rounds: int = 100, seed: int = 0) -> list[dict[str, Any]]:
    """Rank the models of Arena votes by Bradley-Terry rating on the Elo scale, with bootstrap intervals.

    The rating is the maximum-likelihood Bradley-Terry strength, as Chatbot Arena computes it (FastChat's
    ``compute_mle_elo``): a logistic regression without intercept whose features are ``+log(10)`` in A's
    column and ``-log(10)`` in B's, so that ``P(A beats B) = 1 / (1 + 10 ** ((R_B - R_A) / 400))`` with
    ``R = 400 * coef + 1000``. Each vote counts twice, as in FastChat: a win as two wins, a tie as one win and one
    loss (half a win each way); ``"both_bad"`` counts as a tie, as FastChat's ``"tie (bothbad)"``.

    Regularisation: FastChat fits with ``penalty=None``, but that maximum-likelihood estimate does not exist
    while some model has won (or lost) every vote it was in, the usual state of a demo with a handful of votes:
    its rating runs to +/- infinity (an unpenalised solver stops wherever its iterations end). We keep sklearn's
    L2 penalty, with ``C = 1.0`` (`BT_L2_C`, sklearn's default and what FastChat's style-controlled
    ``fit_mle_elo`` uses): the objective ``|coef|^2 / 2 + C * NLL`` over the doubled rows is, per vote, the
    Bradley-Terry NLL plus ``|coef|^2 / (4 C)``, a Gaussian prior on each rating ``R ~ N(1000, 566^2)`` (sd
    ``400 * sqrt(2 C)`` Elo points). Between two models it weighs about as much as a fifth of one tied vote: one
    single win gives a 377-point gap instead of infinity, a 3-1 record 179.7 points instead of
    ``400 * log10(3) = 190.8``, a 30-10 record 189.6; its pull falls as 1 / votes, so with many votes the fit is
    FastChat's. The penalty also fixes the offset that the likelihood leaves free: the ratings of each group of
    models connected by votes average 1000.

    Votes with the same model on both sides carry no information on strength: they are skipped here (ratings,
    counts and online Elo; logged at info), though they stay training pairs for DPO (two samples of one model).

    Args:
        votes (`Sequence[dict]`): vote records (`vote_record`, `read_votes`), in the order they were cast.
        bootstrap_rounds (`int`): resamples of the votes (with replacement, as many as there are) for the
            interval; 0 for none.
        seed (`int`): seed of the resampling; the same seed gives the same intervals.

    Returns:
        `list[dict]`, one row per model, by rating descending (then name): ``model``, ``rating`` (Elo points),
        ``ci_low``, ``ci_high`` (the 2.5% and 97.5% percentiles of the model's rating over the resamples in
        which it has a vote; None for ``bootstrap_rounds=0``), ``votes``, ``wins``, ``losses``, ``ties`` (ties
        and both-bad), and ``elo`` (FastChat's online Elo: K=4 updates from 1000, in the order of ``votes``).
        ``[]`` for no votes (or only same-model votes).

    Raises:
        ValueError: for a negative ``bootstrap_rounds``; a `DataFormatError` (a `ValueError`) for a record that
            is not an Arena vote.

    Source: Bradley & Terry 1952, "Rank Analysis of Incomplete Block Designs: I. The Method of Paired
    Comparisons", Biometrika 39(3/4), 324-345; Chiang et al. 2024, "Chatbot Arena: An Open Platform for
    Evaluating LLMs by Human Preference", https://arxiv.org/abs/2403.04132, Sec. 4-5 (the BT fit, ties as half
    wins, and the bootstrap intervals of FastChat's ``fastchat/serve/monitor/elo_analysis.py``).
    """
    if isinstance(bootstrap_rounds, bool) or not isinstance(bootstrap_rounds, int) or bootstrap_rounds < 0:
        raise ValueError(f"bootstrap_rounds must be a whole number >= 0, got {bootstrap_rounds!r}")
    battles, same_model = [], 0
    for index, vote in enumerate(votes):
        _check_vote(vote, f"vote {index} (0-based) of the votes")
        if vote["model_a"] == vote["model_b"]:
            same_model += 1
        else:
            battles.append((vote["model_a"], vote["model_b"], _SCORE_A[vote["vote"]]))
    if same_model:
        logger.info("leaderboard: skipped %d votes with the same model on both sides", same_model)
    if not battles:
        return []
    models = sorted({model for a, b, _ in battles for model in (a, b)})
    column = {model: i for i, model in enumerate(models)}
    coded = np.array([(column[a], column[b], round(2 * score)) for a, b, score in battles], dtype=np.int64)
    distinct, counts = np.unique(coded, axis=0, return_counts=True)
    ratings = _bt_ratings(distinct, counts, len(models))
    low = high = [None] * len(models)
    if bootstrap_rounds:
        # Resampling the votes with replacement = multinomial counts of the distinct battles.
        draws = np.random.default_rng(seed).multinomial(len(battles), counts / counts.sum(), size=bootstrap_rounds)
        boot = np.array([_bt_ratings(distinct, draw, len(models)) for draw in draws])
        low, high = [], []
        for j in range(len(models)):
            seen = boot[~np.isnan(boot[:, j]), j]
            low.append(float(np.percentile(seen, 2.5)) if seen.size else None)
            high.append(float(np.percentile(seen, 97.5)) if seen.size else None)
    elo = _online_elo(battles)
    table = []
    for j, model in enumerate(models):
        scores = [s if a == model else 1 - s for a, b, s in battles if model in (a, b)]
        table.append({"model": model, "rating": float(ratings[j]), "ci_low": low[j], "ci_high": high[j],
                      "votes": len(scores), "wins": scores.count(1.0), "losses": scores.count(0.0),
                      "ties": scores.count(0.5), "elo": elo[model]})
    return sorted(table, key=lambda row: (-row["rating"], row["model"]))
