"""open_rlhf.metrics against hand-computed values (the arithmetic is in each docstring) and, where one exists,
an independent reference (scipy's binomtest, scikit-learn's LogisticRegression, a token-by-token NLL loop)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from open_rlhf import metrics

Z = 1.959963984540054  # Phi^-1(0.975); Z^2 = 3.841459


def test_z_is_the_95_percent_normal_quantile():
    assert metrics.Z_95 == pytest.approx(Z, abs=1e-12)


def test_wilson_interval_8_of_10():
    """p = 0.8, n = 10, Z^2/n = 0.384146:
    center = (0.8 + 0.192073) / 1.384146 = 0.716740
    half   = (1.959964 / 1.384146) * sqrt(0.8 * 0.2 / 10 + 3.841459 / 400) = 1.416010 * 0.160011 = 0.226578
    -> (0.490162, 0.943318)."""
    low, high = metrics.wilson_interval(8, 10)
    assert (low, high) == pytest.approx((0.490162, 0.943318), abs=1e-6)


def test_accuracy_interval_all_correct_is_not_a_point():
    """10 of 10: center +- half with p = 1 gives low = 1 / (1 + Z^2/n) = 10 / 13.841459 = 0.722467, high = 1
    (the normal approximation would give [1, 1])."""
    mean, low, high = metrics.accuracy_interval([True] * 10)
    assert mean == 1.0 and high == 1.0
    assert low == pytest.approx(0.722467, abs=1e-6)
    assert metrics.accuracy_interval([1] * 8 + [0] * 2) == pytest.approx((0.8, 0.490162, 0.943318), abs=1e-6)


def test_accuracy_interval_matches_scipy_wilson():
    scipy_stats = pytest.importorskip("scipy.stats")
    ci = scipy_stats.binomtest(37, 64).proportion_ci(confidence_level=0.95, method="wilson")
    _, low, high = metrics.accuracy_interval([1] * 37 + [0] * 27)
    assert (low, high) == pytest.approx((ci.low, ci.high), abs=1e-9)


@pytest.mark.parametrize("bad", [[], [0, 2], [0.5, 1], [float("nan")]])
def test_accuracy_interval_rejects_non_binary(bad):
    with pytest.raises(ValueError):
        metrics.accuracy_interval(bad)


def test_win_rate_counts_ties_as_half():
    """Differences a - b = [1, 0, -2, 3]: wins 2, ties 1, losses 1; win rate (2 + 0.5) / 4 = 0.625.
    Wilson of 2.5 successes in n = 4 (Z^2/n = 0.960365):
    center = (0.625 + 0.480182) / 1.960365 = 0.563764
    half   = (1.959964 / 1.960365) * sqrt(0.625 * 0.375 / 4 + 3.841459 / 64) = 0.999796 * 0.344408 = 0.344337
    -> (0.219427, 0.908101)."""
    result = metrics.win_rate([1, 2, 3, 4], [0, 2, 5, 1])
    counts = {k: result[k] for k in ("wins", "ties", "losses", "n")}
    assert counts == {"wins": 2, "ties": 1, "losses": 1, "n": 4}
    assert result["win_rate"] == 0.625
    assert (result["low"], result["high"]) == pytest.approx((0.219427, 0.908101), abs=1e-6)


def test_win_rate_tie_margin():
    """tie_margin = 1: a difference of exactly +-1 is a tie. [1, 0, -2, 3] -> wins 1 (3), ties 2 (1, 0),
    losses 1 (-2): (1 + 2 / 2) / 4 = 0.5."""
    result = metrics.win_rate([1, 2, 3, 4], [0, 2, 5, 1], tie_margin=1.0)
    assert (result["wins"], result["ties"], result["losses"], result["win_rate"]) == (1, 2, 1, 0.5)
    assert 0.0 <= result["low"] < 0.5 < result["high"] <= 1.0


def test_win_rate_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="one value per prompt"):
        metrics.win_rate([1, 2], [1])
    with pytest.raises(ValueError, match="tie_margin"):
        metrics.win_rate([1], [1], tie_margin=-1)


def _cells(n_long: int, long_wins: int, n_short: int, short_wins: int, short_ties: int = 0):
    """Preferences and lengths for prompts where A is 1 character longer (n_long of them) or shorter.

    With only two values of the length difference the GLM (bias + slope) is saturated: it fits each cell's
    mean preference exactly, sigmoid(bias + phi c) = p_long and sigmoid(bias - phi c) = p_short, so
    bias = (logit p_long + logit p_short) / 2."""
    preference = ([1.0] * long_wins + [0.0] * (n_long - long_wins)
                  + [1.0] * short_wins + [0.5] * short_ties + [0.0] * (n_short - short_wins - short_ties))
    length_a = [11] * n_long + [10] * n_short
    length_b = [10] * n_long + [11] * n_short
    return preference, length_a, length_b


def test_length_controlled_win_rate_without_length_effect_is_the_win_rate():
    """A wins 70% whether longer (14 of 20) or shorter (7 of 10): bias = (logit .7 + logit .7) / 2 = logit .7,
    so the LC win rate is sigmoid(logit .7) = 0.7 = the raw win rate 21 / 30, and the length slope is 0."""
    result = metrics.length_controlled_win_rate(*_cells(20, 14, 10, 7))
    assert result["win_rate"] == pytest.approx(0.7)
    assert result["length_controlled_win_rate"] == pytest.approx(0.7, abs=1e-4)
    assert result["length_coefficient"] == pytest.approx(0.0, abs=1e-4)


def test_length_controlled_win_rate_removes_a_length_effect():
    """A is longer on 16 prompts and wins 12 (0.75), shorter on 4 and wins 1 (0.25): raw win rate
    13 / 20 = 0.65. bias = (logit .75 + logit .25) / 2 = (ln 3 - ln 3) / 2 = 0 -> LC win rate 0.5: A only won
    by being longer."""
    result = metrics.length_controlled_win_rate(*_cells(16, 12, 4, 1))
    assert result["win_rate"] == pytest.approx(0.65)
    assert result["length_controlled_win_rate"] == pytest.approx(0.5, abs=1e-4)
    assert result["length_coefficient"] > 0


def test_length_controlled_win_rate_with_ties():
    """Longer on 10 prompts, 8 wins (0.8); shorter on 4: 1 win, 2 ties, 1 loss (mean 0.5). Raw
    (8 + 1 + 1) / 14. bias = (logit .8 + logit .5) / 2 = (ln 4 + 0) / 2 = ln 2 -> LC = sigmoid(ln 2)
    = 2 / 3."""
    result = metrics.length_controlled_win_rate(*_cells(10, 8, 4, 1, short_ties=2))
    assert result["win_rate"] == pytest.approx(10 / 14)
    assert result["length_controlled_win_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert result["bias"] == pytest.approx(math.log(2), abs=1e-3)


def test_length_controlled_win_rate_longer_always_wins():
    """A is longer on 16 of 20 prompts and wins exactly those: raw win rate 0.8, but the length term separates
    the outcomes, so the LC win rate is well below it (and stays above 0.5: 16 vs 4 is still some
    evidence)."""
    result = metrics.length_controlled_win_rate(*_cells(16, 16, 4, 0))
    assert result["win_rate"] == pytest.approx(0.8)
    assert 0.5 < result["length_controlled_win_rate"] < 0.7
    assert result["length_coefficient"] > 5  # the sign of a separable fit


def test_length_controlled_win_rate_is_symmetric():
    """Swapping A and B (preference -> 1 - preference) gives 1 - the LC win rate (Dubois et al.'s
    symmetry)."""
    rng = np.random.default_rng(0)
    length_a, length_b = rng.integers(50, 500, 40), rng.integers(50, 500, 40)
    preference = (rng.random(40) < 0.3 + 0.4 * (length_a > length_b)).astype(float)
    forward = metrics.length_controlled_win_rate(preference, length_a, length_b)
    backward = metrics.length_controlled_win_rate(1 - preference, length_b, length_a)
    total = forward["length_controlled_win_rate"] + backward["length_controlled_win_rate"]
    assert total == pytest.approx(1, abs=1e-9)


def test_length_controlled_win_rate_matches_sklearn_on_duplicated_rows():
    """The reference: AlpacaEval's fit, each prompt twice (label 1 with weight p, label 0 with weight 1 - p),
    with sklearn's L2 objective 0.5 |w|^2 + C sum(weight * loss) = n C (mean CE + |w|^2 / (2 n C)):
    C = 1 / (lambda n)."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(1)
    n, l2_penalty = 60, 1e-3
    length_a, length_b = rng.integers(20, 800, n), rng.integers(20, 800, n)
    preference = rng.choice([0.0, 0.5, 1.0], size=n, p=[0.35, 0.15, 0.5])
    ours = metrics.length_controlled_win_rate(preference, length_a, length_b, l2_penalty=l2_penalty)

    delta = (length_a - length_b).astype(float)
    features = np.stack([np.ones(n), np.tanh(delta / delta.std(ddof=1))], axis=1)
    model = linear_model.LogisticRegression(C=1 / (l2_penalty * n), fit_intercept=False, tol=1e-12,
                                            max_iter=10_000)
    model.fit(np.concatenate([features, features]), np.concatenate([np.ones(n), np.zeros(n)]),
              sample_weight=np.concatenate([preference, 1 - preference]))
    assert (ours["bias"], ours["length_coefficient"]) == pytest.approx(tuple(model.coef_[0]), abs=1e-5)


def test_length_controlled_win_rate_equal_length_differences():
    """All differences equal: the length term is a constant, dropped; LC = the raw win rate 3 / 4."""
    result = metrics.length_controlled_win_rate([1, 1, 0, 1], [5, 6, 7, 8], [4, 5, 6, 7])
    assert result["length_coefficient"] == 0.0
    assert result["length_controlled_win_rate"] == pytest.approx(0.75, abs=1e-4)


def test_length_controlled_win_rate_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        metrics.length_controlled_win_rate([1], [1], [2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.length_controlled_win_rate([2, 0], [1, 2], [2, 1])
    with pytest.raises(ValueError, match="one per prompt"):
        metrics.length_controlled_win_rate([1, 0, 1], [1, 2], [2, 1])


def test_mcnemar_exact_p_values():
    """a = [1, 1, 1, 0, 1], b = [0, 0, 1, 0, 0]: A-only 3, B-only 0; p = 2 * C(3, 0) / 2^3 = 0.25.
    8 vs 2 discordant: p = 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 2 * 56 / 1024 = 0.109375.
    1 vs 1: 2 * (1 + 2) / 4 = 1.5 -> capped at 1. No discordant prompt: p = 1."""
    result = metrics.mcnemar_test([1, 1, 1, 0, 1], [0, 0, 1, 0, 0])
    assert (result["a_only"], result["b_only"], result["n"]) == (3, 0, 5)
    assert result["p_value"] == 0.25 and result["accuracy_difference"] == pytest.approx(0.6)
    assert metrics.mcnemar_test([1] * 8 + [0] * 2, [0] * 8 + [1] * 2)["p_value"] == 0.109375
    assert metrics.mcnemar_test([1, 0], [0, 1])["p_value"] == 1.0
    assert metrics.mcnemar_test([1, 0, 1], [1, 0, 1])["p_value"] == 1.0


def test_mcnemar_matches_scipy_binomtest():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(2)
    a, b = rng.random(200) < 0.6, rng.random(200) < 0.5
    result = metrics.mcnemar_test(a, b)
    reference = scipy_stats.binomtest(result["a_only"], result["a_only"] + result["b_only"], 0.5).pvalue
    assert result["p_value"] == pytest.approx(reference, rel=1e-12)


def test_mcnemar_rejects_different_prompt_counts():
    with pytest.raises(ValueError, match="same prompts"):
        metrics.mcnemar_test([1, 0], [1])


def test_paired_bootstrap_two_prompts():
    """Differences [0, 1]: a resample of 2 prompts has mean 0, 0.5 or 1 with probability 1/4, 1/2, 1/4, so
    with 10,000 resamples ~2,500 are 0 and ~2,500 are 1: the 2.5th percentile is 0 and the 97.5th is 1."""
    result = metrics.paired_bootstrap([1.0, 3.0], [1.0, 2.0], num_samples=10_000, seed=0)
    assert result["mean_difference"] == 0.5
    assert (result["low"], result["high"]) == (0.0, 1.0)


def test_paired_bootstrap_constant_difference_and_seed():
    result = metrics.paired_bootstrap([3.0, 4.0, 5.0], [1.0, 2.0, 3.0], num_samples=200)
    assert (result["mean_difference"], result["low"], result["high"]) == pytest.approx((2.0, 2.0, 2.0))
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=50), rng.normal(size=50)
    assert metrics.paired_bootstrap(a, b, 500, seed=7) == metrics.paired_bootstrap(a, b, 500, seed=7)
    assert metrics.paired_bootstrap(a, b, 500, seed=7) != metrics.paired_bootstrap(a, b, 500, seed=8)


def test_paired_bootstrap_agrees_with_the_normal_interval_for_large_n():
    """n = 2,000 differences: the bootstrap interval approaches mean +- 1.96 * sd / sqrt(n) (sd with ddof=0,
    the bootstrap's plug-in); half-width here ~ 1.96 * 1 / 44.7 = 0.044."""
    rng = np.random.default_rng(4)
    a, b = rng.normal(0.3, 1.0, 2000), rng.normal(0.0, 0.1, 2000)
    result = metrics.paired_bootstrap(a, b, num_samples=4000, seed=0)
    d = a - b
    half = Z * d.std() / math.sqrt(d.size)
    assert result["low"] == pytest.approx(d.mean() - half, abs=0.1 * half)
    assert result["high"] == pytest.approx(d.mean() + half, abs=0.1 * half)


def test_paired_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="one value per prompt"):
        metrics.paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="num_samples"):
        metrics.paired_bootstrap([1.0], [1.0], num_samples=0)


def test_distinct_n_by_hand():
    """["a b a b", "a b c"]: bigrams (a,b) (b,a) (a,b) | (a,b) (b,c): 3 distinct of 5 = 0.6;
    unigrams: a b a b a b c: 3 distinct of 7."""
    assert metrics.distinct_n(["a b a b", "a b c"], 2) == pytest.approx(0.6)
    assert metrics.distinct_n(["a b a b", "a b c"], 1) == pytest.approx(3 / 7)


def test_distinct_n_does_not_cross_texts():
    """["a b", "a b"], n = 2: (a,b) twice -> 1 / 2 (joined, (b,a) would make it 2 / 3); texts shorter than n
    give no n-gram -> 0."""
    assert metrics.distinct_n(["a b", "a b"], 2) == 0.5
    assert metrics.distinct_n(["a", "b"], 2) == 0.0


def test_distinct_n_rejects_bad_input():
    for texts, n in (([], 1), (["a b"], 0), ("a b", 1), ([1, 2], 1)):
        with pytest.raises(ValueError):
            metrics.distinct_n(texts, n)


def test_self_bleu_by_hand():
    """Two texts "a b c d" / "a b c e", each the other's reference (sacrebleu sentence_bleu, exp smoothing):
    1-gram 3/4, 2-gram 2/3, 3-gram 1/2, 4-gram 0/1 -> exp smoothing 1 / (2 * 1) = 1/2; brevity penalty 1
    (4 vs 4 tokens): BLEU = (3/4 * 2/3 * 1/2 * 1/2)^(1/4) = (1/8)^(1/4) = 0.594604 for both.
    Add "w x y z": it matches no unigram of its references -> 0, while each of the first two still has the
    other among its references -> (0.594604 + 0.594604 + 0) / 3 = 0.396402 (a text is never its own reference,
    which would give 1)."""
    assert metrics.self_bleu(["a b c d", "a b c e"]) == pytest.approx(0.125 ** 0.25, abs=1e-6)
    three = metrics.self_bleu(["a b c d", "a b c e", "w x y z"])
    assert three == pytest.approx(2 * 0.125 ** 0.25 / 3, abs=1e-6)
    assert metrics.self_bleu(["the cat sat on the mat"] * 3) == pytest.approx(1.0)


def test_self_bleu_needs_two_texts():
    with pytest.raises(ValueError, match="at least 2"):
        metrics.self_bleu(["only one"])


# ---------------------------------------------------------------------------------------------------------
# Perplexity on a tiny random Llama with the real SmolLM2 tokenizer
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def _reference_nll(model, ids: list[int], start: int) -> tuple[float, int]:
    """Sum over t >= start of -log softmax(logits[t - 1])[ids[t]], one unpadded sequence, token by token."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    total = 0.0
    for t in range(start, len(ids)):
        total -= torch.log_softmax(logits[t - 1], dim=-1)[ids[t]].item()
    return total, len(ids) - start


def test_perplexity_of_conversational_completions(tiny_model, tokenizer):
    """Expected: per example, the prompt rendered with the generation prompt (P tokens) is a prefix of
    prompt + assistant turn; the completion tokens are the rest, i.e. the content then SmolLM2's "<|im_end|>"
    "\\n": "It is 4." -> It / Ġis / Ġ / 4 / . + <|im_end|> / \\n = 7 tokens; "Blue" -> Blue + <|im_end|> / \\n
    = 3 tokens.
    mean_nll = (sum of the two examples' token NLLs) / (their token count), perplexity = exp(mean_nll)."""
    prompts = [[{"role": "user", "content": "What is 2 + 2?"}],
               [{"role": "user", "content": "Name a colour of the sky on a clear day, in one word please."}]]
    completions = ["It is 4.", "Blue"]
    total, tokens = 0.0, 0
    for prompt, completion in zip(prompts, completions, strict=True):
        prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True,
                                                   return_dict=True)["input_ids"]
        ids = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": completion}],
                                            return_dict=True)["input_ids"]
        assert ids[:len(prompt_ids)] == prompt_ids
        # the masking: only the completion and the template's end of turn are scored
        end_of_turn = tokenizer(completion + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
        assert ids[len(prompt_ids):] == end_of_turn
        nll, count = _reference_nll(tiny_model, ids, len(prompt_ids))
        total, tokens = total + nll, tokens + count

    for batch_size in (1, 2):  # 2: the shorter sequence is right-padded
        result = metrics.perplexity(tiny_model, tokenizer, prompts, completions, batch_size=batch_size)
        assert result["num_tokens"] == tokens == 7 + 3
        assert result["mean_nll"] == pytest.approx(total / tokens, rel=1e-5)
        assert result["perplexity"] == pytest.approx(math.exp(total / tokens), rel=1e-4)


def test_perplexity_of_plain_text_appends_eos(tiny_model, tokenizer):
    """A string prompt is plain text (no chat template) and the completion gets the EOS token, as TRL's SFT
    does: scored tokens = tokens of "Q: 2+2=" + " 4<|im_end|>" after those of "Q: 2+2="."""
    prompt, completion = "Q: 2+2=", " 4"
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = tokenizer(prompt + completion + tokenizer.eos_token)["input_ids"]
    assert ids[:len(prompt_ids)] == prompt_ids and ids[-1] == tokenizer.eos_token_id
    nll, count = _reference_nll(tiny_model, ids, len(prompt_ids))
    result = metrics.perplexity(tiny_model, tokenizer, [prompt], [completion])
    assert result["num_tokens"] == count
    assert result["mean_nll"] == pytest.approx(nll / count, rel=1e-5)


def test_perplexity_rejects_bad_input(tiny_model, tokenizer):
    with pytest.raises(ValueError, match="one completion per prompt"):
        metrics.perplexity(tiny_model, tokenizer, ["a"], [])
    with pytest.raises(ValueError, match="must be a string too"):
        metrics.perplexity(tiny_model, tokenizer, ["a"], [[{"role": "assistant", "content": "b"}]])
