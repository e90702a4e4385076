"""Evaluation metrics: pairwise win rates (raw and length-controlled), diversity (distinct-n, self-BLEU),
held-out perplexity, and the intervals and paired tests that compare two policies on the same prompts.

Pure functions over Python sequences and numpy arrays; only `perplexity` runs a model. Every statistic here is
rank-local: under several processes, gather the per-prompt values of all ranks first and call the function
once (the functions are not sums that could be reduced piecewise: intervals, regressions and bootstraps are
not).

All intervals are two-sided 95% intervals. This module is a leaf: it imports nothing from the project.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from statistics import NormalDist

import numpy as np
import torch

__all__ = ["Z_95", "accuracy_interval", "distinct_n", "length_controlled_win_rate", "mcnemar_test",
           "paired_bootstrap", "pairwise_preferences", "perplexity", "self_bleu", "win_rate",
           "wilson_interval"]

Z_95 = NormalDist().inv_cdf(0.975)  # 1.959963984540054: the two-sided 95% normal quantile


def _as_vector(values, name: str) -> np.ndarray:
    """``values`` as a finite float64 vector of shape `(N,)`, N >= 1."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of numbers, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        index = int(np.flatnonzero(~np.isfinite(array))[0])
        raise ValueError(f"{name} holds a NaN or infinite value at index {index}")
    return array


def _paired(values_a, values_b, name_a: str, name_b: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_vector(values_a, name_a), _as_vector(values_b, name_b)
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must hold one value per prompt each, got {a.size} and "
                         f"{b.size} values; pass the two policies' values on the same prompts, in the same "
                         "order")
    return a, b


def _binary(values, name: str) -> np.ndarray:
    array = _as_vector(values, name)
    bad = np.flatnonzero((array != 0) & (array != 1))
    if bad.size:
        raise ValueError(f"{name} must hold 0/1 (or False/True) per prompt, got {array[bad[0]]!r} at index "
                         f"{bad[0]}")
    return array.astype(bool)


# ---------------------------------------------------------------------------------------------------------
# Intervals and paired tests
# ---------------------------------------------------------------------------------------------------------

def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``successes / n``.

    Args:
        successes (`float`): number of successes, ``0 <= successes <= n`` (a half-integer is accepted: a win
            rate counts a tie as half a win).
        n (`int`): number of trials, ``n >= 1``.
        z (`float`): normal quantile; the default `Z_95` gives a two-sided 95% interval.

    Returns:
        `tuple[float, float]`: ``(low, high)``, inside ``[0, 1]``.

    Raises:
        ValueError: when ``n < 1`` or ``successes`` is outside ``[0, n]``.

    Source: Wilson 1927, "Probable inference, the law of succession, and statistical inference", JASA 22(158),
    209-212; recommended over the normal (Wald) interval by Brown, Cai & DasGupta 2001, "Interval Estimation
    for a Binomial Proportion", Statistical Science 16(2), 101-133.
    """
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need n >= 1 and 0 <= successes <= n, got successes={successes}, n={n}")
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # Clipped for rounding only: the Wilson interval lies in [0, 1] by construction.
    return max(0.0, center - half), min(1.0, center + half)


def accuracy_interval(correct: Sequence) -> tuple[float, float, float]:
    """Accuracy over prompts with its 95% Wilson interval.

    Wilson rather than the normal approximation ``p +- 1.96 sqrt(p(1-p)/n)``: with the 32-128 held-out prompts
    of our evaluations the normal interval under-covers, and at 0/n or n/n it collapses to a single point.

    Args:
        correct (`Sequence[bool]` or `Sequence[float]` of length `N`): per prompt, 1/True when the policy's
            answer is correct, 0/False otherwise (e.g. ``evaluate_policy(...)["correct"]``).

    Returns:
        `tuple[float, float, float]`: ``(mean, low, high)``, shares in ``[0, 1]``.

    Raises:
        ValueError: when ``correct`` is empty or holds a value other than 0/1.

    Source: Wilson 1927 (see `wilson_interval`).
    """
    hits = _binary(correct, "correct")
    low, high = wilson_interval(int(hits.sum()), hits.size)
    return float(hits.mean()), low, high


def mcnemar_test(correct_a: Sequence, correct_b: Sequence) -> dict:
    """Exact (binomial) McNemar test: do policies A and B have the same accuracy on the same prompts?

    Only the discordant prompts count: ``a_only`` where A is right and B wrong, ``b_only`` the reverse. Under
    the null hypothesis each discordant prompt is A's with probability 1/2, so
    ``a_only ~ Binomial(a_only + b_only, 1/2)``; the two-sided p-value is
    ``min(1, 2 * P(X <= min(a_only, b_only)))``, computed exactly in rational arithmetic (no scipy needed;
    with p = 1/2 doubling the smaller tail equals scipy's ``binomtest`` p-value). No discordant prompt gives
    p = 1.

    Args:
        correct_a (`Sequence[bool]` of length `N`): per prompt, whether policy A is correct.
        correct_b (`Sequence[bool]` of length `N`): the same prompts, in the same order, for policy B.

    Returns:
        dict with ``a_only``, ``b_only`` (discordant counts), ``n`` (prompts), ``accuracy_difference``
        (accuracy of A minus that of B, = ``(a_only - b_only) / n``) and ``p_value`` (two-sided).

    Raises:
        ValueError: when the two sequences differ in length, are empty, or hold a value other than 0/1.

    Source: McNemar 1947, "Note on the sampling error of the difference between correlated proportions or
    percentages", Psychometrika 12(2), 153-157; the exact conditional form as in Fagerland, Lydersen & Laake
    2013, "The McNemar test for binary matched-pairs data", BMC Medical Research Methodology 13:91.
    """
    a, b = _binary(correct_a, "correct_a"), _binary(correct_b, "correct_b")
    if a.shape != b.shape:
        raise ValueError(f"correct_a and correct_b must cover the same prompts, got {a.size} and {b.size} "
                         "values")
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    discordant = a_only + b_only
    if discordant == 0:
        p_value = 1.0
    else:
        tail = sum(math.comb(discordant, k) for k in range(min(a_only, b_only) + 1))
        p_value = float(min(Fraction(1), Fraction(2 * tail, 2 ** discordant)))
    return {"a_only": a_only, "b_only": b_only, "n": int(a.size),
            "accuracy_difference": (a_only - b_only) / a.size, "p_value": p_value}


def paired_bootstrap(values_a: Sequence[float], values_b: Sequence[float], num_samples: int = 10_000,
                     seed: int = 0) -> dict:
    """Mean paired difference ``mean(values_a - values_b)`` with a 95% percentile-bootstrap interval.

    Prompts are resampled with replacement ``num_samples`` times (the same resampled prompts for both
    policies, which keeps the pairing); the interval is the 2.5th and 97.5th percentiles (numpy's linear
    interpolation) of the resampled mean differences. Use it for any per-prompt score: reward-model scores,
    0/1 correctness, lengths.

    Args:
        values_a (`Sequence[float]` of length `N`): per-prompt values of policy A.
        values_b (`Sequence[float]` of length `N`): the same prompts, in the same order, for policy B.
        num_samples (`int`): bootstrap resamples, >= 1 (10,000 gives percentiles stable to about 0.5% of the
            interval width).
        seed (`int`): seed of numpy's `default_rng`; the same inputs and seed give the same interval.

    Returns:
        dict with ``mean_difference`` (of the original sample, in the values' unit), ``low``, ``high`` (the
        interval), ``n`` and ``num_samples``.

    Raises:
        ValueError: when the two sequences differ in length, are empty or not finite, or ``num_samples < 1``.

    Source: Efron & Tibshirani 1993, "An Introduction to the Bootstrap", Ch. 13 (percentile interval); the
    paired resampling of Koehn 2004, "Statistical Significance Tests for Machine Translation Evaluation"
    (EMNLP).
    """
    a, b = _paired(values_a, values_b, "values_a", "values_b")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    differences = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(num_samples)
    chunk = max(1, 2_000_000 // differences.size)  # bounds the (chunk, N) index matrix to ~16 MB
    for start in range(0, num_samples, chunk):
        stop = min(num_samples, start + chunk)
        indices = rng.integers(0, differences.size, size=(stop - start, differences.size))
        means[start:stop] = differences[indices].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean_difference": float(differences.mean()), "low": float(low), "high": float(high),
            "n": int(differences.size), "num_samples": int(num_samples)}


# ---------------------------------------------------------------------------------------------------------
# Win rates
# ---------------------------------------------------------------------------------------------------------

def pairwise_preferences(scores_a: Sequence[float], scores_b: Sequence[float],
                         tie_margin: float = 0.0) -> np.ndarray:
    """Per-prompt outcome of A against B from two scores: 1 (A wins), 0.5 (tie) or 0 (B wins).

    A wins when ``score_a - score_b > tie_margin``, loses when it is ``< -tie_margin``, and ties otherwise.

    Args:
        scores_a (`Sequence[float]` of length `N`): a score per prompt of A's response (e.g. a reward-model
            score).
        scores_b (`Sequence[float]` of length `N`): the same prompts, in the same order, for B's response.
        tie_margin (`float`): score differences within ``[-tie_margin, tie_margin]`` are ties (score units),
            >= 0.

    Returns:
        `np.ndarray` of shape `(N,)`, values in {0, 0.5, 1}: the ``preference`` of
        `length_controlled_win_rate`.

    Raises:
        ValueError: when the two sequences differ in length, are empty or not finite, or ``tie_margin < 0``.
    """
    a, b = _paired(scores_a, scores_b, "scores_a", "scores_b")
    if not tie_margin >= 0:
        raise ValueError(f"tie_margin must be >= 0 (a score difference), got {tie_margin}")
    difference = a - b
    return np.where(difference > tie_margin, 1.0, np.where(difference < -tie_margin, 0.0, 0.5))


def win_rate(scores_a: Sequence[float], scores_b: Sequence[float], tie_margin: float = 0.0) -> dict:
    """Win rate of A over B on the same prompts, a tie counting as half a win, with a 95% Wilson interval.

    The interval is the Wilson interval of ``wins + ties / 2`` successes in ``n`` trials. A tie is a sure 0.5,
    so the per-prompt outcome's variance (``E[x^2] - p^2`` with ``E[x^2] = (wins + ties/4)/n``) is at most the
    Bernoulli variance ``p(1 - p)`` that Wilson assumes: with ties the interval is conservative, without ties
    it is the usual binomial interval. We prefer it to AlpacaEval's standard error (normal approximation on
    the outcomes {1, 0.5, 0}) because at small ``n`` or a win rate near 0 or 1 the normal interval
    under-covers or collapses to a point (all wins gives [1, 1]); Wilson stays inside [0, 1] without clipping.

    Args:
        scores_a (`Sequence[float]` of length `N`): per-prompt scores of A's responses (reward-model scores,
            judge scores, ...).
        scores_b (`Sequence[float]` of length `N`): the same prompts, in the same order, for B.
        tie_margin (`float`): score differences within ``[-tie_margin, tie_margin]`` are ties (score units),
            >= 0.

    Returns:
        dict with ``wins``, ``ties``, ``losses``, ``n`` (counts of prompts), ``win_rate``
        (``(wins + ties/2)/n``, in [0, 1]), ``low`` and ``high`` (the 95% interval).

    Raises:
        ValueError: when the two sequences differ in length, are empty or not finite, or ``tie_margin < 0``.

    Source: ties as half a win as in AlpacaEval (Li et al. 2023, https://github.com/tatsu-lab/alpaca_eval,
    ``metrics/winrate.py``) and Chatbot Arena, whose Bradley-Terry fit counts a tie as half a win for each
    side (Chiang et al. 2024, https://huggingface.co/papers/2403.04132); interval: Wilson 1927 (see
    `wilson_interval`).
    """
    outcomes = pairwise_preferences(scores_a, scores_b, tie_margin)
    wins, ties = int(np.sum(outcomes == 1.0)), int(np.sum(outcomes == 0.5))
    low, high = wilson_interval(wins + ties / 2, outcomes.size)
    return {"wins": wins, "ties": ties, "losses": int(outcomes.size) - wins - ties, "n": int(outcomes.size),
            "win_rate": float(outcomes.mean()), "low": low, "high": high}


def _fit_soft_logistic(features: np.ndarray, targets: np.ndarray, l2_penalty: float) -> np.ndarray:
    """Coefficients minimising ``mean_i CE(targets_i, sigmoid(features_i . w)) + l2_penalty / 2 * |w|^2``.

    Newton's method with step halving: the objective is strictly convex for ``l2_penalty > 0``, so this
    converges from ``w = 0``. A soft target ``t`` is the same loss as AlpacaEval's two copies of the row,
    labelled 1 and 0 with weights ``t`` and ``1 - t``.
    """
    n, d = features.shape

    def objective(w):
        z = features @ w
        # log(1 + e^z) - t z, the soft-label cross-entropy in a form that cannot overflow
        return float(np.mean(np.logaddexp(0.0, z) - targets * z) + l2_penalty / 2 * w @ w)

    w = np.zeros(d)
    current = objective(w)
    for _ in range(200):
        p = 0.5 * (1.0 + np.tanh(0.5 * (features @ w)))  # sigmoid without overflow warnings
        gradient = features.T @ (p - targets) / n + l2_penalty * w
        hessian = (features * (p * (1 - p))[:, None]).T @ features / n + l2_penalty * np.eye(d)
        step = np.linalg.solve(hessian, gradient)
        scale = 1.0
        while objective(w - scale * step) > current and scale > 1e-10:
            scale /= 2
        w = w - scale * step
        previous, current = current, objective(w)
        if np.max(np.abs(scale * step)) < 1e-12 or previous - current < 1e-15:
            break
    return w


def length_controlled_win_rate(preference: Sequence[float], length_a: Sequence[float],
                               length_b: Sequence[float], l2_penalty: float = 1e-6) -> dict:
    """AlpacaEval 2.0's length-controlled win rate of A over B: the win rate predicted for equal lengths.

    Fits the logistic regression
    ``P(A preferred) = sigmoid(bias + length_coefficient * tanh((len_a - len_b) / std(len_a - len_b)))``
    (``std`` the sample standard deviation over prompts, ddof=1, as pandas' in AlpacaEval) to the per-prompt
    preferences by maximum likelihood with soft labels (a tie, 0.5, contributes half a win and half a loss),
    then reports ``sigmoid(bias)``: the preference predicted when the length difference is zero. The fit is
    Newton's method in numpy rather than scikit-learn: soft labels need no duplicated, weighted rows, and it
    converges to 1e-12 where sklearn's solvers stop at their tolerance (the tests check it against sklearn's
    `LogisticRegression` on AlpacaEval's duplicated rows).

    How this differs from Dubois et al. 2024 (Eq. 1-2) and alpaca_eval's ``length_controlled_v1`` GLM
    (``src/alpaca_eval/metrics/glm_winrate.py``): (1) no instruction term ``(psi_m - psi_b) gamma_x``:
    AlpacaEval uses an instruction difficulty ``gamma_x`` pre-fitted over many models on its 805 instructions,
    which our eval sets do not have; so the LC win rate is ``sigmoid(bias)`` instead of an average over
    instructions; (2) one pair of models (A against one baseline B), so ``bias`` plays the part of
    ``theta_m - theta_b``; (3) no cross-validated L1 penalty and no "gamed baseline" rows weighted 0.2
    (AlpacaEval's guard against truncation attacks), only a tiny L2 penalty that keeps the fit finite when the
    length term separates the outcomes (e.g. the longer response always wins: then no maximum-likelihood fit
    exists, ``length_coefficient`` grows as the penalty shrinks and the LC win rate depends, weakly, on the
    penalty; a large ``length_coefficient`` is the sign of it). Lengths are in whatever unit the caller gives
    (AlpacaEval counts characters). The sign convention (``len_a - len_b``; AlpacaEval has baseline minus
    model) only flips the sign of ``length_coefficient``.

    Args:
        preference (`Sequence[float]` of length `N`): per prompt, 1 when A is preferred, 0 when B is, 0.5 for
            a tie (any value in [0, 1] is taken as a soft label), e.g. from `pairwise_preferences`. N >= 2.
        length_a (`Sequence[float]` of length `N`): length of A's response per prompt (characters or tokens).
        length_b (`Sequence[float]` of length `N`): length of B's response on the same prompts, same unit.
        l2_penalty (`float`): ``lambda`` of the penalty ``lambda / 2 * (bias^2 + length_coefficient^2)`` added
            to the mean cross-entropy, > 0. The default 1e-6 moves a well-posed fit by about 1e-5 in win rate.

    Returns:
        dict with ``length_controlled_win_rate`` (``sigmoid(bias)``, in [0, 1]), ``win_rate`` (the raw mean
        preference, for comparison), ``bias`` and ``length_coefficient`` (the fitted coefficients, in logits)
        and ``n``. When all length differences are equal the length term is a constant that cannot be told
        apart from the bias: it is dropped (``length_coefficient = 0``) and the LC win rate is the penalised
        raw win rate.

    Raises:
        ValueError: when the three sequences differ in length, hold fewer than 2 prompts, a preference outside
            [0, 1], a negative or non-finite length, or ``l2_penalty <= 0``.

    Source: Dubois, Galambosi, Liang & Hashimoto 2024, "Length-Controlled AlpacaEval: A Simple Way to Debias
    Automatic Evaluators", https://huggingface.co/papers/2404.04475, Eq. 1 (the GLM) and Eq. 2 (LC win rate).
    """
    p = _as_vector(preference, "preference")
    len_a, len_b = _paired(length_a, length_b, "length_a", "length_b")
    if p.shape != len_a.shape:
        raise ValueError(f"preference has {p.size} values but the lengths have {len_a.size}; pass one per "
                         "prompt")
    if p.size < 2:
        raise ValueError("length_controlled_win_rate needs at least 2 prompts (the length difference is "
                         "scaled by its standard deviation)")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("preference must lie in [0, 1] (1: A preferred, 0: B preferred, 0.5: tie)")
    if np.any(len_a < 0) or np.any(len_b < 0):
        raise ValueError("lengths must be >= 0")
    if not l2_penalty > 0:
        raise ValueError(f"l2_penalty must be > 0 (it keeps a separable fit finite), got {l2_penalty}")
    delta = len_a - len_b
    scale = float(np.std(delta, ddof=1))
    if scale > 0:
        features = np.stack([np.ones_like(delta), np.tanh(delta / scale)], axis=1)
        bias, length_coefficient = _fit_soft_logistic(features, p, l2_penalty)
    else:
        (bias,), length_coefficient = _fit_soft_logistic(np.ones((p.size, 1)), p, l2_penalty), 0.0
    return {"length_controlled_win_rate": float(1 / (1 + math.exp(-bias))), "win_rate": float(p.mean()),
            "bias": float(bias), "length_coefficient": float(length_coefficient), "n": int(p.size)}


# ---------------------------------------------------------------------------------------------------------
# Diversity
# ---------------------------------------------------------------------------------------------------------

def _texts(texts: Sequence[str], name: str = "texts") -> list[str]:
    if isinstance(texts, str):
        raise ValueError(f"{name} must be a sequence of strings, got one string; wrap it in a list")
    texts = list(texts)
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"{name}[{index}] is a {type(text).__name__}, not a string")
    return texts


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n: the number of distinct n-grams over all texts divided by the total number of n-grams.

    Tokens are whitespace-separated words (``str.split()``: case and punctuation kept, no normalisation), and
    n-grams do not cross text boundaries. Li et al. divide by the total number of generated *words*; we divide
    by the total number of *n-grams*, as most implementations do, so that the value lies in [0, 1] for every
    ``n`` (the two agree for n = 1).

    Args:
        texts (`Sequence[str]` of length `N`): the generated responses, e.g. one per held-out prompt.
        n (`int`): n-gram order, >= 1.

    Returns:
        `float` in [0, 1]; 0.0 when no text has ``n`` tokens (no n-gram at all: nothing to be diverse about).

    Raises:
        ValueError: when ``texts`` is empty or not a sequence of strings, or ``n < 1``.

    Source: Li, Galley, Brockett, Gao & Dolan 2016, "A Diversity-Promoting Objective Function for Neural
    Conversation Models", NAACL, https://huggingface.co/papers/1510.03055 (distinct-1 and distinct-2).
    """
    texts = _texts(texts)
    if not texts:
        raise ValueError("distinct_n needs at least one text")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    unique, total = set(), 0
    for text in texts:
        tokens = text.split()
        grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
        unique.update(grams)
        total += len(grams)
    return len(unique) / total if total else 0.0


def self_bleu(texts: Sequence[str]) -> float:
    """Self-BLEU: the mean sentence BLEU of each text against all the other texts as references (higher means
    less diverse).

    Each text is the hypothesis once, with the other ``N - 1`` texts as its references, scored with
    sacrebleu's `sentence_bleu` defaults: BLEU-4, ``13a`` tokenisation, case-sensitive, ``exp`` smoothing,
    effective order, brevity penalty against the closest reference length. Texygen uses NLTK's
    ``sentence_bleu`` (word_tokenize, smoothing method 1) and samples at most 500 texts; scores are close but
    not identical, so compare self-BLEU values only within one implementation. Cost is ``O(N^2)`` n-gram
    counting (about a second for N = 250).

    Args:
        texts (`Sequence[str]` of length `N`): the generated responses, N >= 2.

    Returns:
        `float` in [0, 1] (sacrebleu's 0-100 score divided by 100, Texygen's scale).

    Raises:
        ValueError: when fewer than 2 texts are given (a text needs another as its reference) or an item is
            not a string.

    Source: Zhu, Lu, Zheng, Guo, Zhang, Wang & Yu 2018, "Texygen: A Benchmarking Platform for Text Generation
    Models", SIGIR, https://huggingface.co/papers/1802.01886 (the Self-BLEU metric); BLEU: Papineni et al.
    2002; sacrebleu: Post 2018, https://github.com/mjpost/sacrebleu.
    """
    import sacrebleu

    texts = _texts(texts)
    if len(texts) < 2:
        raise ValueError(f"self_bleu needs at least 2 texts (each is scored against the others), got "
                         f"{len(texts)}")
    scores = [sacrebleu.sentence_bleu(text, texts[:i] + texts[i + 1:]).score for i, text in enumerate(texts)]
    return float(np.mean(scores) / 100)


# ---------------------------------------------------------------------------------------------------------
# Perplexity
# ---------------------------------------------------------------------------------------------------------

def _completion_messages(completion, index: int) -> list[dict[str, str]]:
    if isinstance(completion, str):
        return [{"role": "assistant", "content": completion}]
    if isinstance(completion, list) and all(isinstance(m, dict) and "content" in m for m in completion):
        return list(completion)
    raise ValueError(f"completions[{index}] must be a string or a list of messages, got "
                     f"{type(completion).__name__}")


def _example_ids(tokenizer, prompt, completion, index: int) -> tuple[list[int], int]:
    """``(ids, completion_start)``: the token ids of prompt + completion and where the completion starts.

    Tokenised as TRL 1.16's `SFTTrainer` tokenises prompt-completion data, so the tokens scored here are those
    SFT trains on (``completion_only_loss``): conversational prompts through the chat template (the prompt
    with the generation prompt, then prompt + completion; the template's end-of-turn tokens are completion
    tokens), string prompts as plain text with the EOS token appended to the completion.
    """
    if isinstance(prompt, str):
        if not isinstance(completion, str):
            raise ValueError(f"prompts[{index}] is a string, so completions[{index}] must be a string too")
        eos = tokenizer.eos_token or ""
        text = completion if completion.endswith(eos) else completion + eos
        prompt_ids = list(tokenizer(text=prompt)["input_ids"])
        ids = list(tokenizer(text=prompt + text)["input_ids"])
    elif isinstance(prompt, (list, tuple)):
        messages = list(prompt)
        prompt_ids = list(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True,
                                                        return_dict=True)["input_ids"])
        conversation = messages + _completion_messages(completion, index)
        ids = list(tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"])
    else:
        raise ValueError(f"prompts[{index}] must be a string or a list of messages, got "
                         f"{type(prompt).__name__}")
    # As TRL: the completion starts where the two tokenisations diverge (a template may render the prompt
    # alone differently, or tokens may merge across the boundary).
    start = 0
    while start < min(len(prompt_ids), len(ids)) and prompt_ids[start] == ids[start]:
        start += 1
    start = max(start, 1)  # the first token has no prediction
    if start >= len(ids):
        raise ValueError(f"completions[{index}] has no tokens after its prompt; perplexity needs a non-empty "
                         "completion")
    return ids, start


@torch.no_grad()
def perplexity(model, tokenizer, prompts: Sequence, completions: Sequence, batch_size: int = 8) -> dict:
    """Token-weighted perplexity of reference completions given their prompts: ``exp(total NLL / tokens)``,
    over completion tokens only (prompt tokens are context, not scored).

    Every completion token of every example has the same weight (a corpus-level mean, not a mean of
    per-example perplexities). The tokens are those TRL's `SFTTrainer` trains on with ``completion_only_loss``
    (see `_example_ids`), so on the SFT eval split ``mean_nll`` is the SFT eval loss up to truncation
    (``max_length``) and batch weighting. Sequences are right-padded in batches of ``batch_size``;
    log-probabilities are computed in float32 whatever the model's dtype. No truncation: a sequence longer
    than the model's context is an error of the model's forward pass.

    Args:
        model (`transformers.PreTrainedModel`): a causal LM, on any device.
        tokenizer (`transformers.PreTrainedTokenizerBase`): its tokenizer, with a chat template for
            conversational prompts and a pad token (`open_rlhf.models.load_tokenizer` guarantees both).
        prompts (`Sequence` of length `N`): each a list of messages (conversational, formatted with the chat
            template) or a string (plain text).
        completions (`Sequence` of length `N`): the reference completion of each prompt: a string (the
            assistant message for a conversational prompt) or a list of assistant messages.
        batch_size (`int`): sequences per forward pass, >= 1.

    Returns:
        dict with ``perplexity`` (``exp(mean_nll)``), ``mean_nll`` (nats per completion token) and
        ``num_tokens`` (completion tokens scored).

    Raises:
        ValueError: when the sequences are empty or differ in length, ``batch_size < 1``, a prompt or
            completion has the wrong type, or a completion has no tokens.

    Source: perplexity of held-out text, e.g. Jelinek et al. 1977, "Perplexity - a measure of the difficulty
    of speech recognition tasks", JASA 62(S1); the completion-only mask of TRL's SFTTrainer (TRL 1.16).
    """
    if len(prompts) != len(completions) or not len(prompts):
        raise ValueError(f"need one completion per prompt and at least one prompt, got {len(prompts)} "
                         f"prompts and {len(completions)} completions")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    examples = [_example_ids(tokenizer, prompt, completion, i)
                for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True))]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.eval()
    total_nll, num_tokens = 0.0, 0
    for begin in range(0, len(examples), batch_size):
        batch = examples[begin:begin + batch_size]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        scored = torch.zeros((len(batch), width), dtype=torch.bool)  # completion tokens
        for row, (ids, start) in enumerate(batch):
            input_ids[row, :len(ids)] = torch.tensor(ids)
            attention_mask[row, :len(ids)] = 1
            scored[row, start:len(ids)] = True
        input_ids, attention_mask = input_ids.to(model.device), attention_mask.to(model.device)
        # (B, T-1, V) in float32: a bf16 log-softmax over V would round the NLL
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")
        mask = scored[:, 1:].to(nll.device)
        total_nll += float(nll[mask].double().sum())
        num_tokens += int(mask.sum())
    mean_nll = total_nll / num_tokens
    return {"perplexity": math.exp(mean_nll), "mean_nll": mean_nll, "num_tokens": num_tokens}
