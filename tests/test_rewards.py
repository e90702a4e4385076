"""Answer extraction and the verifiable reward."""

import pytest

from open_rlhf.rewards import accuracy_reward, extract_final_answer, normalize_number


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
