"""Process reward models and step-level search: step labels from a known slip, the stepwise data format, PRM
encoding and metrics, the PRM stage end to end on a tiny model, beam search, and MCTS on a toy problem with an
exact verifier (it finds the answer where greedy cannot, and more often than independent samples of the same
token budget)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from open_rlhf import data, models, stages
from open_rlhf.errors import ConfigError, DataFormatError
from open_rlhf.inference import prm as prm_lib
from open_rlhf.inference import run, search
from open_rlhf.inference.sampling import prompt_text, sample
from open_rlhf.rewards import build_reward_functions
from open_rlhf.tasks import arithmetic
from open_rlhf.trainers.prm import IGNORE_INDEX, step_metrics, tokenize_stepwise

# --------------------------------------------------------------------------------------------------------- labels


def test_slip_step_labels_mark_the_slip_and_every_step_after_it():
    solution = "A buys 3 bags of 4: 3 * 4 = 12 apples.\nWith 5 more: 12 + 5 = 17 apples.\nShe eats 2: 17 - 2 = 15.\n#### 15"
    slipped = "A buys 3 bags of 4: 3 * 4 = 12 apples.\nWith 5 more: 12 + 5 = 18 apples.\nShe eats 2: 18 - 2 = 16.\n#### 16"
    steps, labels = arithmetic.slip_step_labels(solution, slipped)
    assert steps == slipped.split("\n") and labels == [True, False, False, False]
    with pytest.raises(ValueError, match="not a slip pair"):
        arithmetic.slip_step_labels(solution, solution)


def test_builtin_stepwise_rows_follow_the_preference_pairs():
    rows = arithmetic.stepwise_dataset(20, split="train")
    pairs = arithmetic.preference_dataset(20, split="train")
    assert len(rows) == 40 and set(rows.column_names) == {"prompt", "completions", "labels", "answer"}
    for k, pair in enumerate(pairs):
        good, bad = rows[2 * k], rows[2 * k + 1]
        assert good["completions"] == pair["chosen"][0]["content"].split("\n") and all(good["labels"])
        assert bad["completions"] == pair["rejected"][0]["content"].split("\n")
        first = bad["labels"].index(False)  # the slip: the first line that differs from the correct solution
        assert bad["labels"] == [True] * first + [False] * (len(bad["labels"]) - first)
        assert good["completions"][:first] == bad["completions"][:first]
        assert good["completions"][first] != bad["completions"][first]


def test_stepwise_files_load_and_bad_labels_name_the_line(tmp_path):
    ok = {"prompt": "2 + 3?", "completions": ["2 + 3 = 5.", "#### 5"], "labels": [True, True], "answer": "5"}
    bad = {"prompt": "2 + 3?", "completions": ["2 + 3 = 6.", "#### 6"], "labels": [False], "answer": "5"}
    path = tmp_path / "steps.jsonl"
    path.write_text(json.dumps(ok) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataFormatError, match=r"line 2 of .*steps.jsonl: field 'labels' must be a list of 2 true/false"):
        data.load_stepwise_dataset(str(path))
    path.write_text(json.dumps(ok) + "\n")
    loaded = data.load_stepwise_dataset(str(path))
    assert loaded[0]["prompt"] == [{"role": "user", "content": "2 + 3?"}] and loaded[0]["labels"] == [True, True]
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"prompt": "hi", "completion": "hello"}) + "\n")
    with pytest.raises(DataFormatError, match="no gold 'answer' column"):
        data.load_stepwise_dataset(str(plain))


def test_gsm8k_gives_prompts_with_answers_to_label(shared_data_dir):
    rows = data.load_stepwise_dataset(str(shared_data_dir / "gsm8k" / "test.jsonl"), max_samples=3)
    assert set(rows.column_names) == {"prompt", "answer"} and len(rows) == 3


# --------------------------------------------------------------------------------------------------------- PRM


def test_encode_steps_marks_each_step_end_and_truncates_from_the_left(tokenizer):
    ids, positions = prm_lib.encode_steps(tokenizer, "What is 2 + 3?", ["2 + 3 = 5.", "#### 5"])
    assert len(positions) == 2 and positions[-1] == len(ids) - 1
    assert tokenizer.decode(ids[:positions[0] + 1]).endswith("2 + 3 = 5.\n")
    assert tokenizer.decode(ids).startswith(prompt_text(tokenizer, "What is 2 + 3?"))
    last_len = len(ids) - positions[0] - 1  # the tokens of "#### 5\n"
    short, kept = prm_lib.encode_steps(tokenizer, "What is 2 + 3?", ["2 + 3 = 5.", "#### 5"], max_length=last_len)
    assert short == ids[-last_len:] and kept == [last_len - 1]  # the first step is cut off, the last one kept
    row = tokenize_stepwise({"prompt": "What is 2 + 3?", "completions": ["2 + 3 = 5.", "#### 5"],
                             "labels": [True, False]}, tokenizer, 512)
    assert [(i, y) for i, y in enumerate(row["labels"]) if y != IGNORE_INDEX] == [(positions[0], 1), (positions[1], 0)]


def test_step_metrics_by_hand():
    ignore = IGNORE_INDEX
    labels = np.array([[ignore, 1, ignore, 0, 0], [ignore, 1, 1, ignore, ignore], [ignore, 1, 0, ignore, ignore]])
    probs = np.array([[0, 0.9, 0, 0.2, 0.7], [0, 0.8, 0.6, 0, 0], [0, 0.3, 0.1, 0, 0]])
    m = step_metrics(probs, labels)
    # steps: row 1 two of three right, row 2 both, row 3 one of two -> 5 / 7
    assert m["step_accuracy"] == pytest.approx(5 / 7) and m["steps"] == 7
    # first error: row 1 predicted step 2 = true step 2; row 2 none = none; row 3 predicted 1, true 2 -> 2 / 3
    assert m["first_error_accuracy"] == pytest.approx(2 / 3)
    assert m["solution_accuracy"] == pytest.approx(1.0)  # every row's all-correct verdict matches


def test_aggregates():
    assert prm_lib.aggregate_scores([0.9, 0.5, 0.8], "min") == 0.5
    assert prm_lib.aggregate_scores([0.9, 0.5, 0.8], "last") == 0.8
    assert prm_lib.aggregate_scores([0.9, 0.5, 0.8], "prod") == pytest.approx(0.36)
    assert prm_lib.aggregate_scores([], "min") == 0.0
    with pytest.raises(ValueError, match="aggregate must be one of"):
        prm_lib.aggregate_scores([0.5], "mean")


@pytest.fixture(scope="module")
def prm_dir(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("prm") / "prm"
    args = ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--max_steps", "3",
            "--per_device_train_batch_size", "4", "--max_train_samples", "24", "--eval_size", "6",
            "--learning_rate", "1e-3", "--report_to", "none", "--logging_steps", "1", "--save_steps", "2"]
    stages.run_stage("prm", *stages.make_parser("prm").parse_args_and_config(args=args))
    return out


def test_prm_stage_trains_saves_and_reports_step_accuracies(prm_dir, tiny_model_dir):
    record = json.loads((prm_dir / "training_complete.json").read_text())
    assert record["stage"] == "prm" and record["global_step"] == 3
    evaluation = record["eval"]
    assert evaluation["eval_steps"] > 12  # 6 problems, 2 solutions each, 3-4 steps per solution
    for key in ("eval_step_accuracy", "eval_first_error_accuracy", "eval_solution_accuracy"):
        assert 0 <= evaluation[key] <= 1
    prm = prm_lib.ProcessRewardModel.from_pretrained(str(prm_dir))
    scores = prm.step_scores(["What is 2 + 3?", "Hi"], [["2 + 3 = 5.", "#### 5"], []])
    assert len(scores[0]) == 2 and scores[1] == [] and all(0 <= s <= 1 for s in scores[0])
    spec = build_reward_functions(f"prm:{prm_dir}@last")
    assert spec(["What is 2 + 3?"], ["2 + 3 = 5.\n\n#### 5"]) == pytest.approx([scores[0][1]], abs=1e-5)


def test_prm_reward_spec_errors(tmp_path):
    with pytest.raises(ValueError, match="'prm' needs the PRM folder"):
        build_reward_functions(f"prm:{tmp_path}@mean")
    with pytest.raises(FileNotFoundError, match="PRM folder .* does not exist"):
        build_reward_functions("prm:runs/nowhere")


def test_monte_carlo_labels_are_consistent(tiny_model_dir):
    model, tokenizer = models.load_inference_model(str(tiny_model_dir))
    torch.manual_seed(0)
    rows, tokens = prm_lib.monte_carlo_step_labels(model, tokenizer, ["What is 2 + 3?", "What is 4 - 1?"], ["5", "3"],
                                                   num_rollouts=2, max_new_tokens=12, max_steps=50)
    assert tokens > 0 and len(rows) == 2
    for row in rows:
        assert len(row["completions"]) == len(row["labels"]) == len(row["mc_values"])
        assert row["labels"] == [v > 0 for v in row["mc_values"]]
        assert all(v in (0, 0.5, 1) for v in row["mc_values"])  # 2 rollouts per step
    with pytest.raises(ValueError, match="num_rollouts and solutions_per_prompt must be >= 1"):
        prm_lib.monte_carlo_step_labels(model, tokenizer, ["x"], ["1"], num_rollouts=0)


# --------------------------------------------------------------------------------------------------------- steps


def test_line_sampling_stops_at_the_first_newline_and_continues_prefixes(tiny_model_dir):
    model, tokenizer = models.load_inference_model(str(tiny_model_dir))
    torch.manual_seed(0)
    out = sample(model, tokenizer, ["What is 2 + 3?"] * 2, n=3, max_new_tokens=40, stop="line",
                 prefixes=["2 + 3 = 5.\n", ""])
    for group in out:
        for s in group:
            assert "\n" not in s.text and s.text.strip() and 1 <= s.num_tokens <= 40
    with pytest.raises(ValueError, match="stop must be 'eos' or 'line'"):
        sample(model, tokenizer, ["x"], stop="step")


class ToyPolicy:
    """Steps are single letters drawn from a fixed distribution (one token each); a solution has `depth` letters.
    The most likely letter is never the target's, so greedy decoding always misses."""

    def __init__(self, seed: int, depth: int = 3, probs=(0.45, 0.35, 0.2)):
        self.rng, self.depth, self.letters, self.probs = random.Random(seed), depth, "abc", probs
        self.max_steps = depth

    def draw(self) -> str:
        return self.rng.choices(self.letters, self.probs)[0]

    def propose(self, prompts, prefixes, k):
        return [[search.Step(self.draw(), 1, len(p) + 1 >= self.depth) for _ in range(k)] for p in prefixes]


def exact_verifier(target: str):
    """An exact process verifier: a prefix is worth 1 if it can still become the target, else 0."""

    def value(prompts, prefixes, finished):
        return [float(target.startswith("".join(p))) for p in prefixes], 0

    return value


def test_mcts_on_a_toy_problem_beats_greedy_and_sampling_at_the_same_budget():
    target, budget, trials = "bcb", 60, 40  # P(one sample is the target) = 0.35 * 0.2 * 0.35 = 2.45%
    policy = ToyPolicy(seed=0)
    mcts = search.MCTSGenerator(policy, exact_verifier(target), num_simulations=100, expand=3, max_tokens=budget)
    results = mcts.generate(["toy"] * trials, extract=lambda text: text.replace("\n", ""), desc=None)
    mcts_hits = sum(r.answer == target for r in results)
    assert all(budget <= r.num_tokens <= budget + 3 for r in results)  # the last expansion may pass the budget
    greedy = "a" * 3  # argmax letter at every step
    samples_per_trial = budget // 3  # independent full samples with the same token budget, oracle-checked
    sampling_hits = sum(any("".join(policy.draw() for _ in range(3)) == target for _ in range(samples_per_trial))
                        for _ in range(trials))
    assert greedy != target
    assert mcts_hits >= 0.75 * trials > sampling_hits  # sampling: 1 - 0.9755^20 = 39% expected
    assert all(r.score == 1.0 for r in results if r.answer == target)


def test_beam_search_keeps_the_best_prefixes_and_answers_with_the_best_finished():
    target = "bcb"
    results = search.beam_search(ToyPolicy(seed=1), exact_verifier(target), ["toy"] * 10, beam_width=3, expand=4,
                                 extract=lambda text: text.replace("\n", ""), desc=None)
    assert sum(r.answer == target for r in results) >= 8
    for r in results:
        assert r.num_samples == 12 + 12 + 12 and r.num_tokens == 36  # 3 rounds of 3 beams x 4 (12 at the root)
        assert r.response.replace("\n", "") in [c.replace("\n", "") for c in r.candidates]


def test_search_settings_are_checked():
    with pytest.raises(ValueError, match="search settings must be >= 1"):
        search.MCTSGenerator(ToyPolicy(0), exact_verifier("a"), num_simulations=0)
    with pytest.raises(ValueError, match="c_puct must be > 0"):
        search.MCTSGenerator(ToyPolicy(0), exact_verifier("a"), c_puct=0)
    with pytest.raises(ValueError, match="search settings must be >= 1"):
        search.beam_search(ToyPolicy(0), exact_verifier("a"), ["x"], expand=0)


def test_mcts_and_beam_on_a_tiny_lm_with_a_prm_and_rollouts(tiny_model_dir, prm_dir):
    model, tokenizer = models.load_inference_model(str(tiny_model_dir))
    policy = search.LMStepPolicy(model, tokenizer, max_step_tokens=6, max_steps=3, rollout_tokens=6)
    prm = prm_lib.ProcessRewardModel.from_pretrained(str(prm_dir))
    torch.manual_seed(0)
    prompts = ["What is 2 + 3?", "Name a colour."]
    for r in search.MCTSGenerator(policy, search.PRMValue(prm), num_simulations=3, expand=2).generate(prompts,
                                                                                                       desc=None):
        assert r.num_samples == 3 and 2 <= r.num_tokens <= 3 * 2 * 6 and 0 <= r.score <= 1
    rollout = search.RolloutValue(policy, build_reward_functions("math"), {"answer": ["5", "3"]})
    for r in search.MCTSGenerator(policy, rollout, num_simulations=2, expand=2).generate(prompts, desc=None):
        assert r.num_tokens > 2 and r.score in (0.0, 0.5, 1.0)  # rollout tokens are counted
    for r in search.beam_search(policy, search.PRMValue(prm), prompts, beam_width=2, expand=2, desc=None):
        assert len(r.response.split("\n")) <= 3 and r.num_samples >= 4


def test_generate_runs_beam_prm_and_mcts_and_checks_their_flags(tiny_model_dir, prm_dir, tmp_path):
    common = ["--model", str(tiny_model_dir), "--num_prompts", "2", "--max_new_tokens", "8", "--max_step_tokens", "6",
              "--max_steps", "2", "--prm", str(prm_dir)]
    for strategy, extra in (("beam_prm", ["--beam_width", "1", "--expand", "2"]),
                            ("mcts", ["--num_simulations", "2", "--expand", "2"])):
        out = run.run(run.make_parser().parse_args([*common, *extra, "--strategy", strategy,
                                                    "--output", str(tmp_path / f"{strategy}.jsonl")]))
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(rows) == 2 and all(r["strategy"] == strategy and r["num_tokens"] > 0 and "correct" in r
                                      for r in rows)
    with pytest.raises(ConfigError, match="--evaluator prm needs --prm"):
        run.run(run.make_parser().parse_args(["--strategy", "mcts", "--output", str(tmp_path / "x.jsonl")]))
    with pytest.raises(ConfigError, match="--expand must be >= 1"):
        run.run(run.make_parser().parse_args([*common, "--strategy", "beam_prm", "--expand", "0",
                                              "--output", str(tmp_path / "y.jsonl")]))
