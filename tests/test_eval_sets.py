"""open_rlhf.eval_sets on the real shared data files: sizes, formats, the held-out split training uses, seeded
subsamples and the errors a wrong --data_dir or name gives."""

from __future__ import annotations

import json

import pytest

from open_rlhf import data, evaluation
from open_rlhf.errors import ConfigError, DataFormatError, DataNotFoundError
from open_rlhf.eval_sets import EVAL_SETS, load_eval_set


def _is_user_prompt(prompt) -> bool:
    return (isinstance(prompt, list) and len(prompt) == 1 and prompt[0]["role"] == "user"
            and isinstance(prompt[0]["content"], str) and prompt[0]["content"].strip() != "")


def test_gsm8k_held_out_split_is_the_one_training_holds_out(shared_data_dir):
    """limit=8, seed=42 on gsm8k/test.jsonl: the eval split of load_splits(kind="prompt", eval_size=8,
    seed=42), i.e. what an RL stage on that file with --eval_size 8 --split_seed 42 never trains on."""
    path = str(shared_data_dir / "gsm8k" / "test.jsonl")
    eval_set = load_eval_set("gsm8k", shared_data_dir, limit=8, seed=42)
    prompts, answers = evaluation.held_out_prompts(path, 8, 42)
    assert (eval_set.prompts, eval_set.answers) == (prompts, answers)
    train, _ = data.load_splits(path, "prompt", eval_size=8, seed=42)
    trained = {p[0]["content"] for p in train["prompt"]}
    assert len(eval_set) == 8 and not trained & {p[0]["content"] for p in eval_set.prompts}
    assert all(_is_user_prompt(p) for p in eval_set.prompts)
    assert all(a.lstrip("-").replace(".", "").isdigit() for a in eval_set.answers)
    assert eval_set.references is None and eval_set.categories is None


def test_gsm8k_whole_file(shared_data_dir):
    eval_set = load_eval_set("gsm8k", shared_data_dir)
    assert len(eval_set) == len(eval_set.answers) == 1319  # the README's record count
    assert eval_set.prompts[0][0]["content"].startswith("Janet\u2019s ducks lay 16 eggs per day.")
    assert eval_set.answers[0] == "18"
    assert len(load_eval_set("gsm8k", shared_data_dir, limit=5000)) == 1319


def test_builtin_needs_no_data_dir():
    eval_set = load_eval_set("builtin", limit=16, seed=3)
    prompts, answers = evaluation.held_out_prompts("builtin", 16, 3)
    assert (eval_set.prompts, eval_set.answers) == (prompts, answers)
    assert len(load_eval_set("builtin")) == 64


def test_mt_bench_first_turns(shared_data_dir):
    eval_set = load_eval_set("mt_bench", shared_data_dir)
    assert len(eval_set) == 80 and eval_set.answers is None
    hawaii = ("Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural "
              "experiences and must-see attractions.")
    assert eval_set.prompts[0] == [{"role": "user", "content": hawaii}]
    assert all(_is_user_prompt(p) for p in eval_set.prompts)
    categories = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
    counts = {c: eval_set.categories.count(c) for c in set(eval_set.categories)}
    assert counts == dict.fromkeys(categories, 10)
    assert sum(r is not None for r in eval_set.references) == 39  # the README: 39 items carry a reference
    lines = (shared_data_dir / "mt_bench" / "question.jsonl").read_text().splitlines()
    questions = [json.loads(line) for line in lines]
    race = next(i for i, q in enumerate(questions) if q["question_id"] == 101)
    assert eval_set.references[race] == "You are in second place."  # reference[0], the first turn's


def test_self_instruct_prompts_and_references(shared_data_dir):
    eval_set = load_eval_set("self-instruct", shared_data_dir)  # "-" is read as "_"
    assert eval_set.name == "self_instruct" and len(eval_set) == 252 and eval_set.answers is None
    lines = (shared_data_dir / "self-instruct" / "user_oriented_instructions.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    task0, task5 = records[0], records[5]
    assert task5["instances"][0]["input"] == ""  # an instruction without input is the prompt as it is
    assert eval_set.prompts[5][0]["content"] == task5["instruction"].strip()
    assert eval_set.prompts[0][0]["content"] == (f"{task0['instruction'].strip()}\n\n"
                                                 f"{task0['instances'][0]['input'].strip()}")
    assert eval_set.references[0] == task0["instances"][0]["output"]
    assert all(isinstance(r, str) and r.strip() for r in eval_set.references)
    assert eval_set.categories[0] == "Grammarly"


@pytest.mark.parametrize("name", ["mt_bench", "self_instruct"])
def test_subsample_is_seeded_and_in_file_order(shared_data_dir, name):
    full = load_eval_set(name, shared_data_dir)
    first, again = (load_eval_set(name, shared_data_dir, limit=10, seed=0) for _ in range(2))
    other = load_eval_set(name, shared_data_dir, limit=10, seed=1)
    assert len(first) == 10 and first == again and first.prompts != other.prompts
    positions = [full.prompts.index(p) for p in first.prompts]
    assert positions == sorted(positions)
    assert [full.references[i] for i in positions] == first.references
    assert [full.categories[i] for i in positions] == first.categories


def test_unknown_name_lists_the_sets():
    with pytest.raises(ConfigError) as error:
        load_eval_set("alpaca_eval", "/nowhere")
    assert all(name in str(error.value) for name in EVAL_SETS)


def test_missing_file_names_it_and_the_flag(tmp_path):
    with pytest.raises(DataNotFoundError) as error:
        load_eval_set("mt_bench", tmp_path)
    message = str(error.value)
    assert str(tmp_path / "mt_bench" / "question.jsonl") in message and "--data_dir" in message
    with pytest.raises(ConfigError, match="--data_dir"):
        load_eval_set("gsm8k")


@pytest.mark.parametrize("limit", [0, -3, 2.5, True])
def test_bad_limit(limit):
    with pytest.raises(ConfigError, match="limit"):
        load_eval_set("builtin", limit=limit)


def test_malformed_record_names_the_line_and_field(tmp_path):
    folder = tmp_path / "mt_bench"
    folder.mkdir()
    good = json.dumps({"question_id": 1, "category": "math", "turns": ["What is 1 + 1?", "And 2 + 2?"]})
    no_turns = json.dumps({"question_id": 2, "category": "math"})
    (folder / "question.jsonl").write_text(good + "\n" + no_turns + "\n")
    with pytest.raises(DataFormatError, match=r"line 2 of .*question\.jsonl: field 'turns'"):
        load_eval_set("mt_bench", tmp_path)
    (folder / "question.jsonl").write_text(good + "\n{not json\n")
    with pytest.raises(DataFormatError, match="bad JSON on line 2"):
        load_eval_set("mt_bench", tmp_path)
