"""Reward functions: verifiable answer checking (GSM8K / built-in arithmetic) and trained reward models.

Every reward here has the signature TRL's GRPO/RLOO trainers take and our PPO trainer takes too:
``reward_fn(prompts: list, completions: list, **columns) -> list[float]``, where ``completions`` are
strings or conversational lists ``[{"role": "assistant", "content": ...}]`` and ``columns`` holds the
dataset's other columns (e.g. ``answer``), one value per completion.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from fractions import Fraction

import torch

RewardFunction = Callable[..., list[float]]

_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?|-?\.\d+"
_HASH_ANSWER = re.compile(r"####\s*(" + _NUMBER + r")")
_BOXED_ANSWER = re.compile(r"\\boxed\{\s*(" + _NUMBER + r")\s*\}")
_ANY_NUMBER = re.compile(_NUMBER)


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


def completion_text(completion) -> str:
    """The text of a completion given as a string or as a conversational list of messages."""
    if isinstance(completion, str):
        return completion
    return "".join(m["content"] for m in completion if m.get("role", "assistant") == "assistant")


def accuracy_reward(prompts: Sequence, completions: Sequence, answer: Sequence[str], **_) -> list[float]:
    """Verifiable reward: 1.0 when the completion's final answer equals the gold ``answer``, else 0.0.

    The completion must state its answer with the ``#### N`` marker (the format the SFT data teaches); a
    bare number elsewhere in the text does not count, so the reward also enforces the answer format.

    Args:
        prompts: unused (kept for the TRL reward-function signature).
        completions: `B` completions (strings or conversational lists).
        answer: `B` gold answers (strings such as ``"72"``).

    Returns:
        `list[float]` of length `B`, each 0.0 or 1.0.

    Source: RLVR, Lambert et al. 2024 (Tülu 3), https://huggingface.co/papers/2411.15124, Sec. 6.
    """
    rewards = []
    for completion, gold in zip(completions, answer, strict=True):
        match = _HASH_ANSWER.findall(completion_text(completion))
        predicted = normalize_number(match[-1]) if match else None
        rewards.append(float(predicted is not None and predicted == normalize_number(str(gold))))
    return rewards


class RewardModelScorer:
    """Scores (prompt, completion) pairs with a trained sequence-classification reward model.

    Applies the tokenizer's chat template to the conversation, as `train_reward.py` does in training, and
    returns the scalar head's output at the last non-pad token.

    Args:
        model: a `AutoModelForSequenceClassification` with ``num_labels=1`` (our `train_reward.py` output).
        tokenizer: its tokenizer (with a chat template).
        batch_size (`int`): pairs scored per forward pass.
        max_length (`int`): longer conversations are truncated on the left (the answer is kept).
    """

    def __init__(self, model, tokenizer, batch_size: int = 8, max_length: int = 1024):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.__name__ = "reward_model"

    @torch.no_grad()
    def __call__(self, prompts: Sequence, completions: Sequence, **_) -> list[float]:
        texts = []
        for prompt, completion in zip(prompts, completions, strict=True):
            if isinstance(prompt, str):
                prompt = [{"role": "user", "content": prompt}]
            if isinstance(completion, str):
                completion = [{"role": "assistant", "content": completion}]
            texts.append(self.tokenizer.apply_chat_template(list(prompt) + list(completion), tokenize=False))
        scores: list[float] = []
        side = self.tokenizer.truncation_side
        self.tokenizer.truncation_side = "left"
        try:
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[i:i + self.batch_size], return_tensors="pt", padding=True,
                                       truncation=True, max_length=self.max_length, add_special_tokens=False)
                batch = batch.to(self.model.device)
                scores.extend(self.model(**batch).logits[:, 0].float().tolist())
        finally:
            self.tokenizer.truncation_side = side
        return scores
