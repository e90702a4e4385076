"""Iterative refinement (open_rlhf.inference.refine) on a tiny random model: what the refine prompt holds, stopping
as soon as the judge accepts, the kept answer, token counts over rounds, and the `refine` strategy of generate.py."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from open_rlhf import models
from open_rlhf.errors import ConfigError
from open_rlhf.inference import refine, run, sampling

PROMPTS = ["What is 2 + 3?", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
           "Tom has 4 bags of 3 apples. How many apples?"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, tokenizer = models.load_inference_model(str(tiny_model_dir))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return model, tokenizer


class ScheduleJudge:
    """A judge that gives prompt `i` the score ``schedule[i][r]`` in its round `r` (the prompt's `r`-th call), and
    records which prompts each call scored. The prompt index comes in through the ``index`` column."""

    def __init__(self, schedule: list[list[float]]):
        self.schedule, self.seen, self.calls = schedule, Counter(), []

    def __call__(self, prompts, completions, index, **_):
        self.calls.append(list(index))
        scores = []
        for i in index:
            scores.append(self.schedule[i][self.seen[i]])
            self.seen[i] += 1
        return scores


def test_refine_prompt_holds_the_question_the_previous_answer_and_the_feedback(tiny):
    model, tokenizer = tiny
    torch.manual_seed(0)  # sampled: the random model's greedy text is only newlines, which would prove nothing
    judge = ScheduleJudge([[0.25, 0.5, 0.5]] * 3)
    refiner = refine.IterativeRefiner(model, tokenizer, judge, max_rounds=2, threshold=1.0, critique=True,
                                      max_new_tokens=6, temperature=1.0)
    traces = refiner.trace(PROMPTS, {"index": [0, 1, 2]})
    for prompt, trace in zip(PROMPTS, traces, strict=True):
        assert len(trace.refine_prompts) == len(trace.feedback) == len(trace.critiques) == 2
        assert len(set(trace.answers)) == 3 and all(c.strip() for c in trace.critiques)
        for r, messages in enumerate(trace.refine_prompts):
            assert messages[:-2] == sampling.as_messages(prompt)  # the question's turns, system prompt kept
            assert messages[-2] == {"role": "assistant", "content": trace.answers[r]}  # the previous answer
            assert messages[-1]["role"] == "user" and trace.feedback[r] in messages[-1]["content"]
            assert messages[-1]["content"].endswith(messages[-3]["content"])  # ... and the question closes the turn
            assert f"scored this solution {trace.scores[r]:.2f}" in trace.feedback[r]  # the judge's score ...
            assert trace.critiques[r].strip() in trace.feedback[r]  # ... and the policy's own critique
    check = refine.critique_prompt(PROMPTS[1], "Blue.")
    assert check[0] == {"role": "system", "content": "Be brief."} and len(check) == 2
    assert "Name a colour." in check[1]["content"] and "Blue." in check[1]["content"]
    assert refine.feedback_text(0.5, 1.0) == ("A checker scored this solution 0.50; it accepts 1.00 or more, so it "
                                              "is not accepted.")


def test_rounds_stop_as_soon_as_the_judge_accepts(tiny):
    """Prompt 0 is accepted in round 0, prompt 1 in round 2, prompt 2 never (max_rounds=3: 4 answers)."""
    model, tokenizer = tiny
    judge = ScheduleJudge([[1.0], [0.0, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0]])
    refiner = refine.IterativeRefiner(model, tokenizer, judge, max_rounds=3, max_new_tokens=4, temperature=0)
    traces = refiner.trace(PROMPTS, {"index": [0, 1, 2]})
    assert [len(t.answers) for t in traces] == [1, 3, 4]
    assert [t.accepted for t in traces] == [True, True, False]
    assert judge.calls == [[0, 1, 2], [1, 2], [1, 2], [2]]  # an accepted prompt is never generated for again
    results = [refiner.result(t) for t in traces]
    assert [r.num_samples for r in results] == [1, 3, 4]
    assert [r.score for r in results] == [1.0, 1.0, 0.0]
    # max_rounds=0 is round 0 alone, judged
    once = refine.IterativeRefiner(model, tokenizer, ScheduleJudge([[0.0]] * 3), max_rounds=0, max_new_tokens=4,
                                   temperature=0).trace(PROMPTS, {"index": [0, 1, 2]})
    assert [len(t.answers) for t in once] == [1, 1, 1]


def test_keep_best_takes_the_highest_score_ties_to_the_earlier_and_keep_last_the_last(tiny):
    model, tokenizer = tiny
    schedule = [[0.2, 0.7, 0.7, 0.1]] * 3  # best: round 1 (round 2 ties it); last: round 3
    for keep, expected in (("best", 1), ("last", 3)):
        torch.manual_seed(0)
        refiner = refine.IterativeRefiner(model, tokenizer, ScheduleJudge(schedule), max_rounds=3, keep=keep,
                                          max_new_tokens=4, temperature=1.0)
        traces = refiner.trace(PROMPTS, {"index": [0, 1, 2]})
        for trace in traces:
            result = refiner.result(trace)
            assert len(set(trace.answers)) == 4  # sampled answers differ, so the pick is visible
            assert result.response == trace.answers[expected] and result.score == schedule[0][expected]
            assert result.candidates == trace.answers and result.scores == schedule[0]
    with pytest.raises(ValueError, match="keep must be one of"):
        refine.IterativeRefiner(model, tokenizer, ScheduleJudge(schedule), keep="first")
    with pytest.raises(ValueError, match="max_rounds must be >= 0"):
        refine.IterativeRefiner(model, tokenizer, ScheduleJudge(schedule), max_rounds=-1)


def test_token_counts_add_up_over_rounds_and_critiques(tiny, monkeypatch):
    """A stand-in policy writes ``answer r`` in round r (read off the previous answer in the refine prompt) with
    3 + 2r tokens, and 10 tokens per critique. Prompt 0 is accepted in round 1: answers 3 + 5, one critique 10 -> 18.
    Prompt 1 is never accepted (max_rounds=2): answers 3 + 5 + 7, two critiques 20 -> 35. Prompt 2 is accepted in
    round 0: 3 tokens, no critique."""
    model, tokenizer = tiny

    def policy(model, tokenizer, prompts, n, max_new_tokens, *args, **kwargs):
        assert n == 1 and max_new_tokens == 64
        out = []
        for p in prompts:
            messages = sampling.as_messages(p)
            if "Proposed solution:" in messages[-1]["content"]:
                out.append([sampling.Sample("step 1 is wrong", 10, True, True)])
                continue
            previous = [m["content"] for m in messages if m["role"] == "assistant"]
            r = int(previous[-1].split()[-1]) + 1 if previous else 0
            out.append([sampling.Sample(f"answer {r}", 3 + 2 * r, True, True)])
        return out

    monkeypatch.setattr(refine, "sample", policy)
    judge = ScheduleJudge([[0.0, 1.0], [0.0, 0.0, 0.0], [1.0]])
    refiner = refine.IterativeRefiner(model, tokenizer, judge, max_rounds=2, critique=True, max_new_tokens=64)
    traces = refiner.trace(PROMPTS, {"index": [0, 1, 2]})
    assert [t.answers for t in traces] == [["answer 0", "answer 1"], ["answer 0", "answer 1", "answer 2"], ["answer 0"]]
    assert [t.answer_tokens for t in traces] == [[3, 5], [3, 5, 7], [3]]
    assert [t.critique_tokens for t in traces] == [[10], [10, 10], []]
    assert [refiner.result(t).num_tokens for t in traces] == [18, 35, 3]


def test_the_first_answer_and_the_rewrites_use_their_own_temperature(tiny, monkeypatch):
    model, tokenizer = tiny
    seen = []

    def policy(model, tokenizer, prompts, n, max_new_tokens, temperature, *args, **kwargs):
        seen.append(temperature)
        return [[sampling.Sample("answer", 1, True, True)] for _ in prompts]

    monkeypatch.setattr(refine, "sample", policy)
    refine.IterativeRefiner(model, tokenizer, ScheduleJudge([[0.0] * 3] * 3), max_rounds=2, critique=True,
                            temperature=0.0, refine_temperature=0.7).trace(PROMPTS, {"index": [0, 1, 2]})
    assert seen == [0.0, 0.7, 0.7, 0.7, 0.7]  # answer 0; then per round a critique and a rewrite
    seen.clear()
    refine.IterativeRefiner(model, tokenizer, ScheduleJudge([[0.0] * 2] * 3), max_rounds=1,
                            temperature=0.5).trace(PROMPTS, {"index": [0, 1, 2]})
    assert seen == [0.5, 0.5]  # refine_temperature defaults to temperature


def test_token_counts_on_the_tiny_model_stay_within_the_cap(tiny):
    model, tokenizer = tiny
    torch.manual_seed(1)
    refiner = refine.IterativeRefiner(model, tokenizer, ScheduleJudge([[0.0] * 3] * 3), max_rounds=2, critique=True,
                                      max_new_tokens=7, temperature=1.0)
    for trace in refiner.trace(PROMPTS, {"index": [0, 1, 2]}):
        assert len(trace.answer_tokens) == 3 and len(trace.critique_tokens) == 2
        assert all(1 <= t <= 7 for t in trace.answer_tokens + trace.critique_tokens)
        assert refiner.result(trace).num_tokens == sum(trace.answer_tokens) + sum(trace.critique_tokens)


def test_generate_script_runs_the_refine_strategy(tiny_model_dir, tmp_path, capsys):
    """A random tiny model writes no right equation, so `arith` (the default judge) never accepts: 1 + 2 answers."""
    out = tmp_path / "rows.jsonl"
    run.generate_main(["--model", str(tiny_model_dir), "--prompts", "builtin", "--num_prompts", "2",
                       "--strategy", "refine", "--refine_rounds", "2", "--refine_critique", "--temperature", "0",
                       "--max_new_tokens", "5", "--output", str(out)])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(r["strategy"] == "refine" for r in rows)
    for r in rows:
        assert r["num_samples"] == 3 and r["scores"] == [0.0, 0.0, 0.0] and r["score"] == 0.0
        assert 5 <= r["num_tokens"] <= 5 * 5  # 3 answers and 2 critiques, 1-5 tokens each
        assert {"gold", "correct", "answer"} <= r.keys()
    assert "accuracy 0.000 (95% Wilson interval 0.000-0.658)" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--refine_rounds", "-1"], "--refine_rounds must be >= 0, got -1"),
    (["--refine_temperature", "-0.5"], r"--refine_temperature must be >= 0 \(0 = greedy\), got -0.5"),
])
def test_generate_script_refine_bad_input_is_a_clear_error(flags, message):
    with pytest.raises(ConfigError, match=message):
        run.run(run.make_parser().parse_args(["--strategy", "refine", *flags]))
