"""Decoding strategies that trade generated tokens for answer quality.

Every strategy takes a batch of prompts and returns one `Result` per prompt with the chosen response and the
compute it spent (samples and generated tokens), so strategies can be compared at equal cost.

- `greedy`, `sampled`: one response (the baselines).
- `best_of_n`: N samples scored by any reward function (a reward model, a verifier, a reward spec of
  `open_rlhf.rewards`); the highest-scoring one (rejection sampling: Nakano et al. 2021, WebGPT, Sec. 3; Stiennon
  et al. 2020, Sec. 4).
- `self_consistency`: N samples, a majority vote over their final answers (Wang et al. 2023, "Self-Consistency
  Improves Chain of Thought Reasoning in Language Models", ICLR, Sec. 2).
- `adaptive_consistency`: samples in rounds until the majority is confident under the Beta stopping criterion, or a
  budget is spent, so easy prompts cost fewer samples (Aggarwal et al. 2023, "Let's Sample Step by Step:
  Adaptive-Consistency for Efficient Reasoning and Coding with LLMs", EMNLP, Sec. 3).

Final answers are extracted with `open_rlhf.tasks.gsm8k.extract_final_answer` (``#### N``, ``\\boxed{N}``, else the
last number) unless another ``extract`` is given.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from open_rlhf.inference.sampling import Sample, as_messages, sample
from open_rlhf.tasks.gsm8k import extract_final_answer

RewardFunction = Callable[..., list[float]]


@dataclass
class Result:
    """The outcome of a strategy on one prompt.

    Attributes:
        response (`str`): the chosen response.
        answer (`str`, *optional*): its extracted final answer.
        score (`float`, *optional*): the chosen response's reward (best-of-N) or its answer's vote share
            (self-consistency, adaptive), None for greedy / sampling.
        num_samples (`int`): responses generated for this prompt.
        num_tokens (`int`): tokens generated for this prompt, all samples together.
        candidates (`list[str]`): every response generated.
        scores (`list[float]`, *optional*): every candidate's reward (best-of-N).
    """

    response: str
    answer: str | None
    score: float | None
    num_samples: int
    num_tokens: int
    candidates: list[str] = field(default_factory=list)
    scores: list[float] | None = None


def _single(samples: list[Sample], extract) -> Result:
    s = samples[0]
    return Result(s.text, extract(s.text), None, 1, s.num_tokens, [s.text])


def greedy(model, tokenizer, prompts: Sequence, max_new_tokens: int = 256, batch_size: int = 16,
           extract: Callable[[str], str | None] = extract_final_answer) -> list[Result]:
    """One greedy response per prompt."""
    out = sample(model, tokenizer, prompts, 1, max_new_tokens, temperature=0, batch_size=batch_size, desc="greedy")
    return [_single(s, extract) for s in out]


def sampled(model, tokenizer, prompts: Sequence, max_new_tokens: int = 256, temperature: float = 1.0,
            top_p: float = 1.0, batch_size: int = 16,
            extract: Callable[[str], str | None] = extract_final_answer) -> list[Result]:
    """One sampled response per prompt."""
    out = sample(model, tokenizer, prompts, 1, max_new_tokens, temperature, top_p, batch_size, desc="sample")
    return [_single(s, extract) for s in out]


def best_of_n(model, tokenizer, prompts: Sequence, reward: RewardFunction, n: int = 8, max_new_tokens: int = 256,
              temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 16,
              columns: dict[str, Sequence] | None = None,
              extract: Callable[[str], str | None] = extract_final_answer) -> list[Result]:
    """``n`` samples per prompt; the one with the highest reward: ``y* = argmax_i r(x, y_i)``, ties to the first.

    Args:
        reward: ``reward(prompts, completions, **columns) -> list[float]``, called once for all `P * n` samples with
            each prompt (as chat messages) and its columns repeated ``n`` times; e.g. a `RewardModelScorer` or a
            `open_rlhf.rewards.RewardSpec` (``build_reward_functions("model:runs/default/reward")``).
        n (`int`): samples per prompt (>= 1).
        columns (`dict`, *optional*): per-prompt dataset columns the reward reads (``{"answer": [...]}`` for the
            ``math`` / ``accuracy`` verifiers), `P` values each.

    Returns:
        `list[Result]` with ``score`` the chosen sample's reward and ``scores`` every sample's.

    Raises:
        ValueError: for ``n < 1``, a ``columns`` entry whose length is not `P`, or a reward that returns the wrong
            number of scores.
    """
    if n < 1:
        raise ValueError(f"best_of_n needs n >= 1, got {n}")
    columns = dict(columns or {})
    for name, values in columns.items():
        if len(values) != len(prompts):
            raise ValueError(f"column {name!r} has {len(values)} values for {len(prompts)} prompts")
    out = sample(model, tokenizer, prompts, n, max_new_tokens, temperature, top_p, batch_size, desc="best-of-N")
    flat_prompts = [as_messages(p) for p in prompts for _ in range(n)]
    completions = [s.text for samples in out for s in samples]
    repeated = {name: [v for v in values for _ in range(n)] for name, values in columns.items()}
    scores = [float(x) for x in reward(flat_prompts, completions, **repeated)]
    if len(scores) != len(completions):
        raise ValueError(f"the reward returned {len(scores)} scores for {len(completions)} completions")
    results = []
    for i, samples in enumerate(out):
        own = scores[i * n:(i + 1) * n]
        best = max(range(n), key=own.__getitem__)
        results.append(Result(samples[best].text, extract(samples[best].text), own[best], n,
                              sum(s.num_tokens for s in samples), [s.text for s in samples], own))
    return results


def majority_vote(answers: Sequence[str | None]) -> tuple[str | None, int]:
    """The most frequent non-None answer and its count; a tie goes to the answer seen first. ``(None, 0)`` when
    no answer was extracted."""
    counts = collections.Counter(a for a in answers if a is not None)
    if not counts:
        return None, 0
    top = max(counts.values())
    winner = next(a for a in answers if a is not None and counts[a] == top)
    return winner, top


def _vote_result(samples: list[Sample], extract) -> Result:
    answers = [extract(s.text) for s in samples]
    answer, count = majority_vote(answers)
    chosen = answers.index(answer) if answer is not None else 0
    return Result(samples[chosen].text, answer, count / len(samples), len(samples),
                  sum(s.num_tokens for s in samples), [s.text for s in samples])


def self_consistency(model, tokenizer, prompts: Sequence, n: int = 8, max_new_tokens: int = 256,
                     temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 16,
                     extract: Callable[[str], str | None] = extract_final_answer) -> list[Result]:
    """``n`` samples per prompt and a majority vote over their final answers (maj@n).

    Returns:
        `list[Result]`: the response is the first sample giving the majority answer; ``score`` is that answer's vote
        share (count / n). With no extractable answer at all, the first sample and ``answer=None``.

    Raises:
        ValueError: for ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"self_consistency needs n >= 1, got {n}")
    out = sample(model, tokenizer, prompts, n, max_new_tokens, temperature, top_p, batch_size,
                 desc="self-consistency")
    return [_vote_result(samples, extract) for samples in out]


def majority_confidence(counts: Sequence[int]) -> float:
    """Adaptive-Consistency's Beta stopping statistic: the probability that the leading answer is the mode.

    With the two largest answer counts ``v1 >= v2`` (``v2 = 0`` with one answer), the share ``p = p1 / (p1 + p2)``
    of the leader among the two has a ``Beta(v1 + 1, v2 + 1)`` posterior under a uniform prior, and the statistic
    is ``P(p > 1/2) = 1 - I_{1/2}(v1 + 1, v2 + 1)`` (Aggarwal et al. 2023, Sec. 3.2, Eq. 2), ``I`` the regularised
    incomplete beta function. Zero answers give 0.
    """
    from scipy.special import betainc

    top = sorted((c for c in counts if c > 0), reverse=True)
    if not top:
        return 0.0
    v1, v2 = top[0], (top[1] if len(top) > 1 else 0)
    return float(1.0 - betainc(v1 + 1, v2 + 1, 0.5))


def adaptive_should_stop(answers: Sequence[str | None], confidence: float = 0.95, min_samples: int = 2,
                         max_samples: int = 16) -> bool:
    """Adaptive-Consistency's stopping rule on the answers drawn so far: stop at ``max_samples``, or once at least
    ``min_samples`` are drawn and `majority_confidence` of their answer counts reaches ``confidence``."""
    if len(answers) >= max_samples:
        return True
    counts = collections.Counter(a for a in answers if a is not None)
    return len(answers) >= min_samples and majority_confidence(list(counts.values())) >= confidence


def adaptive_consistency(model, tokenizer, prompts: Sequence, max_samples: int = 16, confidence: float = 0.95,
                         samples_per_round: int = 1, min_samples: int = 2, max_new_tokens: int = 256,
                         temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 16,
                         extract: Callable[[str], str | None] = extract_final_answer) -> list[Result]:
    """Self-consistency with a stopping rule: sample in rounds until `majority_confidence` of a prompt's answers
    reaches ``confidence`` (after at least ``min_samples``), or ``max_samples`` are spent.

    Every round samples ``samples_per_round`` more responses for all prompts still open, in one batched call, so an
    easy prompt (its first samples agree) stops early and a hard one uses the budget. The average
    ``num_samples`` of the results is the compute actually used.

    Raises:
        ValueError: for ``max_samples < 1``, ``samples_per_round < 1`` or ``confidence`` outside (0, 1).
    """
    if max_samples < 1 or samples_per_round < 1 or not 0 < confidence < 1:
        raise ValueError(f"adaptive_consistency needs max_samples >= 1, samples_per_round >= 1 and confidence in "
                         f"(0, 1); got {max_samples}, {samples_per_round}, {confidence}")
    drawn: list[list[Sample]] = [[] for _ in prompts]
    open_ids = list(range(len(prompts)))
    while open_ids:
        k = min(samples_per_round, max_samples - len(drawn[open_ids[0]]))
        out = sample(model, tokenizer, [prompts[i] for i in open_ids], k, max_new_tokens, temperature, top_p,
                     batch_size)
        still_open = []
        for i, new in zip(open_ids, out, strict=True):
            drawn[i].extend(new)
            if not adaptive_should_stop([extract(s.text) for s in drawn[i]], confidence, min_samples, max_samples):
                still_open.append(i)
        open_ids = still_open
    return [_vote_result(samples, extract) for samples in drawn]
