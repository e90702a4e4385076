"""Degenerate-output detectors, the adversarial validator, penalty terms and principles files (`open_rlhf.guards`),
and their reward-spec terms (`build_reward_functions`). Pure string tests: no model is loaded."""

import json
import pickle
import re
from pathlib import Path

import pytest

from open_rlhf.errors import ConfigError, ModelNotFoundError, RewardSpecError
from open_rlhf.guards import (
    AdversarialValidator,
    GuardPenaltyFunction,
    copy_prompt_penalty,
    copy_prompt_score,
    copy_prompt_scores,
    format_penalty,
    format_violation_scores,
    length_blowup_score,
    length_blowup_scores,
    load_principles,
    principles_reward,
    repetition_penalty,
    repetition_score,
)
from open_rlhf.rewards import LazyRewardModelScorer, build_reward_functions

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------------
# Detectors


@pytest.mark.parametrize("text, n, expected", [
    ("a b c d a b c d", 4, 1 - 4 / 5),                       # 5 four-grams, 4 distinct
    ("one two three four " * 3, 4, 1 - 4 / 9),               # said 3 times: 9 four-grams, 4 distinct
    ("a a b", 1, 1 - 2 / 3),                                  # unigrams: a, a, b
    ("w x y z", 4, 0.0),                                      # one 4-gram
    ("a a a", 4, 0.0),                                        # fewer words than n: no n-gram
    ("", 4, 0.0),
])
def test_repetition_score(text, n, expected):
    assert repetition_score(text, n) == pytest.approx(expected)


def test_repetition_score_rejects_n_below_one():
    with pytest.raises(ValueError, match="n must be >= 1"):
        repetition_score("a b", 0)


def test_copy_prompt_score_counts_the_completion_ngrams_found_in_the_prompt():
    """Completion 4-grams: (Tom has 5 red), (has 5 red apples), (5 red apples so), (red apples so 5); the first
    two are in the prompt: 2 / 4."""
    prompt = "Tom has 5 red apples today"
    assert copy_prompt_score(prompt, "Tom has 5 red apples so 5") == pytest.approx(0.5)
    assert copy_prompt_score(prompt, prompt) == 1.0
    assert copy_prompt_score(prompt, "5 + 3 = 8 apples") == 0.0
    assert copy_prompt_score(prompt, "Tom has 5") == 0.0  # fewer words than n
    conversation = [{"role": "system", "content": "Tom has"}, {"role": "user", "content": "5 red apples today"}]
    answer = [{"role": "assistant", "content": "Tom has 5 red apples so 5"}]
    assert copy_prompt_scores([conversation], [answer]) == [pytest.approx(0.5)]  # message contents joined


def test_format_violation_scores():
    completions = ["2 + 5 = 7\n#### 7", "#### 7 apples", "", "#### 7\nthanks", [{"role": "assistant", "content": "#### 7"}]]
    assert format_violation_scores(None, completions) == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_length_blowup_score():
    """r = length / reference, F = 4: score clip((r - 4) / 4, 0, 1)."""
    assert length_blowup_score("a" * 40, reference_chars=10) == 0.0          # r = 4: not beyond F
    assert length_blowup_score("a" * 50, reference_chars=10) == 0.25         # r = 5: (5 - 4) / 4
    assert length_blowup_score("a" * 100, reference_chars=10) == 1.0         # r = 10: clipped
    assert length_blowup_score("a" * 30, reference_chars=10, factor=2) == 0.5  # r = 3: (3 - 2) / 2
    assert length_blowup_score("ab", reference_chars=0) == 0.0               # reference floored at 1 char: r = 2
    with pytest.raises(ValueError, match="factor must be > 1"):
        length_blowup_score("a", reference_chars=1, factor=1)


def test_length_blowup_scores_default_to_the_batch_median():
    """Lengths 10, 10, 10, 60: median 10, so the last has r = 6 and scores (6 - 4) / 4 = 0.5."""
    completions = ["a" * 10, "b" * 10, "c" * 10, "d" * 60]
    assert length_blowup_scores(None, completions) == [0.0, 0.0, 0.0, 0.5]
    assert length_blowup_scores(None, completions, reference_chars=60) == [0.0] * 4


# --------------------------------------------------------------------------------------------------------
# Validator and penalties

PROMPT = "Ben has 18 shells and buys 9 more shells. How many shells does Ben have now?"
BATCH = [
    "18 + 9 = 27 shells.\n#### 27",                                   # clean (27 characters)
    "18 + 9 = 27 " * 4 + "\n#### 27",                                 # a loop
    PROMPT + "\n#### 27",                                             # the prompt copied back
    "18 + 9 = 27 shells.\nSo Ben has 27.",                            # no answer line
    " ".join(f"w{i}" for i in range(40)) + "\n#### 27",               # 157 characters: > 4 x 27
]


def test_validator_rates_and_flags_on_a_small_batch():
    report = AdversarialValidator(reference_chars=27).validate([PROMPT] * 5, BATCH, round=3)
    assert report.flags == {"repetition": [False, True, False, False, False],
                            "copy_prompt": [False, False, True, False, False],
                            "format": [False, False, False, True, False],
                            "length_blowup": [False, False, False, False, True]}
    assert report.rates == {"repetition": 0.2, "copy_prompt": 0.2, "format": 0.2, "length_blowup": 0.2}
    assert report.flagged == [False, True, True, True, True] and report.any_rate == 0.8
    assert report.scores["repetition"][1] == pytest.approx(1 - 7 / 19)  # 22 words: 19 four-grams, 7 distinct
    data = json.loads(json.dumps(report.to_dict()))
    assert data["round"] == 3 and data["n"] == 5 and data["rates"] == report.rates
    assert data["thresholds"] == {"repetition": 0.25, "copy_prompt": 0.5, "format": 0.0, "length_blowup": 0.0}


def test_validator_accepts_conversations_and_a_subset_of_detectors():
    prompts = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]] * 5
    completions = [[{"role": "assistant", "content": text}] for text in BATCH]
    validator = AdversarialValidator(detectors=["repetition", "copy_prompt"])
    report = validator.validate(prompts, completions)
    assert list(report.rates) == ["repetition", "copy_prompt"]
    assert report.flags == {k: v for k, v in validator.validate([PROMPT] * 5, BATCH).flags.items()}
    assert report.flagged == [False, True, True, False, False]
    with pytest.raises(ValueError, match="one prompt per completion"):
        validator.validate([PROMPT], BATCH)
    with pytest.raises(ValueError, match="subset"):
        AdversarialValidator(detectors=["loops"])


def test_penalties_are_minus_the_scores_and_zero_when_clean():
    prompts = [PROMPT] * 5
    repetition = repetition_penalty(prompts, BATCH, answer=["27"] * 5, trainer_state=None)  # extra kwargs ignored
    assert repetition[0] == 0.0 and repetition[1] == pytest.approx(-(1 - 7 / 19))
    assert all(p <= 0 for p in repetition)
    assert copy_prompt_penalty(prompts, BATCH)[2] == -copy_prompt_scores(prompts, BATCH)[2] < -0.5
    assert format_penalty(prompts, BATCH) == [0.0, 0.0, 0.0, -1.0, 0.0]
    long = GuardPenaltyFunction("length_blowup", reference_chars=27)(prompts, BATCH)
    assert long[:4] == [0.0] * 4 and long[4] == pytest.approx(-(157 / 27 - 4) / 4)
    assert pickle.loads(pickle.dumps(repetition_penalty))(prompts, BATCH) == repetition


# --------------------------------------------------------------------------------------------------------
# Reward-spec terms


def test_spec_math_plus_half_repetition():
    """'3 + 4 = 7 3 + 4 = 7 #### 7': 12 words, 9 four-grams, 7 distinct: repetition 2/9; math 1: 1 - 0.5 * 2/9."""
    spec = build_reward_functions("math,0.5*repetition")
    assert spec.names == ["math", "repetition"] and spec.weights == [1.0, 0.5]
    completions = ["3 + 4 = 7 3 + 4 = 7\n#### 7", "3 + 4 = 7\n#### 7", "3 + 4 = 8 3 + 4 = 8\n#### 8"]
    assert spec(None, completions, answer=["7"] * 3) == pytest.approx([1 - 1 / 9, 1.0, -1 / 9])


def test_spec_guard_terms_and_their_errors():
    spec = build_reward_functions("copy_prompt,length_blowup:2")
    assert spec.funcs[1].options == {"factor": 2.0}
    # lengths 7, 4, 40: median 7; the last has r = 40 / 7 > 2 x 2, so its length score is 1
    assert spec(["a b c d"] * 3, ["a b c d", "wxyz", "z" * 40]) == [-1.0, 0.0, -1.0]
    with pytest.raises(RewardSpecError, match="FACTOR must be a number > 1"):
        build_reward_functions("length_blowup:1")
    with pytest.raises(RewardSpecError, match="takes no argument"):
        build_reward_functions("repetition:3")
    with pytest.raises(RewardSpecError, match="needs a principles YAML file"):
        build_reward_functions("principles")


# --------------------------------------------------------------------------------------------------------
# Principles files


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "principles.yaml"
    path.write_text(text)
    return path


def test_default_principles_file_loads_and_scores_the_reference_solution_near_zero():
    principles = load_principles(REPO / "config" / "principles" / "default.yaml")
    assert [p.name for p in principles] == ["answer_format", "no_repetition_loops", "no_prompt_copying",
                                            "no_length_blowup", "shows_a_calculation"]
    assert [p.kind for p in principles] == ["detector"] * 4 + ["regex"]
    reward = principles_reward(REPO / "config" / "principles" / "default.yaml")
    clean, loop = "Ben buys 9 packs of 14 shells: 9 * 14 = 126 shells.\n#### 126", "shells " * 30
    assert reward(["Ben has 18 shells."] * 2, [clean, loop]) == pytest.approx([0.0, -1.0 - 0.5 * 26 / 27 - 0.2])


def test_principles_reward_weighted_sum_logs_and_pickles(tmp_path):
    path = write(tmp_path, """
- name: answer_format
  check: format
  weight: 1.0
- name: no_apology
  check: "not_regex:(?i)sorry"
  weight: 0.5
- name: shows_work
  check: "regex:="
  weight: 2
""")
    reward = principles_reward(path)
    assert reward.names == ["answer_format", "no_apology", "shows_work"] and reward.weights == [1.0, 0.5, 2.0]
    completions = ["2 + 2 = 4\n#### 4", "Sorry.\n#### 4", "I am sorry"]
    expected = [0.0, -0.5 - 2.0, -1.0 - 0.5 - 2.0]
    logged = {}
    assert reward(None, completions, log_metric=logged.__setitem__) == pytest.approx(expected)
    assert logged == pytest.approx({"principles/answer_format": -1 / 3, "principles/no_apology": -2 / 3,
                                    "principles/shows_work": -2 / 3})
    assert pickle.loads(pickle.dumps(reward))(None, completions) == pytest.approx(expected)
    spec = build_reward_functions(f"math,0.5*principles:{path}")
    assert spec.names == ["math", "principles"]
    assert spec(None, completions, answer=["4"] * 3) == pytest.approx([1.0, 1.0 - 1.25, -1.75])


def test_model_principle_delegates_to_the_model_term(tmp_path):
    model_dir = tmp_path / "reward"
    model_dir.mkdir()
    path = write(tmp_path, f"- name: helpful\n  check: model:{model_dir}\n  weight: 0.1\n")
    reward = build_reward_functions(f"principles:{path}").funcs[0]
    assert isinstance(reward.funcs[0], LazyRewardModelScorer) and reward.funcs[0].reward_model_path == str(model_dir)
    with pytest.raises(ConfigError, match=r"entry 0 \('helpful'\).*principles:"):
        principles_reward(path)  # the model loader lives in open_rlhf.rewards
    path.write_text(f"- name: helpful\n  check: model:{tmp_path / 'missing'}\n  weight: 0.1\n")
    with pytest.raises(ModelNotFoundError, match=re.escape(f"principles file {path}, entry 0 ('helpful')")):
        build_reward_functions(f"principles:{path}")


@pytest.mark.parametrize("entry, message", [
    ("- name: a\n  check: format\n  weight: 1\n- name: loops\n  check: 'regex:('\n  weight: 1\n",
     r"entry 1 \('loops'\): field 'check' 'regex:\(' is not a valid regular expression"),
    ("- name: a\n  check: format\n  weight: 1\n- name: loops\n  check: repetition\n",
     r"entry 1 \('loops'\): missing field 'weight'. Fix: add 'weight: 1.0'"),
    ("- name: a\n  check: format\n  weight: 1\n- name: loops\n  check: repetition\n  weight: high\n",
     r"entry 1 \('loops'\): field 'weight' must be a finite number, got 'high'"),
    ("- name: a\n  check: format\n  weight: 1\n- name: loops\n  check: repetitions\n  weight: 1\n",
     r"entry 1 \('loops'\): field 'check' 'repetitions': unknown detector 'repetitions' \(did you mean 'repetition'\?\)"),
    ("- name: loops\n  check: 'regex:'\n  weight: 1\n", r"entry 0 \('loops'\): field 'check' 'regex:' has an empty"),
    ("- name: loops\n  check: repetition\n  weight: 1\n  wieght: 2\n", r"entry 0 \('loops'\): unknown field\(s\)"),
    ("- name: a\n  check: format\n  weight: 1\n- name: a\n  check: repetition\n  weight: 1\n",
     r"entry 1 \('a'\): field 'name' 'a' is used twice"),
    ("- format\n", r"entry 0: must be a mapping"),
    ("name: a\ncheck: format\n", r"must be a non-empty YAML list"),
    ("- [unclosed\n", r"cannot read principles file"),
])
def test_principles_errors_name_the_file_entry_and_field(tmp_path, entry, message):
    path = write(tmp_path, entry)
    with pytest.raises(ConfigError, match=message) as error:
        load_principles(path)
    assert f"principles file {path}" in str(error.value)


def test_missing_principles_file(tmp_path):
    with pytest.raises(ConfigError, match="principles file not found"):
        build_reward_functions(f"principles:{tmp_path / 'none.yaml'}")


def test_the_default_principles_pass_reference_solutions_and_catch_a_loop():
    """config/principles/default.yaml through the reward spec: a built-in reference solution loses at most its small
    copy penalty; a looping answer without the answer line is penalised by several principles."""
    from open_rlhf.tasks.arithmetic import generate_problems

    preset = Path(__file__).resolve().parents[1] / "config" / "principles" / "default.yaml"
    reward = build_reward_functions(f"principles:{preset}")
    problem = generate_problems(1, seed=0)[0]
    prompts = [problem.question] * 2
    loop = "I think I think I think I think I think I think I think I think"
    clean, degenerate = reward(prompts, [problem.solution, loop])
    assert -0.1 < clean <= 0 and degenerate < -1.0
