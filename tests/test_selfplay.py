"""SPIN and Step-DPO data construction (open_rlhf.selfplay) on hand-made and built-in pairs."""

import pytest

from open_rlhf.selfplay import first_wrong_step, spin_pairs, step_dpo_pairs


def test_spin_pairs_prefer_the_demonstration_over_the_policys_answer():
    rows, identical = spin_pairs(["What is 2 + 2?", [{"role": "user", "content": "What is 3 + 3?"}]],
                                 ["2 + 2 = 4.\n#### 4", "3 + 3 = 6.\n#### 6"],
                                 ["2 + 2 = 5.\n#### 5", "3 + 3 = 6.\n#### 6 "])
    assert identical == 1  # the second answer already is the demonstration: no pair
    assert rows == [{"prompt": [{"role": "user", "content": "What is 2 + 2?"}],
                     "chosen": [{"role": "assistant", "content": "2 + 2 = 4.\n#### 4"}],
                     "rejected": [{"role": "assistant", "content": "2 + 2 = 5.\n#### 5"}]}]
    with pytest.raises(ValueError, match="one demonstration"):
        spin_pairs(["q"], ["a", "b"], ["c"])


def test_spin_pairs_drop_answers_a_verifier_accepts():
    """--spin_drop_verified: the policy's right answer (another wording of the demonstration) gives no pair."""
    from open_rlhf.rewards import build_reward_functions

    prompts = ["What is 2 + 2?", "What is 3 + 3?", "What is 4 + 4?"]
    gold = ["2 + 2 = 4.\n#### 4", "3 + 3 = 6.\n#### 6", "4 + 4 = 8.\n#### 8"]
    own = ["Two and two: 2 + 2 = 4.\n#### 4", "3 + 3 = 7.\n#### 7", "4 + 4 = 8.\n#### 8"]
    scores = build_reward_functions("math")([[{"role": "user", "content": p}] for p in prompts], own,
                                            answer=["4", "6", "8"])
    assert scores == [1.0, 0.0, 1.0]
    rows, identical = spin_pairs(prompts, gold, own, verified=[s >= 1.0 for s in scores])
    assert identical == 1 and [r["rejected"][0]["content"] for r in rows] == ["3 + 3 = 7.\n#### 7"]
    assert len(spin_pairs(prompts, gold, own)[0]) == 2  # without the flags: the paper's pairs


def test_first_wrong_step():
    assert first_wrong_step(["a", "b", "c"], ["a", "x", "y"]) == 1
    assert first_wrong_step(["a"], ["b"]) == 0
    with pytest.raises(ValueError, match="no wrong step"):
        first_wrong_step(["a", "b"], ["a", "b"])


def test_step_dpo_pairs_cut_the_builtin_pairs_at_their_slip(tokenizer):
    from open_rlhf.tasks.arithmetic import preference_dataset

    pairs = preference_dataset(8, seed=0)
    rows = step_dpo_pairs(pairs, tokenizer)
    assert len(rows) == 8
    for pair, row in zip(pairs, rows, strict=True):
        good = pair["chosen"][0]["content"].split("\n")
        bad = pair["rejected"][0]["content"].split("\n")
        k = row["step"]
        assert good[:k] == bad[:k] and good[k] != bad[k]  # cut exactly at the slip
        assert (row["chosen"], row["rejected"]) == (good[k], bad[k])
        question = tokenizer.apply_chat_template(pair["prompt"], tokenize=False, add_generation_prompt=True)
        assert row["prompt"] == question + "".join(s + "\n" for s in good[:k])
    # a hand-made pair: the slip is in the second line
    pair = {"prompt": [{"role": "user", "content": "Q"}],
            "chosen": [{"role": "assistant", "content": "3 * 4 = 12.\n12 + 1 = 13.\n#### 13"}],
            "rejected": [{"role": "assistant", "content": "3 * 4 = 12.\n12 + 1 = 14.\n#### 14"}]}
    (row,) = step_dpo_pairs([pair], tokenizer)
    assert row["prompt"].endswith("3 * 4 = 12.\n") and row["chosen"] == "12 + 1 = 13." and row["step"] == 1
    pair["rejected"] = pair["chosen"]
    with pytest.raises(ValueError, match="pair 0"):
        step_dpo_pairs([pair], tokenizer)
