"""Guards against reward hacking: detectors of degenerate policy outputs, an adversarial validator that reports
them per training round, penalty reward terms, and constitutional reward shaping from a principles YAML file.

A reward model scores what it was trained on; a policy optimised against it finds outputs it overrates (Gao et
al. 2022, "Scaling Laws for Reward Model Overoptimization", https://arxiv.org/abs/2210.10760): loops of the same
phrase (the degeneration of likelihood-maximising decoding, Holtzman et al. 2019, "The Curious Case of Neural
Text Degeneration", https://arxiv.org/abs/1904.09751), the question copied back, a dropped answer format, a
completion many times longer than its peers. Each detector below scores one completion in [0, 1] (0 clean, 1
fully degenerate); a completion is *flagged* when its score exceeds the detector's threshold. Words are
whitespace-separated tokens (``str.split()``: case and punctuation kept, as `open_rlhf.metrics.distinct_n`).

Detectors (name: the score of one completion; when it is flagged):

    repetition      1 - distinct / total word n-grams of the completion (n = 4; 0 below n words); a text said
                    twice scores about 0.5, k times about 1 - 1/k. Flagged above 0.25.
    copy_prompt     the share of the completion's word n-grams (n = 4, repeats counted) that also occur in the
                    prompt (0 below n words). Flagged above 0.5.
    format          1 when the last non-empty line is not ``#### <number>`` (the built-in arithmetic / GSM8K
                    answer format, `open_rlhf.tasks.gsm8k.has_answer_format`), else 0. Flagged at 1.
    length_blowup   with r = characters / reference characters and F = 4: clip((r - F) / F, 0, 1), so 0 up to
                    F x the reference and 1 from 2F x; the reference is a given length or the batch's median
                    length (floored at 1 character). Flagged above 0, i.e. longer than F x the reference.

Calibration on 500 reference solutions of the built-in arithmetic task (``generate_problems(500, seed=0)``): the
repetition score is 0 for all of them, the copy share has median 0.04 and maximum 0.09, the longest is 1.5 x the
median length; so the thresholds flag none of them. With the batch median as the reference, ``length_blowup`` is
relative to the batch: it flags outliers, not a batch that grew long as a whole (use ``length:CHARS`` of
`open_rlhf.rewards` for an absolute limit). In a multi-process run a reward call sees the process's own batch,
so that median, like the validator's rates, is rank-local.

Penalty terms (`GuardPenaltyFunction`, the reward-function signature of `open_rlhf.rewards`) return ``-score``:
0 for a clean completion, -1 for a fully degenerate one, and a small penalty proportional to the score below the
flag threshold. In a reward spec: ``repetition``, ``copy_prompt`` and ``length_blowup[:FACTOR]``
(`open_rlhf.rewards.build_reward_functions`; ``format`` there is the +1 format reward).

Constitutional reward shaping (after Constitutional AI, Bai et al. 2022, https://arxiv.org/abs/2212.08073, whose
principles are written rules a judge applies; here a rule is a detector, a regex or a reward model) reads a YAML
list of principles, each ``{name, check, weight}`` with an optional ``description``::

    - name: answer_format          # a unique name (logged as principles/<name>)
      check: format                # repetition | copy_prompt | format | length_blowup[:FACTOR]: -score
      weight: 1.0                  # a finite number; the reward is the weighted sum of the principles' terms
    - name: no_apology
      check: "not_regex:(?i)as an ai"   # -1 when the pattern is found in the completion (`re.search`), else 0
      weight: 0.5
    - name: shows_work
      check: "regex:="             # must be found: -1 when it is not, else 0 (flags inline, e.g. ``(?i)``)
      weight: 0.2
    - name: helpful
      check: model:runs/default/reward   # a reward model's score (the ``model:PATH`` term of open_rlhf.rewards)
      weight: 0.1

Rule terms thus lie in [-1, 0] (0: the principle is honoured); a reward model term is its raw score. Use it as
the ``principles:PATH`` term of a reward spec (e.g. ``--reward "math,principles:config/principles/default.yaml"``)
or with `principles_reward`. Unlike Constitutional AI, no model critiques or revises the completion: the rules are
checked as written, which is cheap and exact but catches only what they spell out.
"""

from __future__ import annotations

import difflib
import math
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from open_rlhf.errors import ConfigError
from open_rlhf.inference.sampling import as_messages, completion_text
from open_rlhf.metrics import distinct_n
from open_rlhf.tasks.gsm8k import has_answer_format

__all__ = ["DETECTORS", "DEFAULT_THRESHOLDS", "AdversarialValidator", "GuardPenaltyFunction", "Principle",
           "PrinciplesRewardFunction", "ValidationReport", "copy_prompt_penalty", "copy_prompt_score",
           "copy_prompt_scores", "detector_penalty", "format_penalty", "format_violation_scores",
           "length_blowup_penalty", "length_blowup_score", "length_blowup_scores", "load_principles",
           "principles_reward", "repetition_penalty", "repetition_score", "repetition_scores"]

RewardFunction = Callable[..., list[float]]
NGRAM_N = 4  # word n-gram order of repetition and copy_prompt
LENGTH_FACTOR = 4.0  # length_blowup: flagged above this many times the reference length
DEFAULT_THRESHOLDS = {"repetition": 0.25, "copy_prompt": 0.5, "format": 0.0, "length_blowup": 0.0}


def _word_ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    words = text.split()
    return list(zip(*(words[i:] for i in range(n)), strict=False))


def _prompt_contents(prompt) -> str:
    """A prompt's text: the string itself, or its messages' contents joined by newlines."""
    return "\n".join(m["content"] for m in as_messages(prompt))


# ---------------------------------------------------------------------------------------------------------
# Detectors: one completion, then a batch


def repetition_score(completion: str, n: int = NGRAM_N) -> float:
    """The share of repeated word n-grams of ``completion``: ``1 - distinct / total`` n-grams.

    ``"a b c d a b c d"`` (n = 4) has 5 n-grams, 4 distinct: 0.2. A text said k times scores about 1 - 1/k.

    Args:
        completion (`str`): the completion's text.
        n (`int`): the n-gram order, >= 1.

    Returns:
        `float` in [0, 1); 0.0 when the text has fewer than ``n`` words.

    Raises:
        ValueError: when ``n < 1``.

    Source: Holtzman et al. 2019, https://arxiv.org/abs/1904.09751 (repetition loops); distinct-n as in
        `open_rlhf.metrics.distinct_n`.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return 1.0 - distinct_n([completion], n) if len(completion.split()) >= n else 0.0


def copy_prompt_score(prompt: str, completion: str, n: int = NGRAM_N) -> float:
    """The share of the completion's word n-grams (with their repeats) that also occur in the prompt.

    Args:
        prompt (`str`): the prompt's text.
        completion (`str`): the completion's text.
        n (`int`): the n-gram order, >= 1.

    Returns:
        `float` in [0, 1] (1: every n-gram is copied); 0.0 when the completion has fewer than ``n`` words.

    Raises:
        ValueError: when ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = _word_ngrams(completion, n)
    prompt_grams = set(_word_ngrams(prompt, n))
    return sum(g in prompt_grams for g in grams) / len(grams) if grams else 0.0


def length_blowup_score(completion: str, reference_chars: float, factor: float = LENGTH_FACTOR) -> float:
    """How far the completion is beyond ``factor`` x the reference length: ``clip((r - factor) / factor, 0, 1)``.

    With ``r = len(completion) / max(reference_chars, 1)`` (characters): 0 up to ``factor`` x the reference, 1 from
    ``2 * factor`` x, linear between.

    Args:
        completion (`str`): the completion's text.
        reference_chars (`float`): the reference length in characters (e.g. the batch median), >= 0.
        factor (`float`): the blow-up factor, > 1.

    Returns:
        `float` in [0, 1].

    Raises:
        ValueError: when ``factor <= 1`` or ``reference_chars < 0``.
    """
    if not factor > 1:
        raise ValueError(f"the length blow-up factor must be > 1, got {factor}")
    if not reference_chars >= 0:
        raise ValueError(f"reference_chars must be >= 0 characters, got {reference_chars}")
    ratio = len(completion) / max(reference_chars, 1.0)
    return min(1.0, max(0.0, (ratio - factor) / factor))


def repetition_scores(prompts: Sequence | None, completions: Sequence, n: int = NGRAM_N) -> list[float]:
    """`repetition_score` of each of the `B` completions (strings or conversational lists); prompts unused."""
    return [repetition_score(completion_text(c), n) for c in completions]


def copy_prompt_scores(prompts: Sequence, completions: Sequence, n: int = NGRAM_N) -> list[float]:
    """`copy_prompt_score` of each of the `B` (prompt, completion) pairs (strings or conversational lists).

    Raises:
        ValueError: when ``prompts`` and ``completions`` differ in length.
    """
    return [copy_prompt_score(_prompt_contents(p), completion_text(c), n)
            for p, c in zip(prompts, completions, strict=True)]


def format_violation_scores(prompts: Sequence | None, completions: Sequence) -> list[float]:
    """1.0 for each of the `B` completions whose last non-empty line is not ``#### <number>``, else 0.0."""
    return [0.0 if has_answer_format(completion_text(c)) else 1.0 for c in completions]


def length_blowup_scores(prompts: Sequence | None, completions: Sequence, factor: float = LENGTH_FACTOR,
                         reference_chars: float | None = None) -> list[float]:
    """`length_blowup_score` of each of the `B` completions against ``reference_chars``, by default the median
    length in characters of these completions (rank-local in a multi-process run); prompts unused."""
    texts = [completion_text(c) for c in completions]
    if reference_chars is None:
        reference_chars = statistics.median(len(t) for t in texts) if texts else 0.0
    return [length_blowup_score(t, reference_chars, factor) for t in texts]


DETECTORS: dict[str, Callable[..., list[float]]] = {
    "repetition": repetition_scores, "copy_prompt": copy_prompt_scores, "format": format_violation_scores,
    "length_blowup": length_blowup_scores}


# ---------------------------------------------------------------------------------------------------------
# Penalty reward terms


class GuardPenaltyFunction:
    """A reward function returning ``-score`` of one detector: 0 when clean, down to -1 when fully degenerate.

    A callable class rather than a closure, so the reward stays picklable (TRL's async GRPO rollout worker sends
    reward functions to a spawned process).

    Args:
        detector (`str`): a name of `DETECTORS` (``repetition``, ``copy_prompt``, ``format``, ``length_blowup``).
        **options: the detector's keyword options (``n``; ``factor``, ``reference_chars``).

    Raises:
        ValueError: for an unknown detector.
    """

    def __init__(self, detector: str, **options):
        if detector not in DETECTORS:
            raise ValueError(f"unknown detector {detector!r}; valid: {', '.join(DETECTORS)}")
        self.detector, self.options = detector, options
        self.__name__ = f"{detector}_penalty"

    def __call__(self, prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
        """`list[float]` of length `B`, each in [-1, 0]; dataset columns and trainer arguments are ignored."""
        return [-score for score in DETECTORS[self.detector](prompts, completions, **self.options)]

    def __repr__(self) -> str:
        options = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"GuardPenaltyFunction({self.detector!r}{options})"


repetition_penalty = GuardPenaltyFunction("repetition")
copy_prompt_penalty = GuardPenaltyFunction("copy_prompt")
format_penalty = GuardPenaltyFunction("format")
length_blowup_penalty = GuardPenaltyFunction("length_blowup")


def detector_penalty(check: str) -> GuardPenaltyFunction:
    """The penalty of a detector check ``NAME[:ARGUMENT]``: ``repetition``, ``copy_prompt``, ``format`` or
    ``length_blowup[:FACTOR]`` (FACTOR a number > 1, default 4).

    Raises:
        ValueError: for an unknown name (the message suggests the closest), an argument to a detector that takes
            none, or a FACTOR that is not a number > 1.
    """
    name, colon, argument = check.partition(":")
    name, argument = name.strip(), argument.strip()
    if name not in DETECTORS:
        close = difflib.get_close_matches(name, list(DETECTORS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown detector {name!r}{hint}; valid: repetition, copy_prompt, format, "
                         "length_blowup[:FACTOR].")
    if not colon:
        return GuardPenaltyFunction(name)
    if name != "length_blowup":
        raise ValueError(f"detector {name!r} takes no argument, got {argument!r}.")
    try:
        factor = float(argument)
    except ValueError:
        factor = math.nan
    if not (math.isfinite(factor) and factor > 1):
        raise ValueError(f"the length_blowup FACTOR must be a number > 1 (times the batch median length), got "
                         f"{argument!r}, as in 'length_blowup:4'.")
    return GuardPenaltyFunction(name, factor=factor)


# ---------------------------------------------------------------------------------------------------------
# Adversarial validator


@dataclass
class ValidationReport:
    """What `AdversarialValidator.validate` found on `N` completions.

    Attributes:
        n (`int`): the number of completions.
        thresholds (`dict[str, float]`): a completion is flagged by a detector when its score exceeds this.
        scores (`dict[str, list[float]]`): per detector, the `N` scores in [0, 1].
        flags (`dict[str, list[bool]]`): per detector, the `N` flags.
        round (`int`, *optional*): the training round (or step) the completions come from.
    """

    n: int
    thresholds: dict[str, float]
    scores: dict[str, list[float]]
    flags: dict[str, list[bool]]
    round: int | None = None
    rates: dict[str, float] = field(init=False)

    def __post_init__(self):
        self.rates = {name: sum(f) / self.n if self.n else 0.0 for name, f in self.flags.items()}

    @property
    def flagged(self) -> list[bool]:
        """Per completion, whether any detector flagged it (`N` bools)."""
        return [any(column) for column in zip(*self.flags.values(), strict=True)] if self.flags else [False] * self.n

    @property
    def any_rate(self) -> float:
        """The share of completions flagged by at least one detector, in [0, 1]."""
        return sum(self.flagged) / self.n if self.n else 0.0

    def to_dict(self) -> dict:
        """A JSON-serialisable dict: n, round, thresholds, rates, any_rate, and the per-example scores and flags."""
        return {"n": self.n, "round": self.round, "thresholds": dict(self.thresholds), "rates": dict(self.rates),
                "any_rate": self.any_rate, "scores": {k: list(v) for k, v in self.scores.items()},
                "flags": {k: list(v) for k, v in self.flags.items()}, "flagged": self.flagged}


class AdversarialValidator:
    """Runs the degenerate-output detectors on a batch of completions and reports the share each one flags.

    Stateless and cheap (string operations only), so it can run on every training round's rollouts or on a
    held-out set of greedy responses; a rising rate while the reward rises is the signature of reward hacking.

    Args:
        detectors (`Sequence[str]`): which of `DETECTORS` to run; default all four (drop ``format`` for a task
            without the ``#### N`` answer format).
        repetition_threshold (`float`): flag above this repetition score, in [0, 1).
        copy_threshold (`float`): flag above this copied share, in [0, 1).
        length_factor (`float`): flag completions longer than this many times the reference, > 1.
        reference_chars (`float`, *optional*): the reference length in characters; default the batch median.
        n (`int`): the word n-gram order of ``repetition`` and ``copy_prompt``, >= 1.

    Raises:
        ValueError: for an unknown detector, a threshold outside [0, 1), ``length_factor <= 1``, a negative
            ``reference_chars`` or ``n < 1``.
    """

    def __init__(self, detectors: Sequence[str] = tuple(DETECTORS),
                 repetition_threshold: float = DEFAULT_THRESHOLDS["repetition"],
                 copy_threshold: float = DEFAULT_THRESHOLDS["copy_prompt"], length_factor: float = LENGTH_FACTOR,
                 reference_chars: float | None = None, n: int = NGRAM_N):
        unknown = [d for d in detectors if d not in DETECTORS]
        if unknown or not detectors:
            raise ValueError(f"detectors must be a non-empty subset of {list(DETECTORS)}, got {list(detectors)}")
        for name, value in (("repetition_threshold", repetition_threshold), ("copy_threshold", copy_threshold)):
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if not length_factor > 1 or (reference_chars is not None and not reference_chars >= 0) or n < 1:
            raise ValueError(f"need length_factor > 1, reference_chars >= 0 (or None) and n >= 1; got "
                             f"{length_factor}, {reference_chars}, {n}")
        self.detectors = list(detectors)
        self.thresholds = {**DEFAULT_THRESHOLDS, "repetition": repetition_threshold, "copy_prompt": copy_threshold}
        self.options = {"repetition": {"n": n}, "copy_prompt": {"n": n}, "format": {},
                        "length_blowup": {"factor": length_factor, "reference_chars": reference_chars}}

    def validate(self, prompts: Sequence, completions: Sequence, round: int | None = None) -> ValidationReport:
        """Score and flag `N` completions.

        Args:
            prompts: `N` prompts (strings or conversational lists; their contents are joined).
            completions: `N` completions (strings or conversational lists; the assistant text is scored).
            round (`int`, *optional*): a label for the report (the training round or step).

        Returns:
            `ValidationReport` with the per-detector rates and the per-example scores and flags.

        Raises:
            ValueError: when ``prompts`` and ``completions`` differ in length.
        """
        if len(prompts) != len(completions):
            raise ValueError(f"validate needs one prompt per completion, got {len(prompts)} prompts and "
                             f"{len(completions)} completions")
        scores = {d: DETECTORS[d](prompts, completions, **self.options[d]) for d in self.detectors}
        flags = {d: [s > self.thresholds[d] for s in values] for d, values in scores.items()}
        return ValidationReport(len(completions), {d: self.thresholds[d] for d in self.detectors}, scores, flags,
                                round)


# ---------------------------------------------------------------------------------------------------------
# Constitutional reward shaping


_CHECK_HELP = ("a check is a detector (repetition, copy_prompt, format, length_blowup[:FACTOR]), 'regex:PATTERN' "
               "(must be found), 'not_regex:PATTERN' (must not be found) or 'model:PATH' (a reward model)")
_FIELDS = ("name", "check", "weight", "description")


@dataclass(frozen=True)
class Principle:
    """One principle of a principles file.

    Attributes:
        name (`str`): unique within the file; the metric is logged as ``principles/<name>``.
        check (`str`): as written (see the module docstring).
        weight (`float`): the principle's weight in the sum.
        kind (`str`): ``"detector"``, ``"regex"``, ``"not_regex"`` or ``"model"``.
        argument (`str`): the detector check, the pattern, or the reward model path.
        description (`str`): free text (the principle in words).
    """

    name: str
    check: str
    weight: float
    kind: str
    argument: str
    description: str = ""


class _RegexRule:
    # A class rather than a closure, so the reward stays picklable (compiled patterns pickle).
    def __init__(self, pattern: str, must_match: bool):
        self.pattern, self.must_match = re.compile(pattern), must_match
        self.__name__ = "regex" if must_match else "not_regex"

    def __call__(self, prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
        return [0.0 if (self.pattern.search(completion_text(c)) is not None) == self.must_match else -1.0
                for c in completions]

    def __repr__(self) -> str:
        return f"_RegexRule({self.pattern.pattern!r}, must_match={self.must_match})"


def _parse_principle(entry, where: str) -> Principle:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a mapping with keys name, check, weight, got {entry!r:.80}. Fix: write "
                          "it as '- name: ...' with 'check:' and 'weight:' lines below.")
    unknown = [k for k in entry if k not in _FIELDS]
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}. Fix: use only {', '.join(_FIELDS)}.")
    for key, example in (("name", "name: no_loops"), ("check", "check: repetition"), ("weight", "weight: 1.0")):
        if key not in entry or entry[key] is None:
            raise ConfigError(f"{where}: missing field {key!r}. Fix: add '{example}'.")
    name, check, weight = entry["name"], entry["check"], entry["weight"]
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: field 'name' must be a non-empty string, got {name!r}.")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
        raise ConfigError(f"{where}: field 'weight' must be a finite number, got {weight!r}. Fix: e.g. 'weight: "
                          "0.5' (the principle's term is multiplied by it).")
    if not isinstance(check, str) or not check.strip():
        raise ConfigError(f"{where}: field 'check' must be a non-empty string, got {check!r}. Fix: {_CHECK_HELP}.")
    kind, colon, argument = check.strip().partition(":")
    if kind in ("regex", "not_regex", "model"):
        if not argument.strip():
            raise ConfigError(f"{where}: field 'check' {check!r} has an empty {kind} argument. Fix: {_CHECK_HELP}.")
        if kind != "model":
            try:
                re.compile(argument)
            except re.error as error:
                raise ConfigError(f"{where}: field 'check' {check!r} is not a valid regular expression ({error}). "
                                  "Fix: correct the pattern (Python `re` syntax; quote it in YAML).") from None
        argument = argument.strip() if kind == "model" else argument
    else:
        try:
            detector_penalty(check)
        except ValueError as error:
            raise ConfigError(f"{where}: field 'check' {check!r}: {error} Fix: {_CHECK_HELP}.") from None
        kind, argument = "detector", check.strip()
    description = entry.get("description") or ""
    return Principle(name.strip(), check, float(weight), kind, argument, str(description))


def load_principles(path: str | Path) -> list[Principle]:
    """Read a principles YAML file: a non-empty list of ``{name, check, weight[, description]}`` mappings.

    Args:
        path (`str` or `Path`): the YAML file.

    Returns:
        `list[Principle]`, in file order.

    Raises:
        ConfigError (a `ValueError`): when the file is missing, unreadable or not valid YAML, is not a non-empty
            list, or an entry is not a mapping, has an unknown or missing field, a name that is empty or repeats, a
            weight that is not a finite number, or a check that is not a known detector (the closest is
            suggested), a valid regex or a ``model:PATH``; the message names the file, the entry (index and
            name) and the field, and says how to fix it.
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"principles file not found: {path}. Fix: check the path (e.g. "
                          "config/principles/default.yaml).") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read principles file {path}: {error}. Fix: give a readable YAML list of "
                          "principles.") from None
    if not isinstance(data, list) or not data:
        raise ConfigError(f"principles file {path} must be a non-empty YAML list of principles ('- name: ...', "
                          f"'check: ...', 'weight: ...'), got {type(data).__name__}.")
    principles: list[Principle] = []
    for index, entry in enumerate(data):
        label = f" ({entry['name']!r})" if isinstance(entry, dict) and isinstance(entry.get("name"), str) else ""
        principle = _parse_principle(entry, f"principles file {path}, entry {index}{label}")
        if principle.name in [p.name for p in principles]:
            raise ConfigError(f"principles file {path}, entry {index}{label}: field 'name' {principle.name!r} is "
                              "used twice. Fix: give each principle its own name.")
        principles.append(principle)
    return principles


class PrinciplesRewardFunction:
    """The weighted sum of a principles file's terms: ``sum_i weights[i] * funcs[i](prompts, completions)``.

    Exposes ``funcs``, ``weights`` and ``names`` as `open_rlhf.rewards.RewardSpec` does (pass ``reward_funcs=funcs``
    with ``reward_weights=weights`` to TRL for one logged term per principle); called with TRL 1.16's
    ``log_metric`` argument (GRPO/RLOO), it also logs each principle's batch-mean term as ``principles/<name>``.

    Args:
        principles (`list[Principle]`): the parsed principles.
        funcs (`list` of reward functions): one per principle.
    """

    def __init__(self, principles: Sequence[Principle], funcs: Sequence[RewardFunction]):
        assert len(principles) == len(funcs)
        self.principles, self.funcs = list(principles), list(funcs)
        self.weights = [p.weight for p in self.principles]
        self.names = [p.name for p in self.principles]
        self.__name__ = "principles"

    def to(self, device) -> PrinciplesRewardFunction:
        """Move the reward-model principles to ``device``; returns self."""
        for func in self.funcs:
            if hasattr(func, "to"):
                func.to(device)
        return self

    def __call__(self, prompts: Sequence, completions: Sequence, log_metric: Callable | None = None,
                 **kwargs) -> list[float]:
        """`list[float]` of length `B`: the weighted sum of the principles' terms."""
        total = [0.0] * len(completions)
        for func, weight, name in zip(self.funcs, self.weights, self.names, strict=True):
            scores = func(prompts, completions, **kwargs)
            if log_metric is not None and scores:
                log_metric(f"principles/{name}", sum(scores) / len(scores))
            total = [t + weight * s for t, s in zip(total, scores, strict=True)]
        return total

    def __repr__(self) -> str:
        return f"PrinciplesRewardFunction({self.names})"


def principles_reward(path: str | Path, model_reward: Callable[[str, str], RewardFunction] | None = None
                      ) -> PrinciplesRewardFunction:
    """The reward function of a principles YAML file (see `load_principles` and the module docstring).

    Args:
        path (`str` or `Path`): the principles file.
        model_reward (`Callable`, *optional*): builds the reward function of a ``model:PATH`` principle from
            ``(PATH, where)``; `open_rlhf.rewards.build_reward_functions` passes its ``model:`` term (this module
            sits below `open_rlhf.rewards` and does not import it). Without it, a file with a ``model:`` check
            is refused.

    Returns:
        `PrinciplesRewardFunction`: the weighted sum, with ``funcs``, ``weights`` and ``names``.

    Raises:
        ConfigError: for a bad principles file (see `load_principles`), or a ``model:`` check without
            ``model_reward``.
        ModelNotFoundError: from ``model_reward``, when a ``model:PATH`` folder does not exist.
    """
    principles = load_principles(path)
    funcs: list[RewardFunction] = []
    for index, p in enumerate(principles):
        where = f"principles file {path}, entry {index} ({p.name!r})"
        if p.kind == "model":
            if model_reward is None:
                raise ConfigError(f"{where}: a 'model:' check needs the reward-model loader of open_rlhf.rewards. "
                                  f"Fix: use the reward spec 'principles:{path}' (build_reward_functions).")
            funcs.append(model_reward(p.argument, where))
        elif p.kind == "detector":
            funcs.append(detector_penalty(p.argument))
        else:
            funcs.append(_RegexRule(p.argument, must_match=p.kind == "regex"))
    return PrinciplesRewardFunction(principles, funcs)
