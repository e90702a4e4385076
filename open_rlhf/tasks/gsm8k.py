"""The GSM8K answer format, shared by the built-in arithmetic task and GSM8K: the prompt instruction, answer
extraction, and the checks behind accuracy and the verifiable rewards.

A task owns its format (nanochat's ``tasks/gsm8k.py`` is the model): `open_rlhf.data` builds prompts with
`user_prompt`, `open_rlhf.rewards` turns `is_correct` / `is_equivalent` / `has_answer_format` into reward
functions, and `open_rlhf.evaluation` scores accuracy with `is_correct`; none of them imports another for it.

A solution states its final answer on a last line ``#### N`` (GSM8K, Cobbe et al. 2021,
https://huggingface.co/papers/2110.14168).
"""

from __future__ import annotations

import re
from fractions import Fraction

ANSWER_INSTRUCTION = "Give the final answer after ####."

_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?|-?\.\d+"
_HASH_ANSWER = re.compile(r"####\s*(" + _NUMBER + r")")
_BOXED_ANSWER = re.compile(r"\\boxed\{\s*(" + _NUMBER + r")\s*\}")
_ANY_NUMBER = re.compile(_NUMBER)
_HASH_LINE = re.compile(r"####[ \t]*([^\n]*)")
_FORMAT_LINE = re.compile(r"####[ \t]*(?:" + _NUMBER + r")")


def normalize_number(text: str) -> str | None:
    """Canonical string of a number written as ``1,234``, ``$5``, ``7.50`` or ``-3``; None if not a number.

    ``7.50`` and ``7.5`` and ``7`` vs ``7.0`` compare equal after normalisation (exact rational arithmetic).
    """
    cleaned = text.strip().replace(",", "").replace("$", "").rstrip(".")
    if not cleaned:
        return None
    if "/" in cleaned:  # Fraction would parse "a/b"; a fraction is not a number *written* in an answer
        return None
    try:
        value = Fraction(cleaned)
    except ValueError:
        return None
    if value.denominator == 1:
        return str(value.numerator)
    try:
        return str(float(value))
    except OverflowError:
        return None


def extract_final_answer(text: str) -> str | None:
    """The final numeric answer of a solution, normalised with `normalize_number`, or None.

    Looks, in order, for GSM8K's ``#### N`` marker, a LaTeX ``\\boxed{N}``, then the last number in the text.

    Args:
        text (`str`): a model completion or a GSM8K ``answer`` field.
    """
    for pattern in (_HASH_ANSWER, _BOXED_ANSWER):
        matches = pattern.findall(text)
        if matches:
            return normalize_number(matches[-1])
    numbers = _ANY_NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def user_prompt(question: str) -> str:
    """The user message for a question: the question, then the instruction to answer after ``####``.

    Used for the built-in task and for GSM8K, so every math prompt asks for the format the rewards check.
    """
    return f"{question.strip()}\n{ANSWER_INSTRUCTION}"


def hash_answer(text: str) -> str | None:
    """The normalised number after the last ``####`` marker of ``text``, or None when there is none."""
    matches = _HASH_ANSWER.findall(text)
    return normalize_number(matches[-1]) if matches else None


def is_correct(completion: str, gold: str) -> bool:
    """Strict check: the completion's ``#### N`` marker holds the gold number (after `normalize_number`).

    A bare number elsewhere in the text does not count, so this also enforces the answer format. This is the
    accuracy of every report and comparison.

    Args:
        completion (`str`): the model's text.
        gold (`str`): the gold answer, e.g. ``"72"``.
    """
    predicted = hash_answer(completion)
    return predicted is not None and predicted == normalize_number(str(gold))


def has_answer_format(text: str) -> bool:
    """Whether the last non-empty line of ``text`` is ``#### <number>`` (nothing after the number)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return bool(lines) and _FORMAT_LINE.fullmatch(lines[-1]) is not None


# math-verify runs on one final-answer span at a time. It gets only spans made of numbers, fractions and
# arithmetic signs: sympy can run for minutes on others (``\binom{10^9}{5 \cdot 10^8}``, ``9^{9^{9^9}}``), and
# off the main thread math-verify has no timeout. Anything else (words, units, powers) goes to the
# normalised-number comparison instead; so do percentages, as math-verify reads ``25%`` as 0.25 while GSM8K
# writes the gold answer of a percentage question as ``25``.
_MATH_VERIFY_SPAN = re.compile(r"(?:[\d\s.,+\-/$(){}]|\\[dt]?frac|\\[$,]|\\cdot|\\times)+")
_MATH_VERIFY_MAX_CHARS = 100
MATH_VERIFY_TIMEOUT_S = 5  # math-verify's default for both parse and verify; whole seconds (signal.alarm)


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in the text, with nested braces balanced; None if there is none."""
    start = text.rfind("\\boxed{")
    while start != -1:
        depth, begin = 0, start + len("\\boxed")
        for i in range(begin, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[begin + 1:i].strip()
        start = text.rfind("\\boxed{", 0, start)  # unbalanced: try the previous one
    return None


def _final_answer_span(text: str) -> tuple[str, str] | None:
    """The final answer as ``(text for math-verify, raw span)``: the rest of the line after the last ``####``,
    else the last ``\\boxed{}`` content, else the last number (the order of `extract_final_answer`)."""
    lines = [m.strip() for m in _HASH_LINE.findall(text)]
    if lines and lines[-1]:
        return lines[-1], lines[-1]
    boxed = _last_boxed(text)
    if boxed:
        return f"\\boxed{{{boxed}}}", boxed  # re-boxed so math-verify's LaTeX extraction reads \frac etc.
    numbers = _ANY_NUMBER.findall(text)
    return (numbers[-1], numbers[-1]) if numbers else None


def _math_verify_parse(span: tuple[str, str], timeout_s: int | None) -> list:
    """math-verify's parse of a span, or [] when it is not a number-like span or gives no sympy object."""
    from math_verify import parse

    text, raw = span
    if len(raw) > _MATH_VERIFY_MAX_CHARS or not _MATH_VERIFY_SPAN.fullmatch(raw):
        return []
    parsed = parse(text, parsing_timeout=timeout_s)
    # On failure parse falls back to the matched string; a string only ever equals the same string.
    return parsed if any(not isinstance(p, str) for p in parsed) else []


def is_equivalent(completion: str, gold: str, timeout_s: int | None = MATH_VERIFY_TIMEOUT_S) -> bool:
    """Whether the completion's final answer is mathematically equal to the gold answer (math-verify).

    The final answer is, in order, the rest of the line after the last ``####``, the content of the last
    ``\\boxed{...}``, or the last number (the order of `extract_final_answer`; unlike `is_correct` the ``####``
    marker is not required). The gold answer is the part after its last ``####`` (GSM8K's ``"... #### 72"``) or
    the whole string. Number-like spans (digits, fractions, arithmetic signs; at most 100 characters) are parsed
    and compared with math-verify, so ``\\boxed{\\frac{1}{2}}`` equals ``0.5``; any other span (words, units,
    percentages, powers) falls back to the exact comparison of `extract_final_answer` on the two spans.

    Args:
        completion (`str`): the model's text.
        gold (`str`): the gold answer (``"72"``) or a GSM8K solution ending in ``"#### 72"``.
        timeout_s (`int`, *optional*): math-verify's ``signal.alarm`` timeout per call; None (required off the
            main thread, where ``signal.alarm`` is unavailable) disables it.

    Source: math-verify, https://github.com/huggingface/Math-Verify.
    """
    from math_verify import verify

    gold_span = _final_answer_span(gold) if "####" in gold else (gold.strip(), gold.strip())
    predicted_span = _final_answer_span(completion)
    if predicted_span is None or not gold_span or not gold_span[1]:
        return False
    gold_parsed = _math_verify_parse(gold_span, timeout_s)
    predicted_parsed = _math_verify_parse(predicted_span, timeout_s)
    if gold_parsed and predicted_parsed:
        return verify(gold_parsed, predicted_parsed, timeout_seconds=timeout_s)
    gold_number, predicted_number = extract_final_answer(gold_span[1]), extract_final_answer(predicted_span[1])
    return gold_number is not None and gold_number == predicted_number
