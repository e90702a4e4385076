"""Reward functions: verifiable answer checking (GSM8K / built-in arithmetic), format and length terms, trained
reward models, and `build_reward_functions`, the factory that turns a reward spec string into one callable.

Every reward here has the signature TRL's GRPO/RLOO trainers take and our PPO trainer takes too:
``reward_fn(prompts: list, completions: list, **columns) -> list[float]``, where ``completions`` are
strings or conversational lists ``[{"role": "assistant", "content": ...}]`` and ``columns`` holds the
dataset's other columns (e.g. ``answer``), one value per completion, plus whatever the trainer adds (TRL
1.16 GRPO/RLOO pass ``completion_ids``, ``trainer_state``, ``log_extra``, ``log_metric``); every function
accepts and ignores the keyword arguments it does not use.

Reward spec grammar (`build_reward_functions`): comma-separated terms, each ``[WEIGHT*]NAME[:ARGUMENT]``
(WEIGHT defaults to 1.0; whitespace around terms is ignored)::

    accuracy          strict GSM8K check: the `#### N` marker must hold the gold number (`accuracy_reward`)
    math              the final answer is mathematically equal to the gold answer (`math_verify_reward`)
    format            the last non-empty line is `#### <number>` (`format_reward`)
    arith             the share of the completion's `a <op> b = c` equations that are right (`arithmetic_validity_reward`)
    length[:CHARS]    -max(0, n - CHARS) / CHARS with n the completion length in characters (`length_penalty`)
    model:PATH        a reward model saved by `train_reward.py` (loaded on first call)
    ensemble:P1|P2|...[@LAMBDA]   reward models P1, P2, ... (``|``-separated: a comma separates terms); the mean
                      score minus LAMBDA (default 0) times their standard deviation (`RewardModelEnsemble`)
    prm:PATH[@AGG]    a process reward model saved by `train_prm.py`: its step scores (P(correct) per line)
                      aggregated by AGG = min (default) | prod | last (`open_rlhf.inference.prm.ProcessRewardModel`)
    repetition        -(1 - distinct / total word 4-grams) of the completion, in [-1, 0] (`open_rlhf.guards`)
    copy_prompt       -(share of the completion's word 4-grams found in the prompt), in [-1, 0] (`open_rlhf.guards`)
    length_blowup[:FACTOR]   -clip((r - FACTOR) / FACTOR, 0, 1), r = length / the batch's median length in
                      characters, FACTOR > 1 (default 4) (`open_rlhf.guards`)
    principles:PATH   the weighted sum of a principles YAML file's rule and reward-model checks
                      (`open_rlhf.guards.principles_reward`; e.g. config/principles/default.yaml)

e.g. ``"math"``, ``"accuracy,0.2*format"``, ``"model:runs/default/reward"``,
``"1.0*math,0.1*format,0.5*length:400"``. The result, a `RewardSpec`, is itself a reward function (the
weighted sum) and also exposes its terms: pass ``spec`` to our PPO trainer, and either ``spec`` or
``reward_funcs=spec.funcs`` with ``GRPOConfig(reward_weights=spec.weights)`` to TRL (the latter logs each
term separately).

Why not `trl.rewards` (TRL 1.16): its ``accuracy_reward`` reads a ``solution`` column and only LaTeX answers,
not GSM8K's ``#### N``; its ``get_soft_overlong_punishment`` counts tokens from ``completion_ids``, which our
PPO trainer does not pass.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from open_rlhf.errors import ConfigError, ModelNotFoundError, RewardSpecError
from open_rlhf.inference.sampling import completion_text
from open_rlhf.tasks import gsm8k
from open_rlhf.tasks.gsm8k import extract_final_answer, normalize_number

__all__ = ["DEFAULT_LENGTH_TARGET_CHARS", "arithmetic_validity_reward", "LazyProcessRewardModel", "LazyRewardModelScorer", "RewardModelEnsemble", "RewardModelScorer", "RewardSpec", "RewardTerm",
           "accuracy_reward", "build_reward_functions", "check_columns", "completion_text", "extract_final_answer",
           "format_reward", "length_penalty", "math_verify_reward", "normalize_number", "parse_reward_spec"]

RewardFunction = Callable[..., list[float]]
DEFAULT_LENGTH_TARGET_CHARS = 600  # above the 95th percentile (562) of GSM8K train reference solutions


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
    return [float(gsm8k.is_correct(completion_text(c), str(gold)))
            for c, gold in zip(completions, answer, strict=True)]


def math_verify_reward(prompts: Sequence, completions: Sequence, answer: Sequence[str], **kwargs) -> list[float]:
    """Verifiable reward: 1.0 when the completion's final answer is mathematically equal to the gold ``answer``.

    The final answer is, in order, the rest of the line after the last ``####``, the content of the last
    ``\\boxed{...}``, or the last number in the text (the order of `extract_final_answer`; unlike
    `accuracy_reward`, the ``####`` marker is not required). The gold answer is the part after its last
    ``####`` (GSM8K's ``"... #### 72"``) or the whole string (``"72"``). Both are parsed and compared with
    math-verify (`math_verify.parse` / `math_verify.verify`), so ``\\boxed{\\frac{1}{2}}`` equals ``0.5`` and
    ``1,000`` equals ``1000``. Other spans (with words or units such as ``18 dollars``, percentages, powers
    such as ``2^3`` and other operators sympy may take minutes on, or longer than 100 characters) and spans
    math-verify cannot parse fall back to the exact comparison of `extract_final_answer` on the two spans
    (``18 dollars`` -> ``18``, ``25%`` -> ``25``; ``2^3`` -> ``3``, so it does not equal ``8``).

    Timeouts: math-verify bounds each parse and verify call with ``signal.alarm`` (5 s here, its default), which
    only works in the main thread; elsewhere it raises ``ValueError``. Called from another thread (e.g. TRL's
    async rollout worker), this function therefore passes ``parsing_timeout=None`` / ``timeout_seconds=None``
    (math-verify then logs once that timeouts are disabled). The number-like-span filter above is what keeps
    that safe, and it applies in every thread, so the reward of a completion does not depend on the thread.
    In the main thread the alarm replaces any ``SIGALRM`` handler for the duration of each call.

    Args:
        prompts: unused (kept for the TRL reward-function signature).
        completions: `B` completions (strings or conversational lists).
        answer: `B` gold answers (strings such as ``"72"`` or a GSM8K solution ending in ``"#### 72"``).
        **kwargs: other dataset columns and trainer arguments (``completion_ids``, ``trainer_state``), unused.

    Returns:
        `list[float]` of length `B`, each 0.0 or 1.0 (0.0 when the completion has no answer at all).

    Raises:
        ValueError: when ``answer`` does not hold one gold answer per completion.

    Source: RLVR, Lambert et al. 2024 (Tülu 3), https://huggingface.co/papers/2411.15124, Sec. 6;
        math-verify, https://github.com/huggingface/Math-Verify.
    """
    timeout_s = gsm8k.MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    return [float(gsm8k.is_equivalent(completion_text(completion), str(gold), timeout_s))
            for completion, gold in zip(completions, answer, strict=True)]


_EQUATION = re.compile(r"(-?\d[\d,]*(?:\.\d+)?)\s*([-+*/x\u00d7])\s*(-?\d[\d,]*(?:\.\d+)?)\s*=\s*(-?\d[\d,]*(?:\.\d+)?)")


def arithmetic_validity_reward(prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
    """Step-level verifiable reward: the share of the completion's ``a <op> b = c`` equations that are right.

    Every binary equation written in the completion (``+ - * / x``, integers or decimals, thousands commas allowed)
    is recomputed; ``c`` must equal ``a op b`` to within 1e-6 relative (a division may round to two decimals). A
    completion with no equation scores 0.0. Unlike the answer check, it credits the correct steps of a solution
    whose answer is wrong and blames exactly the wrong arithmetic, the failure mode of small models on the built-in
    task (a right plan with ``9 * 14 = 116``). Use it as a shaping term beside the answer reward
    (``"math,0.5*arith"``), not alone: a completion of trivial true equations would maximise it.

    Returns:
        `list[float]` of length `B`, each in [0, 1].

    Source: the process supervision idea of Lightman et al. 2023, "Let's Verify Step by Step",
    https://arxiv.org/abs/2305.20050 (step-level labels), with the steps checked by a calculator instead of labellers.
    """
    scores = []
    for completion in completions:
        text = completion_text(completion)
        checks = arithmetic_step_checks(text)
        found = len(_EQUATION.findall(text))  # a division by zero counts as written but never as right
        scores.append(sum(right for _, right in checks) / found if found else 0.0)
    return scores


def arithmetic_step_checks(text: str) -> list[tuple[int, bool]]:
    """Every ``a <op> b = c`` equation of ``text`` checked by a calculator, as ``arithmetic_validity_reward`` does.

    Args:
        text (`str`): a completion (plain text).

    Returns:
        `list[tuple[int, bool]]`: one ``(end, right)`` per equation in order, ``end`` the character offset just
        past its result ``c`` (where the step is complete), ``right`` whether ``c`` equals ``a op b`` (to 1e-6
        relative; a division may round to two decimals). A division by zero is skipped.

    Source: the step checks of `arithmetic_validity_reward` (process supervision, Lightman et al. 2023), per step.
    """
    def value(number: str) -> float:
        return float(number.replace(",", ""))

    checks = []
    for match in _EQUATION.finditer(text):
        a, op, b, c = match.groups()
        x, y, z = value(a), value(b), value(c)
        if op == "/" and y == 0:
            continue
        exact = {"+": x + y, "-": x - y, "*": x * y, "x": x * y, "\u00d7": x * y, "/": x / y if y else 0.0}[op]
        right = math.isclose(exact, z, rel_tol=1e-6, abs_tol=1e-9) or (op == "/" and round(exact, 2) == z)
        checks.append((match.end(), bool(right)))
    return checks


def format_reward(prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
    """Format reward: 1.0 when the last non-empty line of the completion is ``#### <number>``, else 0.0.

    This is the answer format the SFT data teaches (``"reasoning...\\n#### 72"``); the number may carry
    ``$``, commas, a sign and decimals (``#### $1,000.50``) but nothing may follow it on the line.

    Args:
        prompts: unused (kept for the TRL reward-function signature).
        completions: `B` completions (strings or conversational lists).
        **kwargs: dataset columns and trainer arguments, unused.

    Returns:
        `list[float]` of length `B`, each 0.0 or 1.0.

    Source: the format reward of DeepSeek-R1, DeepSeek-AI 2025, https://huggingface.co/papers/2501.12948,
        Sec. 2.2.2 (there ``<think>`` tags; here GSM8K's ``####`` line).
    """
    return [float(gsm8k.has_answer_format(completion_text(c))) for c in completions]


class _LengthPenalty:
    # A callable class rather than a closure so the reward stays picklable (TRL's async GRPO rollout worker
    # sends reward functions to a spawned process).
    def __init__(self, target_chars: int):
        self.target_chars = target_chars
        self.__name__ = "length_penalty"

    def __call__(self, prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
        target = self.target_chars
        return [-max(0, len(completion_text(c)) - target) / target for c in completions]

    def __repr__(self) -> str:
        return f"length_penalty(target_chars={self.target_chars})"


def length_penalty(target_chars: int = DEFAULT_LENGTH_TARGET_CHARS) -> RewardFunction:
    """A reward function penalising completions longer than ``target_chars`` characters.

    Each completion scores ``-max(0, n - target_chars) / target_chars`` with ``n`` its length in characters
    (of the assistant text, see `completion_text`): 0 up to the target, -1 at twice the target, linear and
    unbounded beyond. Characters rather than tokens so that a spec means the same in every trainer: our PPO
    trainer passes only decoded texts, while TRL's GRPO/RLOO also pass ``completion_ids`` (for a token-based
    penalty there, see ``trl.rewards.get_soft_overlong_punishment``). GSM8K reference solutions run about 2.3
    characters per SmolLM2 token.

    Args:
        target_chars (`int`): the length in characters from which the penalty starts; must be positive.

    Returns:
        A reward function ``f(prompts, completions, **kwargs) -> list[float]`` (values <= 0), named
        ``length_penalty``.

    Raises:
        ValueError: when ``target_chars`` is not a positive integer.

    Source: a linear overlong penalty, like DAPO's soft overlong punishment, Yu et al. 2025,
        https://huggingface.co/papers/2503.14476, Eq. 13 (which is in tokens and capped at -1).
    """
    if isinstance(target_chars, bool) or not isinstance(target_chars, int) or target_chars <= 0:
        raise ValueError(f"length_penalty: target_chars must be a positive integer (characters), got "
                         f"{target_chars!r}.")
    return _LengthPenalty(target_chars)


class RewardModelScorer:
    """Scores (prompt, completion) pairs with a trained sequence-classification reward model.

    Applies the tokenizer's chat template to the conversation, as `train_reward.py` does in training, and
    returns the scalar head's output at the last non-pad token. Inputs go to the model's device, so a scorer
    moved with `to` scores there.

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

    @classmethod
    def from_pretrained(cls, reward_model_path: str, device: str | torch.device | None = None,
                        model_kwargs: dict | None = None, **kwargs) -> RewardModelScorer:
        """Load a reward model saved by ``train_reward.py`` (model and tokenizer) onto ``device``.

        Args:
            reward_model_path (`str`): the model folder (or a hub id where the Hub is reachable).
            device (`str` or `torch.device`, *optional*): where to score; default the CPU.
            model_kwargs (`dict`, *optional*): ``from_pretrained`` options of the model (e.g. ``use_safetensors``).
            **kwargs: `RewardModelScorer` options (``batch_size``, ``max_length``).

        Raises:
            ModelNotFoundError: when the folder does not exist or holds no loadable model.
        """
        from open_rlhf import models

        tokenizer = models.load_tokenizer(reward_model_path, padding_side="right")
        model = models.load_scalar_head_model(reward_model_path, tokenizer.pad_token_id, **(model_kwargs or {}))
        if device is not None:
            model.to(device)
        return cls(model, tokenizer, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def to(self, device: str | torch.device) -> RewardModelScorer:
        """Move the reward model to ``device`` (in place); returns self."""
        self.model.to(device)
        return self

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


class LazyRewardModelScorer:
    """A `RewardModelScorer` over a saved reward model, loaded on the first call (the ``model:PATH`` term).

    Building a spec thus stays cheap (a script can check the dataset columns first) and the spec stays
    picklable until used. `to` before the first call sets the device the model is loaded onto; after it, moves
    the loaded model.

    Args:
        reward_model_path (`str`): a directory saved by ``train_reward.py`` (model and tokenizer).
        device (`str` or `torch.device`, *optional*): where to load and score; default the CPU.
    """

    def __init__(self, reward_model_path: str, device: str | torch.device | None = None):
        self.reward_model_path = reward_model_path
        self.device = device
        self.__name__ = "reward_model"
        self._scorer: RewardModelScorer | None = None

    @property
    def scorer(self) -> RewardModelScorer:
        """The loaded `RewardModelScorer` (loaded on first access, onto ``device``)."""
        if self._scorer is None:
            self._scorer = RewardModelScorer.from_pretrained(self.reward_model_path, device=self.device)
        return self._scorer

    def to(self, device: str | torch.device) -> LazyRewardModelScorer:
        """Score on ``device`` from now on (moves the model if it is already loaded); returns self."""
        self.device = device
        if self._scorer is not None:
            self._scorer.to(device)
        return self

    def __call__(self, prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
        return self.scorer(prompts, completions, **kwargs)

    def __repr__(self) -> str:
        return f"LazyRewardModelScorer({self.reward_model_path!r})"


class LazyProcessRewardModel:
    """A `open_rlhf.inference.prm.ProcessRewardModel` loaded on the first call (the ``prm:PATH[@AGG]`` term)."""

    def __init__(self, path: str, aggregate: str = "min", device: str | torch.device | None = None):
        self.path, self.aggregate, self.device = path, aggregate, device
        self.__name__ = "prm"
        self._prm = None

    @property
    def prm(self):
        """The loaded PRM (loaded on first access, onto ``device``)."""
        if self._prm is None:
            from open_rlhf.inference.prm import ProcessRewardModel

            self._prm = ProcessRewardModel.from_pretrained(self.path, device=self.device, aggregate=self.aggregate)
        return self._prm

    def to(self, device: str | torch.device) -> LazyProcessRewardModel:
        self.device = device
        if self._prm is not None:
            self._prm.to(device)
        return self

    def __call__(self, prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
        return self.prm(prompts, completions, **kwargs)

    def __repr__(self) -> str:
        return f"LazyProcessRewardModel({self.path!r}, {self.aggregate!r})"


class RewardModelEnsemble:
    """K reward models scoring together: their mean, their spread, and the conservative mean - lambda * std.

    For each completion, with scores ``r_1..r_K``: ``mean = sum_k r_k / K``, ``std = sqrt(sum_k (r_k - mean)^2 / K)``
    (the population deviation), and calling the ensemble returns ``mean - penalty * std``. Penalising disagreement
    is the uncertainty-weighted objective of Coste et al. 2023 ("Reward Model Ensembles Help Mitigate
    Overoptimization", ICLR 2024, Sec. 3.2), which subtracts ``lambda * variance``; we use the standard deviation,
    which has the reward's own unit, so ``penalty`` reads in standard deviations.

    Args:
        scorers: K >= 2 reward functions (`LazyRewardModelScorer` / `RewardModelScorer`).
        penalty (`float`): lambda >= 0; 0 gives the plain mean.

    Raises:
        ValueError: for fewer than two scorers or a negative penalty.
    """

    def __init__(self, scorers: Sequence[RewardFunction], penalty: float = 0.0):
        if len(scorers) < 2 or penalty < 0:
            raise ValueError(f"an ensemble needs >= 2 scorers and penalty >= 0, got {len(scorers)} and {penalty}")
        self.scorers = list(scorers)
        self.penalty = float(penalty)
        self.__name__ = "ensemble"

    def mean_and_std(self, prompts: Sequence, completions: Sequence, **kwargs) -> tuple[list[float], list[float]]:
        """Per completion: the mean score `(N,)` and the standard deviation `(N,)` over the K models."""
        scores = torch.tensor([list(map(float, f(prompts, completions, **kwargs))) for f in self.scorers])  # (K, N)
        return scores.mean(0).tolist(), scores.std(0, correction=0).tolist()

    def to(self, device) -> RewardModelEnsemble:
        for scorer in self.scorers:
            scorer.to(device)
        return self

    def __call__(self, prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
        mean, std = self.mean_and_std(prompts, completions, **kwargs)
        return [m - self.penalty * s for m, s in zip(mean, std, strict=True)]

    def __repr__(self) -> str:
        return f"RewardModelEnsemble({self.scorers!r}, penalty={self.penalty})"


@dataclass
class RewardSpec:
    """Reward terms and their weights; calling it returns the weighted sum, so it is a reward function itself.

    ``spec(prompts, completions, **kwargs)[b] = sum_i weights[i] * funcs[i](prompts, completions, **kwargs)[b]``.

    Args:
        funcs (`list` of reward functions): each ``f(prompts, completions, **kwargs) -> list[float]``.
        weights (`list[float]`): one weight per function.
        names (`list[str]`): one unique name per function (the spec's term names, e.g. ``"math"``).
        required_columns (`tuple[str, ...]`): dataset columns the terms read (``("answer",)`` for
            ``accuracy``/``math``), for the scripts to check the dataset before training.

    Raises:
        ValueError: when there are no terms, or ``funcs``, ``weights`` and ``names`` differ in length, or
            names repeat.
    """

    funcs: list[RewardFunction]
    weights: list[float]
    names: list[str]
    required_columns: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.funcs or not len(self.funcs) == len(self.weights) == len(self.names):
            raise ValueError(f"RewardSpec needs at least one term and as many weights and names as functions; got "
                             f"{len(self.funcs)} funcs, {len(self.weights)} weights, {len(self.names)} names.")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"RewardSpec names must be unique (TRL logs one metric per name); got {self.names}.")

    @property
    def __name__(self) -> str:  # TRL names (and logs) a reward function by its __name__
        return "+".join(self.names)

    @property
    def needs_answer(self) -> bool:
        """Whether a term reads the gold ``answer`` column."""
        return "answer" in self.required_columns

    def to(self, device: str | torch.device) -> RewardSpec:
        """Move every term that holds a model (a reward model) to ``device``; returns self. Terms without a
        ``to`` method (the verifiable and format rewards) run anywhere."""
        for func in self.funcs:
            if hasattr(func, "to"):
                func.to(device)
        return self

    def __call__(self, prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
        """The weighted sum of the terms: `list[float]` of length `B` (one score per completion)."""
        total = [0.0] * len(completions)
        for func, weight, name in zip(self.funcs, self.weights, self.names, strict=True):
            scores = func(prompts, completions, **kwargs)
            if len(scores) != len(completions):
                raise ValueError(f"Reward term {name!r} returned {len(scores)} scores for {len(completions)} "
                                 f"completions; a reward function must return one score per completion.")
            total = [t + weight * s for t, s in zip(total, scores, strict=True)]
        return total


_SPEC_HELP = ("Valid names: accuracy, math, format, arith, length[:TARGET_CHARS], model:PATH, ensemble:P1|P2[@LAMBDA], "
              "prm:PATH[@min|prod|last], repetition, copy_prompt, length_blowup[:FACTOR], principles:PATH; each term is "
              "[WEIGHT*]NAME[:ARGUMENT], terms separated by commas. Example: '1.0*math,0.1*format,0.5*length:400'.")


def _build_term(name: str, argument: str | None, where: str) -> tuple[RewardFunction, tuple[str, ...]]:
    """The reward function of one spec term and the dataset columns it reads."""
    if name in ("accuracy", "math", "format", "arith") and argument is not None:
        raise RewardSpecError(f"{where}: {name!r} takes no argument, got {argument!r}. {_SPEC_HELP}")
    if name == "accuracy":
        return accuracy_reward, ("answer",)
    if name == "math":
        return math_verify_reward, ("answer",)
    if name == "format":
        return format_reward, ()
    if name == "arith":
        return arithmetic_validity_reward, ()
    if name == "length":
        if argument is None:
            return length_penalty(), ()
        if not argument.isdigit() or int(argument) <= 0:
            raise RewardSpecError(f"{where}: the length target must be a positive whole number of characters, got "
                             f"{argument!r}. {_SPEC_HELP}")
        return length_penalty(int(argument)), ()
    if name == "model":
        if not argument:
            raise RewardSpecError(f"{where}: 'model' needs the reward model directory, as in "
                             f"'model:runs/default/reward'. {_SPEC_HELP}")
        if not Path(argument).is_dir():
            raise ModelNotFoundError(f"{where}: reward model directory {argument!r} does not exist. Train one with "
                                    f"scripts/train_reward.py (it writes e.g. runs/default/reward) or fix the path.")
        return LazyRewardModelScorer(argument), ()
    if name == "ensemble":
        paths_text, at, penalty_text = (argument or "").partition("@")
        paths = [p.strip() for p in paths_text.split("|") if p.strip()]
        try:
            penalty = float(penalty_text) if at else 0.0
        except ValueError:
            penalty = math.nan
        if len(paths) < 2 or not math.isfinite(penalty) or penalty < 0:
            raise RewardSpecError(f"{where}: 'ensemble' needs two or more reward model folders separated by '|' and "
                                  f"an optional '@LAMBDA' >= 0, as in 'ensemble:runs/rm-0|runs/rm-1@0.5'. {_SPEC_HELP}")
        missing = [p for p in paths if not Path(p).is_dir()]
        if missing:
            raise ModelNotFoundError(f"{where}: reward model folder(s) {missing} do not exist. Train them with "
                                     "scripts/train_reward.py (e.g. one per --seed) or fix the paths.")
        return RewardModelEnsemble([LazyRewardModelScorer(p) for p in paths], penalty), ()
    if name == "prm":
        from open_rlhf.inference.prm import AGGREGATES

        path, at, how = (argument or "").partition("@")
        how = how.strip() if at else "min"
        if not path.strip() or how not in AGGREGATES:
            raise RewardSpecError(f"{where}: 'prm' needs the PRM folder and an optional '@' aggregate, one of "
                                  f"{AGGREGATES}, as in 'prm:runs/default/prm@min'. {_SPEC_HELP}")
        if not Path(path.strip()).is_dir():
            raise ModelNotFoundError(f"{where}: PRM folder {path.strip()!r} does not exist. Train one with "
                                     "scripts/train_prm.py (it writes e.g. runs/default/prm) or fix the path.")
        return LazyProcessRewardModel(path.strip(), how), ()
    if name in ("repetition", "copy_prompt", "length_blowup"):
        from open_rlhf.guards import detector_penalty

        try:
            return detector_penalty(name if argument is None else f"{name}:{argument}"), ()
        except ValueError as error:
            raise RewardSpecError(f"{where}: {error} {_SPEC_HELP}") from None
    if name == "principles":
        from open_rlhf.guards import principles_reward

        if not argument:
            raise RewardSpecError(f"{where}: 'principles' needs a principles YAML file, as in "
                                  f"'principles:config/principles/default.yaml'. {_SPEC_HELP}")
        return principles_reward(argument, model_reward=lambda path, at: _build_term("model", path, at)[0]), ()
    raise RewardSpecError(f"{where}: unknown reward name {name!r}. {_SPEC_HELP}")


@dataclass(frozen=True)
class RewardTerm:
    """One term of a reward spec, as written: ``text`` (stripped), ``weight`` (1.0 when omitted), ``name``,
    ``argument`` (None without a ``:``) and ``where`` (the term's position, for error messages)."""

    text: str
    weight: float
    name: str
    argument: str | None
    where: str


def parse_reward_spec(spec: str) -> list[RewardTerm]:
    """Split a reward spec into its terms and check their syntax (not the names; see `build_reward_functions`).

    Raises:
        RewardSpecError (a `ValueError`): on an empty spec or term, or a weight that is not a finite number.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise RewardSpecError(f"Empty reward spec {spec!r}. {_SPEC_HELP}")
    terms = []
    for index, raw_term in enumerate(spec.split(",")):
        term = raw_term.strip()
        where = f"reward spec {spec!r}, term {index + 1} {term!r}"
        if not term:
            raise RewardSpecError(f"{where}: empty term (a stray comma?). {_SPEC_HELP}")
        weight = 1.0
        if "*" in term:
            weight_text, term_body = (part.strip() for part in term.split("*", 1))
            try:
                weight = float(weight_text)
            except ValueError:
                weight = math.nan
            if not math.isfinite(weight):
                raise RewardSpecError(f"{where}: weight {weight_text!r} is not a finite number. {_SPEC_HELP}")
        else:
            term_body = term
        name, colon, argument = term_body.partition(":")
        terms.append(RewardTerm(term, weight, name.strip(), argument.strip() if colon else None, where))
    return terms


def build_reward_functions(spec: str) -> RewardSpec:
    """Parse a reward spec string into a `RewardSpec` (see the module docstring for the grammar).

    Each comma-separated term is ``[WEIGHT*]NAME[:ARGUMENT]``; WEIGHT is a finite float (default 1.0,
    negative allowed). Names: ``accuracy`` (`accuracy_reward`), ``math`` (`math_verify_reward`), ``format``
    (`format_reward`), ``length[:TARGET_CHARS]`` (`length_penalty`, default target 600 characters) and
    ``model:PATH`` (a `LazyRewardModelScorer`; the model loads on the first call). A name used twice gets a
    suffix in ``names`` (``model``, ``model_2``).

    Args:
        spec (`str`): e.g. ``"math"``, ``"accuracy,0.2*format"``, ``"model:runs/default/reward"``,
            ``"1.0*math,0.1*format,0.5*length:400"``.

    Returns:
        `RewardSpec`: the terms' functions, weights and names, the dataset columns they need
        (``required_columns``, ``needs_answer``); call it for the weighted sum.

    Raises:
        RewardSpecError (a `ValueError`): on an empty spec or term, a weight that is not a finite number, an unknown name, a missing or
            malformed argument; the message names the term, the valid names and an example.
        ModelNotFoundError (a `FileNotFoundError`): when a ``model:PATH`` directory does not exist.
        ConfigError (a `ValueError`): for a bad ``principles:PATH`` file (`open_rlhf.guards.load_principles`).
    """
    funcs, weights, names, base_names, columns = [], [], [], [], []
    for term in parse_reward_spec(spec):
        func, needed = _build_term(term.name, term.argument, term.where)
        funcs.append(func)
        weights.append(term.weight)
        base_names.append(term.name)
        names.append(term.name if base_names.count(term.name) == 1 else f"{term.name}_{base_names.count(term.name)}")
        columns.extend(c for c in needed if c not in columns)
    return RewardSpec(funcs, weights, names, tuple(columns))


def check_columns(reward: RewardSpec, columns: Sequence[str], dataset_name: str) -> None:
    """Fail early when the prompts lack a column the reward reads (e.g. ``answer`` for ``math``/``accuracy``).

    Raises:
        ConfigError (a `ValueError`): naming the dataset, the missing columns and the reward terms that need them.
    """
    missing = [c for c in reward.required_columns if c not in columns]
    if missing:
        raise ConfigError(f"Dataset {dataset_name!r} has no {missing} column(s), which the reward "
                         f"{reward.__name__!r} needs (columns: {list(columns)}). Use data with gold answers "
                         "(builtin, GSM8K), or a reward without answer checking, e.g. 'model:PATH'.")
