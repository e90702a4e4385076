"""Process reward models (PRMs): a score for every step of a solution, and Monte-Carlo step labels to train one.

TRL 1.16 has no PRM any more (it removed ``PRMTrainer`` and ``PRMConfig``), so this module and
`open_rlhf.trainers.prm` are ours. The layout follows TRL's former stepwise-supervision format and Math-Shepherd:

- a step is one line of the solution (`split_steps`);
- the model input is the prompt's chat template with the generation prompt, then each step followed by a newline
  (`encode_steps`); the PRM reads its prediction at the last token of each step (the newline, or the token that
  carries it), so one forward pass scores every step;
- the PRM is a token classifier with two labels, ``0 = wrong``, ``1 = correct``
  (`open_rlhf.models.load_step_classifier`); a step's score is ``P(correct) = softmax(logits)[1]`` at its position.

A whole solution's score aggregates its step scores (`ProcessRewardModel.__call__`): ``min`` (Wang et al. 2024,
"Math-Shepherd", Sec. 3.4), ``prod`` (Lightman et al. 2023, "Let's Verify Step by Step", Sec. 2.6: the
probability that every step is correct) or ``last`` (Snell et al. 2024, "Scaling LLM Test-Time Compute Optimally",
Sec. 5.2, found the last step's prediction best for search).

Step labels without human annotators (`monte_carlo_step_labels`): Math-Shepherd's completion-based estimate
(Wang et al. 2024, Sec. 3.3): from the prefix ending at step k, sample ``N`` completions with a policy; the step is
good (hard estimate, Eq. 3) if any completion reaches the gold answer, and its soft estimate (Eq. 2) is the share
that do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from open_rlhf.inference.sampling import as_messages, completion_text, prompt_text, sample
from open_rlhf.tasks.gsm8k import extract_final_answer, normalize_number

AGGREGATES = ("min", "prod", "last")


def split_steps(text: str) -> list[str]:
    """The steps of a solution: its non-empty lines, stripped of surrounding whitespace."""
    return [line.strip() for line in text.split("\n") if line.strip()]


def steps_prefix(steps: Sequence[str]) -> str:
    """The assistant text of the first steps of a solution, each ending with a newline (what a step continues)."""
    return "".join(f"{s}\n" for s in steps)


def encode_steps(tokenizer, prompt, steps: Sequence[str], max_length: int | None = None) -> tuple[list[int], list[int]]:
    """Token ids of ``prompt`` plus ``steps`` and the position of each step's last token.

    Each step is tokenized on its own, ``step + "\\n"``, after the templated prompt (`prompt_text`), so a step's
    tokens do not depend on the steps after it and its position is exact. When longer than ``max_length`` the
    sequence loses tokens from the left (the prompt's start), and steps cut off entirely lose their positions.

    Returns:
        ``(input_ids, positions)``: `L <= max_length` ids and one index per kept step (`len(steps)` unless cut).
    """
    ids = tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    positions = []
    for step in steps:
        ids = ids + tokenizer(f"{step}\n", add_special_tokens=False)["input_ids"]
        positions.append(len(ids) - 1)
    if max_length is not None and len(ids) > max_length:
        cut = len(ids) - max_length
        ids = ids[cut:]
        positions = [p - cut for p in positions if p >= cut]
    return ids, positions


def aggregate_scores(step_scores: Sequence[float], how: str = "min") -> float:
    """One solution score from its step scores (``min``, ``prod`` or ``last``); 0 for a solution with no step.

    Raises:
        ValueError: for an unknown ``how``.
    """
    if how not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {how!r}")
    if not step_scores:
        return 0.0
    if how == "min":
        return float(min(step_scores))
    if how == "last":
        return float(step_scores[-1])
    return float(torch.tensor(list(step_scores), dtype=torch.float64).prod())


class ProcessRewardModel:
    """Scores every step of a solution with a trained step classifier (``scripts/train_prm.py``).

    Args:
        model: an `AutoModelForTokenClassification` with two labels (0 wrong, 1 correct).
        tokenizer: its tokenizer, with the policy's chat template.
        batch_size (`int`): solutions per forward pass.
        max_length (`int`): longer inputs lose their prompt's start (`encode_steps`).
        aggregate (`str`): how `__call__` turns step scores into one (`aggregate_scores`).

    Raises:
        ValueError: for an unknown ``aggregate``.
    """

    def __init__(self, model, tokenizer, batch_size: int = 16, max_length: int = 1024, aggregate: str = "min"):
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.aggregate = aggregate
        self.__name__ = "prm"

    @classmethod
    def from_pretrained(cls, path: str, device: str | torch.device | None = None, **kwargs) -> ProcessRewardModel:
        """Load a PRM saved by ``train_prm.py`` (safetensors only) onto ``device`` (default the CPU).

        Raises:
            ModelNotFoundError: when the folder does not exist or holds no loadable model.
        """
        from open_rlhf import models

        tokenizer = models.load_tokenizer(path, padding_side="right")
        model = models.load_step_classifier(path, tokenizer.pad_token_id, use_safetensors=True)
        if device is not None:
            model.to(device)
        return cls(model, tokenizer, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def to(self, device: str | torch.device) -> ProcessRewardModel:
        """Move the model to ``device`` (in place); returns self."""
        self.model.to(device)
        return self

    @torch.no_grad()
    def step_scores(self, prompts: Sequence, steps: Sequence[Sequence[str]]) -> list[list[float]]:
        """``P(correct)`` of every step.

        Args:
            prompts: `P` prompts (strings or chat messages); steps: `P` lists of step strings.

        Returns:
            `list[list[float]]`: per solution, one probability in [0, 1] per step (fewer if `encode_steps` cut
            steps off; none for an empty list of steps).
        """
        if len(prompts) != len(steps):
            raise ValueError(f"{len(prompts)} prompts but {len(steps)} step lists")
        encoded = [encode_steps(self.tokenizer, p, s, self.max_length) for p, s in zip(prompts, steps, strict=True)]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out: list[list[float]] = []
        for start in range(0, len(encoded), self.batch_size):
            chunk = encoded[start:start + self.batch_size]
            width = max(len(ids) for ids, _ in chunk)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (ids, _) in enumerate(chunk):
                input_ids[row, :len(ids)] = torch.tensor(ids)
                attention[row, :len(ids)] = 1
            logits = self.model(input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device)).logits
            probs = logits.float().softmax(-1)[..., 1].cpu()
            out.extend([probs[row, positions].tolist() for row, (_, positions) in enumerate(chunk)])
        return out

    def __call__(self, prompts: Sequence, completions: Sequence, **_) -> list[float]:
        """One score per (prompt, completion): the `aggregate` of the completion's step scores (a reward function
        in `open_rlhf.rewards`' signature; a completion with no step scores 0)."""
        steps = [split_steps(completion_text(c)) for c in completions]
        return [aggregate_scores(s, self.aggregate) for s in self.step_scores(prompts, steps)]


def _correct(text: str, gold: str) -> bool:
    answer = extract_final_answer(text)
    return answer is not None and answer == normalize_number(str(gold))


def monte_carlo_step_labels(model, tokenizer, prompts: Sequence, answers: Sequence[str], num_rollouts: int = 4,
                            solutions_per_prompt: int = 1, max_new_tokens: int = 256, temperature: float = 0.7,
                            batch_size: int = 16, max_steps: int = 12) -> tuple[list[dict], int]:
    """Math-Shepherd step labels for policy solutions (Wang et al. 2024, Sec. 3.3, Eq. 2-3).

    For each prompt, sample ``solutions_per_prompt`` solutions from the policy; split each into steps
    (`split_steps`, at most ``max_steps``; a longer one is dropped); from the prefix ending at every step but the
    last, sample ``num_rollouts`` completions. A step's soft value is the share of its completions whose final
    answer equals the gold one; its label is whether any does (the hard estimate). The last step's value is the
    solution's own correctness: its prefix is the whole solution.

    Args:
        model, tokenizer: the completer (usually the policy the PRM will guide).
        prompts: `P` prompts; answers: `P` gold final answers.
        num_rollouts (`int`): completions per step (Math-Shepherd's N; >= 1).
        solutions_per_prompt (`int`): solutions labelled per prompt (>= 1).
        max_new_tokens (`int`): the cap of a solution and of a completion.

    Returns:
        ``(rows, tokens)``: stepwise-supervision rows ``{"prompt", "completions", "labels", "mc_values",
        "answer"}`` and the tokens generated for them (solutions and completions).

    Raises:
        ValueError: for ``num_rollouts < 1``, ``solutions_per_prompt < 1`` or prompts and answers of
            different lengths.
    """
    if num_rollouts < 1 or solutions_per_prompt < 1:
        raise ValueError(f"num_rollouts and solutions_per_prompt must be >= 1, got {num_rollouts} and "
                         f"{solutions_per_prompt}")
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    sampling = dict(max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size)
    solutions = sample(model, tokenizer, prompts, solutions_per_prompt, desc="PRM labels: solutions", **sampling)
    tokens = sum(s.num_tokens for group in solutions for s in group)
    items = []  # (prompt index, steps, final correctness)
    for i, group in enumerate(solutions):
        for s in group:
            steps = split_steps(s.text)
            if 0 < len(steps) <= max_steps:
                items.append((i, steps, _correct(s.text, answers[i])))
    # One rollout request per (solution, step) but the last: the prefix is steps[:k + 1]
    requests = [(j, k) for j, (_, steps, _) in enumerate(items) for k in range(len(steps) - 1)]
    hits: dict[tuple[int, int], int] = {}
    chunk = max(1, batch_size // num_rollouts) * 8
    for start in tqdm(range(0, len(requests), chunk), desc="PRM labels: rollouts", leave=False):
        part = requests[start:start + chunk]
        out = sample(model, tokenizer, [prompts[items[j][0]] for j, _ in part], num_rollouts,
                     prefixes=[steps_prefix(items[j][1][:k + 1]) for j, k in part], **sampling)
        for (j, k), group in zip(part, out, strict=True):
            prefix = steps_prefix(items[j][1][:k + 1])
            hits[(j, k)] = sum(_correct(prefix + s.text, answers[items[j][0]]) for s in group)
            tokens += sum(s.num_tokens for s in group)
    rows = []
    for j, (i, steps, correct) in enumerate(items):
        values = [hits[(j, k)] / num_rollouts for k in range(len(steps) - 1)] + [float(correct)]
        rows.append({"prompt": as_messages(prompts[i]), "completions": steps, "labels": [v > 0 for v in values],
                     "mc_values": values, "answer": str(answers[i])})
    return rows, tokens
