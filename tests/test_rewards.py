"""Answer extraction, the verifiable, format and length rewards, and reward specs (`build_reward_functions`)."""

import threading
from pathlib import Path

import pytest
import torch

from open_rlhf.rewards import (
    DEFAULT_LENGTH_TARGET_CHARS,
    RewardModelScorer,
    RewardSpec,
    accuracy_reward,
    build_reward_functions,
    extract_final_answer,
    format_reward,
    length_penalty,
    math_verify_reward,
    normalize_number,
)


@pytest.mark.parametrize("text, expected", [
    ("1,234", "1234"), ("$5", "5"), ("7.50", "7.5"), ("7.0", "7"), ("-3", "-3"), ("42.", "42"),
    ("abc", None), ("", None), ("1/0", None), ("3/4", None), ("1" + "0" * 400 + ".5", None),
])
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("so 3 + 4 = 7\n#### 7", "7"),
    ("#### 1,000 apples", "1000"),
    ("first #### 3 then #### 5", "5"),           # the last marker wins
    ("the answer is \\boxed{12}", "12"),
    ("no marker, last number 8 then 9", "9"),
    ("nothing numeric", None),
])
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


def test_accuracy_reward_requires_the_marker_and_the_right_number():
    completions = ["4 * 3 = 12\n#### 12", "4 * 3 = 12", "#### 13", [{"role": "assistant", "content": "#### 12.0"}]]
    assert accuracy_reward(None, completions, answer=["12"] * 4) == [1.0, 0.0, 0.0, 1.0]
    with pytest.raises(ValueError):  # one gold answer per completion
        accuracy_reward(None, completions, answer=["12"])


# --------------------------------------------------------------------------------------------------------
# math_verify_reward, format_reward, length_penalty


@pytest.mark.parametrize("completion, gold, expected", [
    ("3 + 4 = 7\n#### 7", "7", 1.0),
    ("She has 48 + 24 = 72 clips.\n#### 72", "Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72", 1.0),  # GSM8K gold
    ("the answer is \\boxed{\\frac{1}{2}}", "0.5", 1.0),           # LaTeX fraction vs decimal
    ("#### 0.5", "#### \\frac{1}{2}", 1.0),
    ("\\boxed{\\dfrac{3}{4}}", "0.75", 1.0),
    ("#### 3/4", "0.75", 1.0),                                       # plain fraction
    ("#### 1,000", "1000", 1.0),                                     # thousands separator
    ("\\boxed{1{,}000}", "1000", 1.0),
    ("#### $1,000.00", "1000", 1.0),
    ("#### 7.50", "7.5", 1.0),
    ("#### -3", "-3", 1.0),
    ("so the total is 72.", "72", 1.0),                              # no marker: the last number
    ("first #### 3 then\n#### 5", "5", 1.0),                         # the last marker wins
    ("#### 18 dollars.", "18", 1.0),                                 # words: normalised-number fallback
    ("#### 25%", "25", 1.0),                                         # percent: fallback (math-verify says 0.25)
    ("#### \\$18", "18", 1.0),
    ("#### 73", "72", 0.0),                                          # wrong answers
    ("\\boxed{\\frac{1}{3}}", "0.5", 0.0),
    ("#### 2^3", "8", 0.0),                                          # powers are not evaluated (fallback: 3)
    ("no answer here", "72", 0.0),                                   # missing answer
    ("", "72", 0.0),
    ("#### 72", "", 0.0),                                            # missing gold
])
def test_math_verify_reward(completion, gold, expected):
    assert math_verify_reward(None, [completion], answer=[gold]) == [expected]


def test_math_verify_reward_conversational_extra_kwargs_and_lengths():
    completions = [[{"role": "assistant", "content": "\\boxed{12}"}], [{"role": "assistant", "content": "#### 13"}]]
    rewards = math_verify_reward(["q1", "q2"], completions, answer=["12", "12"], completion_ids=[[1], [2]],
                                 trainer_state=None)
    assert rewards == [1.0, 0.0]
    with pytest.raises(ValueError):  # one gold answer per completion
        math_verify_reward(None, completions, answer=["12"])


def test_math_verify_reward_off_the_main_thread():
    """math-verify's signal.alarm timeouts raise ValueError outside the main thread; the reward switches them off
    there and gives the same values. A span sympy would compute for minutes (a huge binomial) must not reach
    math-verify, where nothing would interrupt it: the thread must finish within seconds."""
    completions = ["\\boxed{\\frac{1}{2}}", "#### 1,000", "#### 73", "\\boxed{\\binom{1000000000}{500000000}}"]
    answers = ["0.5", "1000", "72", "5"]
    results = []
    thread = threading.Thread(target=lambda: results.append(math_verify_reward(None, completions, answer=answers)),
                              daemon=True)  # a hung thread must not block the test process from exiting
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert results == [[1.0, 1.0, 0.0, 0.0]]
    assert math_verify_reward(None, completions, answer=answers) == results[0]


@pytest.mark.parametrize("completion, expected", [
    ("4 * 3 = 12\n#### 12", 1.0),
    ("4 * 3 = 12\n#### 12\n\n  ", 1.0),          # trailing blank lines are ignored
    ("#### $1,000.50", 1.0),
    ("####12", 1.0),
    ([{"role": "assistant", "content": "x\n#### -3"}], 1.0),
    ("#### 12 apples", 0.0),                      # something after the number
    ("#### 12\nso that is it", 0.0),              # the marker is not on the last line
    ("the answer is \\boxed{12}", 0.0),
    ("12", 0.0),
    ("#### twelve", 0.0),
    ("", 0.0),
])
def test_format_reward(completion, expected):
    assert format_reward(None, [completion], answer=["anything"]) == [expected]


def test_length_penalty_values():
    """target 10 characters: lengths 0, 10, 15, 20, 35 -> -max(0, n - 10) / 10 = 0, 0, -0.5, -1.0, -2.5."""
    penalty = length_penalty(10)
    completions = ["", "a" * 10, "a" * 15, [{"role": "assistant", "content": "a" * 20}], "a" * 35]
    assert penalty(None, completions, completion_ids=[[0]] * 5) == [0.0, 0.0, -0.5, -1.0, -2.5]
    assert penalty.__name__ == "length_penalty"
    assert length_penalty()(None, ["a" * DEFAULT_LENGTH_TARGET_CHARS, "a" * (2 * DEFAULT_LENGTH_TARGET_CHARS)]) == [
        0.0, -1.0]
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            length_penalty(bad)


# --------------------------------------------------------------------------------------------------------
# RewardSpec and build_reward_functions


def test_weighted_sum_by_hand():
    """spec 1.0*math + 0.1*format + 0.5*length:20, gold 7:

    c1 "3 + 4 = 7\\n#### 7"         (16 chars): math 1, format 1, length 0            -> 1.0 + 0.1 + 0    = 1.1
    c2 "The answer is \\boxed{7}."   (24 chars): math 1, format 0, length -4/20 = -0.2 -> 1.0 + 0   - 0.1  = 0.9
    c3 "#### 8"                     ( 6 chars): math 0, format 1, length 0            -> 0   + 0.1 + 0    = 0.1
    c4 "x" * 40                     (40 chars): math 0, format 0, length -20/20 = -1  -> 0   + 0   - 0.5  = -0.5
    """
    completions = ["3 + 4 = 7\n#### 7", "The answer is \\boxed{7}.", "#### 8", "x" * 40]
    assert [len(c) for c in completions] == [16, 24, 6, 40]
    spec = build_reward_functions("1.0*math,0.1*format,0.5*length:20")
    assert spec(["q"] * 4, completions, answer=["7"] * 4, completion_ids=[[1]] * 4) == pytest.approx(
        [1.1, 0.9, 0.1, -0.5])
    assert spec.__name__ == "math+format+length"


def test_reward_spec_direct_construction_and_validation():
    """2 * accuracy - 1 * format on ["#### 5", "5"] with gold 5: accuracy [1, 0], format [1, 0] -> [1.0, 0.0]."""
    spec = RewardSpec([accuracy_reward, format_reward], [2.0, -1.0], ["accuracy", "format"], ("answer",))
    assert spec(None, ["#### 5", "5"], answer=["5", "5"]) == [1.0, 0.0]
    assert spec.needs_answer
    with pytest.raises(ValueError, match="as many weights"):
        RewardSpec([accuracy_reward], [1.0, 2.0], ["accuracy"])
    with pytest.raises(ValueError, match="at least one term"):
        RewardSpec([], [], [])
    with pytest.raises(ValueError, match="unique"):
        RewardSpec([format_reward, format_reward], [1.0, 1.0], ["format", "format"])
    with pytest.raises(ValueError, match="returned 1 scores for 2 completions"):
        RewardSpec([lambda prompts, completions, **kwargs: [0.0]], [1.0], ["broken"])(None, ["a", "b"])


def test_build_reward_functions_parses_weights_and_arguments():
    spec = build_reward_functions("accuracy")
    assert (spec.funcs, spec.weights, spec.names) == ([accuracy_reward], [1.0], ["accuracy"])
    assert spec.needs_answer and spec.required_columns == ("answer",) and spec.__name__ == "accuracy"

    spec = build_reward_functions("accuracy,0.2*format")
    assert (spec.funcs, spec.weights, spec.names) == ([accuracy_reward, format_reward], [1.0, 0.2],
                                                      ["accuracy", "format"])

    spec = build_reward_functions(" 1.0*math , 0.1 * format, -0.5*length:400 ")
    assert spec.funcs[:2] == [math_verify_reward, format_reward]
    assert spec.weights == [1.0, 0.1, -0.5] and spec.names == ["math", "format", "length"]
    assert spec.funcs[2].target_chars == 400
    assert spec.required_columns == ("answer",)

    spec = build_reward_functions("format,length")
    assert spec.funcs[1].target_chars == DEFAULT_LENGTH_TARGET_CHARS
    assert not spec.needs_answer and spec.required_columns == ()

    spec = build_reward_functions("math,accuracy")
    assert spec.required_columns == ("answer",)  # listed once


@pytest.mark.parametrize("spec, error, match", [
    ("", ValueError, "Empty reward spec"),
    ("  ", ValueError, "Empty reward spec"),
    ("accuracy,", ValueError, r"term 2 '': empty term"),
    ("acc", ValueError, r"term 1 'acc': unknown reward name 'acc'\. Valid names: accuracy, math, format"),
    ("0.5*bleu", ValueError, r"unknown reward name 'bleu'.*Example: '1\.0\*math,0\.1\*format,0\.5\*length:400'"),
    ("x*math", ValueError, r"term 1 'x\*math': weight 'x' is not a finite number"),
    ("nan*math", ValueError, "weight 'nan' is not a finite number"),
    ("math:3", ValueError, r"'math' takes no argument, got '3'"),
    ("format:x", ValueError, "'format' takes no argument"),
    ("length:abc", ValueError, r"length target must be a positive whole number of characters, got 'abc'"),
    ("length:0", ValueError, "positive whole number"),
    ("length:", ValueError, "positive whole number"),
    ("model", ValueError, r"'model' needs the reward model directory, as in 'model:runs/default/reward'"),
    ("math,model:/no/such/reward", FileNotFoundError,
     r"term 2 'model:/no/such/reward': reward model directory '/no/such/reward' does not exist"),
])
def test_build_reward_functions_errors(spec, error, match):
    with pytest.raises(error, match=match):
        build_reward_functions(spec)


def test_model_term_scores_like_the_reward_model_scorer(tmp_path, tokenizer):
    """``model:PATH`` loads the saved reward model on first call and scores exactly as `RewardModelScorer` does
    on the same model; in a weighted spec it adds 0.5 * score to the format reward."""
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    from tests.conftest import tiny_llama_config

    torch.manual_seed(0)
    model = LlamaForSequenceClassification(tiny_llama_config(tokenizer, num_labels=1))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    prompts = ["What is 3 + 4?", [{"role": "user", "content": "What is 2 * 6?"}], "Say hi."]
    completions = ["3 + 4 = 7\n#### 7", [{"role": "assistant", "content": "#### 12"}], "Hi there, how are you doing?"]
    # the loader pads on the right, as train_reward.py does; compare with the same padding
    direct = RewardModelScorer(model, AutoTokenizer.from_pretrained(tmp_path, padding_side="right"))(
        prompts, completions)

    spec = build_reward_functions(f"model:{tmp_path}")
    assert spec.names == ["model"] and spec.required_columns == () and spec.__name__ == "model"
    assert spec.funcs[0]._scorer is None  # not loaded until called
    assert spec(prompts, completions, completion_ids=[[0]] * 3) == pytest.approx(direct, abs=1e-5)
    assert isinstance(spec.funcs[0].scorer, RewardModelScorer)
    assert len(set(direct)) == 3  # the random head separates the three conversations

    weighted = build_reward_functions(f"0.5*model:{tmp_path},format")
    assert weighted(prompts, completions) == pytest.approx([0.5 * direct[0] + 1.0, 0.5 * direct[1] + 1.0,
                                                            0.5 * direct[2]], abs=1e-5)


def test_ensemble_mean_std_and_the_conservative_score():
    from open_rlhf.rewards import RewardModelEnsemble

    def constant(*values):
        return lambda prompts, completions, **_: list(values)

    ensemble = RewardModelEnsemble([constant(1.0, 0.0), constant(3.0, 0.0), constant(2.0, 3.0)], penalty=0.5)
    mean, std = ensemble.mean_and_std(["p", "q"], ["a", "b"])
    assert mean == pytest.approx([2.0, 1.0])
    assert std == pytest.approx([(2 / 3) ** 0.5, 2 ** 0.5])  # population std: sqrt(((1)^2 + (1)^2 + 0) / 3), ...
    assert ensemble(["p", "q"], ["a", "b"]) == pytest.approx([2.0 - 0.5 * (2 / 3) ** 0.5, 1.0 - 0.5 * 2 ** 0.5])
    with pytest.raises(ValueError, match=">= 2 scorers"):
        RewardModelEnsemble([constant(1.0)])


def test_ensemble_spec_scores_with_its_reward_models(tokenizer, tmp_path):
    from open_rlhf.rewards import RewardModelScorer
    from tests.conftest import save_tiny_model

    paths = [str(save_tiny_model(tmp_path / f"rm{i}", tokenizer, seed=i, reward=True)) for i in range(3)]
    spec = build_reward_functions(f"ensemble:{'|'.join(paths)}@1.5")
    prompts, completions = ["What is 2 + 2?"] * 2, ["4", "#### 5"]
    each = torch.tensor([RewardModelScorer.from_pretrained(p)(prompts, completions) for p in paths])
    expected = each.mean(0) - 1.5 * each.std(0, correction=0)
    assert spec(prompts, completions) == pytest.approx(expected.tolist(), abs=1e-5)
    assert spec.names == ["ensemble"]


@pytest.mark.parametrize("spec, match", [
    ("ensemble:", "needs two or more reward model folders"),
    ("ensemble:only-one", "needs two or more reward model folders"),
    ("ensemble:a|b@-1", "needs two or more reward model folders"),
    ("ensemble:a|b@x", "needs two or more reward model folders"),
    ("ensemble:/no/such/a|/no/such/b", r"reward model folder\(s\) \['/no/such/a', '/no/such/b'\] do not exist"),
])
def test_bad_ensemble_specs_are_clear_errors(spec, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        build_reward_functions(spec)


def test_train_reward_ensemble_refuses_bad_arguments(capsys):
    import importlib.util

    from open_rlhf.errors import EXIT_USER_ERROR

    spec = importlib.util.spec_from_file_location(
        "train_reward_ensemble", Path(__file__).resolve().parents[1] / "scripts" / "train_reward_ensemble.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for argv, message in ((["--k", "1", "--output_dir", "x"], "--k must be >= 2"),
                          (["--output_dir", "x", "--", "--seed", "3"], "--seed after '--' would be overridden")):
        with pytest.raises(SystemExit) as exit_info:
            script.main(argv)
        assert exit_info.value.code == EXIT_USER_ERROR and message in capsys.readouterr().err


def test_arithmetic_validity_reward_checks_each_equation():
    from open_rlhf.rewards import arithmetic_validity_reward

    completions = [
        "Ben buys 9 packs of 14: 9 * 14 = 126 shells.\nWith 18: 126 + 18 = 144.\nHe gives 11: 144 - 11 = 133.\n#### 133",
        "Max buys 8 bags of 14: 8 * 14 = 116 marbles.\nHe gives 6: 116 - 6 = 110.\n#### 110",  # one slip of two
        [{"role": "assistant", "content": "36 / 6 = 6 each, 1,000 x 3 = 3,000, 10 / 4 = 2.5 and 10 / 3 = 3.33"}],
        "#### 5",  # no equation
        "7 / 0 = 1 and 2 + 2 = 5",  # division by zero is not an equation it can check; 2 + 2 = 5 is wrong
    ]
    assert arithmetic_validity_reward(None, completions) == [1.0, 0.5, 1.0, 0.0, 0.0]
    spec = build_reward_functions("math,0.5*arith")
    assert spec(["q"] * 2, completions[:2], answer=["133", "106"]) == [1.5, 0.25]


def test_arithmetic_step_checks_give_each_equation_its_end_and_verdict():
    from open_rlhf.rewards import arithmetic_step_checks

    text = "Max buys 8 bags of 14: 8 * 14 = 116 marbles.\nHe gives 6: 116 - 6 = 110.\n7 / 0 = 1, 10 / 3 = 3.33"
    checks = arithmetic_step_checks(text)
    assert [end for end, _ in checks] == [text.index("116") + 3, text.index("110") + 3, len(text)]
    assert [right for _, right in checks] == [False, True, True]  # 8 * 14 is 112; 7 / 0 is skipped
    assert arithmetic_step_checks("#### 5") == []
