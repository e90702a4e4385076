"""Inference-time strategies (open_rlhf.inference) on tiny models: best-of-N's argmax, the votes, the stopping rule,
speculative decoding equal to plain greedy, and scripts/generate.py's rows and errors."""

from __future__ import annotations

import json

import pytest
import torch

from open_rlhf import models
from open_rlhf.errors import ConfigError, OutputDirError
from open_rlhf.inference import run, sampling, speculative, strategies

PROMPTS = ["What is 2 + 3?", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, tokenizer = models.load_inference_model(str(tiny_model_dir))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return model, tokenizer


def test_sample_gives_n_samples_per_prompt_with_their_token_counts(tiny):
    model, tokenizer = tiny
    torch.manual_seed(0)
    out = sampling.sample(model, tokenizer, PROMPTS, n=3, max_new_tokens=6, temperature=1.0, batch_size=4)
    assert [len(s) for s in out] == [3, 3]
    assert all(1 <= s.num_tokens <= 6 and (s.finished or s.num_tokens == 6) for samples in out for s in samples)
    greedy = sampling.sample(model, tokenizer, PROMPTS, n=2, max_new_tokens=6, temperature=0)
    assert all(a.text == b.text for a, b in greedy)  # greedy samples are all the same
    with pytest.raises(ValueError, match="n and max_new_tokens must be >= 1"):
        sampling.sample(model, tokenizer, PROMPTS, n=0)


def test_best_of_n_returns_the_argmax_of_the_scorer_and_passes_columns(tiny):
    model, tokenizer = tiny
    seen = {}

    def longest(prompts, completions, answer):
        seen["prompts"], seen["answer"] = prompts, answer
        return [float(len(c)) for c in completions]

    torch.manual_seed(1)
    results = strategies.best_of_n(model, tokenizer, PROMPTS, longest, n=4, max_new_tokens=8,
                                   columns={"answer": ["5", "red"]})
    assert seen["answer"] == ["5"] * 4 + ["red"] * 4 and len(seen["prompts"]) == 8
    assert seen["prompts"][0] == [{"role": "user", "content": "What is 2 + 3?"}]
    for result in results:
        assert result.num_samples == 4 and len(result.candidates) == 4
        assert result.score == max(result.scores) == len(result.response)
        assert result.response == result.candidates[result.scores.index(result.score)]  # the first maximum
    with pytest.raises(ValueError, match="column 'answer' has 1 values for 2 prompts"):
        strategies.best_of_n(model, tokenizer, PROMPTS, longest, n=2, columns={"answer": ["5"]})
    with pytest.raises(ValueError, match="returned 1 scores for 4 completions"):
        strategies.best_of_n(model, tokenizer, PROMPTS, lambda p, c: [0.0], n=2, max_new_tokens=2)


def test_majority_vote_ignores_missing_answers_and_breaks_ties_by_order():
    assert strategies.majority_vote(["3", None, "4", "4", "3"]) == ("3", 2)  # tie: the first seen
    assert strategies.majority_vote(["7", "5", "5"]) == ("5", 2)
    assert strategies.majority_vote([None, None]) == (None, 0)


def test_self_consistency_answers_with_the_majority(tiny):
    model, tokenizer = tiny

    def parity(text):  # a stand-in answer extractor with two answers
        return "odd" if len(text) % 2 else "even"

    torch.manual_seed(2)
    for result in strategies.self_consistency(model, tokenizer, PROMPTS, n=5, max_new_tokens=8, extract=parity):
        votes = [parity(c) for c in result.candidates]
        assert result.answer == max(set(votes), key=votes.count) == parity(result.response)
        assert result.score == votes.count(result.answer) / 5


def test_majority_confidence_is_the_beta_statistic():
    # Beta(v1 + 1, v2 + 1): P(p > 1/2) = 1 - 0.5 ** (v1 + 1) with v2 = 0; 1/2 for a tie
    assert strategies.majority_confidence([3]) == pytest.approx(1 - 0.5 ** 4)
    assert strategies.majority_confidence([2, 2, 1]) == pytest.approx(0.5)
    assert strategies.majority_confidence([5, 1]) == pytest.approx(1 - (7 + 1) / 128)  # I_.5(6, 2) = 8/128
    assert strategies.majority_confidence([]) == 0.0


def test_adaptive_consistency_stops_early_when_the_answers_agree(tiny):
    model, tokenizer = tiny
    agree = strategies.adaptive_consistency(model, tokenizer, PROMPTS, max_samples=8, confidence=0.8,
                                            max_new_tokens=4, extract=lambda text: "42")
    assert [r.num_samples for r in agree] == [2, 2]  # 1 - 0.5 ** 3 = 0.875 >= 0.8 after min_samples = 2
    counter = iter(range(10_000))
    spread = strategies.adaptive_consistency(model, tokenizer, PROMPTS, max_samples=6, confidence=0.8,
                                             samples_per_round=2, max_new_tokens=4,
                                             extract=lambda text: str(next(counter)))  # never agree
    assert [r.num_samples for r in spread] == [6, 6]
    with pytest.raises(ValueError, match="confidence in"):
        strategies.adaptive_consistency(model, tokenizer, PROMPTS, confidence=1.0)


def test_layer_skip_draft_shares_weights_and_leaves_the_target_whole(tiny):
    model, _ = tiny
    draft = speculative.layer_skip_draft(model, 1)
    assert len(draft.model.layers) == 1 and len(model.model.layers) == 2 and model.config.num_hidden_layers == 2
    assert draft.model.layers[0] is model.model.layers[0] and draft.lm_head is model.lm_head
    with pytest.raises(ValueError, match=r"1 <= num_layers < 2"):
        speculative.layer_skip_draft(model, 2)


@pytest.mark.parametrize("method", ["prompt_lookup", "self_speculative", "draft_model"])
def test_speculative_greedy_equals_plain_greedy(tiny, tokenizer, tmp_path, method):
    from tests.conftest import save_tiny_model

    model, tok = tiny
    draft = None
    if method == "draft_model":
        draft, _ = models.load_inference_model(str(save_tiny_model(tmp_path / "draft", tokenizer, seed=9)))
    prompt = "Repeat after me: the quick brown fox jumps over the lazy dog, the quick brown fox jumps."
    plain = speculative.generate(model, tok, prompt, "none", max_new_tokens=24)
    fast = speculative.generate(model, tok, prompt, method, max_new_tokens=24, draft=draft)
    assert torch.equal(plain.token_ids, fast.token_ids) and plain.text == fast.text
    with pytest.raises(ValueError, match="needs a draft model"):
        speculative.generate(model, tok, prompt, "draft_model")


def test_generate_script_writes_rows_with_correctness(tiny_model_dir, tmp_path):
    out = tmp_path / "rows.jsonl"
    args = run.make_parser().parse_args(["--model", str(tiny_model_dir), "--prompts", "builtin", "--num_prompts", "2",
                                         "--strategy", "best_of_n", "--n", "2", "--reward", "math",
                                         "--max_new_tokens", "6", "--output", str(out)])
    assert run.run(args) == out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and {"prompt", "response", "gold", "correct", "score", "num_tokens"} <= rows[0].keys()
    assert all(r["num_samples"] == 2 and r["strategy"] == "best_of_n" for r in rows)
    with pytest.raises(OutputDirError, match="already exists; outputs are never overwritten"):
        run.run(args)


def test_generate_script_compresses_prompts_and_keeps_the_original(tiny_model_dir, tmp_path):
    context = ("The museum opened in the spring and the visitors came from every part of the country to see the old "
               "paintings that hung in the long hall beside the river where the boats passed slowly.")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": f"{context}\n\nWhen did the museum open?"}) + "\n")
    out = tmp_path / "rows.jsonl"
    args = run.make_parser().parse_args(["--model", str(tiny_model_dir), "--prompts", str(prompts),
                                         "--strategy", "greedy", "--compress_ratio", "0.5", "--max_new_tokens", "4",
                                         "--output", str(out)])
    run.run(args)
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    original = row["prompt"][-1]["content"]
    assert original == f"{context}\n\nWhen did the museum open?"  # the row keeps the original prompt
    compressed = row["compressed_prompt"][-1]["content"]
    assert compressed.endswith("\n\nWhen did the museum open?")  # the question survives verbatim
    assert len(compressed) < 0.8 * len(original)


@pytest.mark.parametrize("flags, message", [
    (["--strategy", "best_of_n"], "needs --reward"),
    (["--compress_ratio", "0"], r"--compress_ratio is the share of prompt tokens kept, in \(0, 1\]"),
    (["--n", "0"], "--n and --max_samples must be >= 1"),
    (["--confidence", "1.5"], r"--confidence must be in \(0, 1\)"),
])
def test_generate_script_bad_input_is_a_clear_error(flags, message):
    with pytest.raises(ConfigError, match=message):
        run.run(run.make_parser().parse_args(flags))
