"""Tests of the data layer (open_rlhf/data.py) and the built-in arithmetic task (open_rlhf/tasks/arithmetic.py).

Real data is read from the shared folder beside the checkout (<parent>/shared/data); those tests skip when it
is absent. Everything here is CPU-only and fast.
"""

from __future__ import annotations

import gzip
import json
import logging
import random
import re
from pathlib import Path

import pytest
from datasets import Dataset

from open_rlhf import data
from open_rlhf.data import DataFormatError
from open_rlhf.tasks import arithmetic
from open_rlhf.tasks.arithmetic import (
    ANSWER_INSTRUCTION,
    ArithmeticProblem,
    generate_problem,
    generate_problems,
)

_EQUATION = re.compile(r": (\d+) ([-+*/]) (\d+) = (\d+) ")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}


@pytest.fixture(scope="module")
def shared_data() -> Path:
    folder = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not folder.is_dir():
        pytest.skip(f"shared data folder {folder} not present")
    return folder


def _write_jsonl(path: Path, rows: list, gz: bool = False) -> Path:
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def _equations(solution: str) -> list[tuple[int, str, int, int]]:
    """(left, op, right, result) of every step line; asserts the layout: step lines then '#### N'."""
    lines = solution.split("\n")
    assert re.fullmatch(r"#### \d+", lines[-1]), lines[-1]
    found = []
    for line in lines[:-1]:
        match = _EQUATION.search(line)
        assert match is not None and line.endswith("."), line
        left, op, right, result = match.groups()
        found.append((int(left), op, int(right), int(result)))
    return found


# ---------------------------------------------------------------------------------------------------------
# Built-in task
# ---------------------------------------------------------------------------------------------------------

def test_builtin_first_problems_hand_checked():
    """Seed 0, problems 1-2. Hand check: 9 * 14 = 126, 126 + 18 = 144, 144 - 11 = 133; 9 * 19 = 171,
    171 / 9 = 19. Rejected: 9 * 14 written as 124 (-2 slip) and carried on (142, 131); 171 / 9 as 29 (+10)."""
    first, second = generate_problems(2, seed=0)
    assert first == ArithmeticProblem(
        question="Ben has 18 shells. He buys 9 packs of 14 shells and then gives 11 shells to Tom. "
                 "How many shells does Ben have now?",
        solution="Ben buys 9 packs of 14 shells: 9 * 14 = 126 shells.\nWith the 18 he had: 126 + 18 = 144 shells."
                 "\nHe gives 11 to Tom: 144 - 11 = 133 shells.\n#### 133",
        answer="133",
        rejected_solution="Ben buys 9 packs of 14 shells: 9 * 14 = 124 shells.\nWith the 18 he had: 124 + 18 = "
                          "142 shells.\nHe gives 11 to Tom: 142 - 11 = 131 shells.\n#### 131")
    assert second.question == ("A box holds 19 stickers. Ben fills 9 boxes, then packs all the stickers into "
                               "bags of 9. How many bags does he fill?")
    assert second.solution == "Ben fills 9 boxes of 19 stickers: 9 * 19 = 171 stickers.\nBags of 9: 171 / 9 = 19 bags.\n#### 19"
    assert second.answer == "19"
    assert second.rejected_solution.endswith("Bags of 9: 171 / 9 = 29 bags.\n#### 29")


def test_builtin_is_deterministic_and_seeds_differ():
    assert generate_problems(40, seed=7) == generate_problems(40, seed=7)
    assert generate_problems(10, seed=7) == generate_problems(40, seed=7)[:10]
    assert [p.question for p in generate_problems(40, seed=7)] != [p.question for p in generate_problems(40, seed=8)]
    assert generate_problem(random.Random(3)) == generate_problem(random.Random(3))
    assert arithmetic.sft_dataset(5).to_list() == arithmetic.sft_dataset(5).to_list()


def test_builtin_solutions_are_correct_and_small():
    problems = generate_problems(600, seed=11)
    ops, step_counts = set(), set()
    for p in problems:
        steps = _equations(p.solution)
        step_counts.add(len(steps))
        values = [v for left, _, right, result in steps for v in (left, right, result)]
        for left, op, right, result in steps:
            ops.add(op)
            assert _OPS[op](left, right) == result, p.solution  # "/" only when exact
        assert p.solution.endswith(f"#### {steps[-1][3]}") and p.answer == str(steps[-1][3])
        assert min(values) >= 2 and max(values) <= 220, p.solution
        numbers = [int(n) for n in re.findall(r"\d+", p.question)]
        assert numbers and all(2 <= n <= 20 for n in numbers), p.question
    assert ops == {"+", "-", "*", "/"} and step_counts == {2, 3}
    # At least 8 templates: questions with numbers, names, pronouns and objects masked.
    words = [w for person in arithmetic._PEOPLE for w in person] + [w for o in arithmetic._OBJECTS for w in o]
    mask = re.compile(r"\d+|\b(" + "|".join(words) + r")\b", flags=re.IGNORECASE)
    assert len({mask.sub("_", p.question) for p in problems}) >= 8


def test_builtin_rejected_has_one_consistent_slip():
    slip_kinds = set()
    for p in generate_problems(600, seed=12):
        gold, bad = _equations(p.solution), _equations(p.rejected_solution)
        final = int(p.rejected_solution.rsplit("#### ", 1)[1])
        assert final != int(p.answer) and final == bad[-1][3] >= 0
        k = next(i for i, (g, b) in enumerate(zip(gold, bad, strict=True)) if g != b)
        assert gold[:k] == bad[:k]
        left, op, right, result = bad[k]
        if op != gold[k][1]:
            slip_kinds.add("op")
            assert _OPS[op](left, right) == result
        else:
            slip_kinds.add("arith")
            assert result - _OPS[op](left, right) in (1, -1, 2, -2, 10, -10)
        for left, op, right, result in bad[k + 1:]:  # the slip is propagated, later steps are right
            assert _OPS[op](left, right) == result
    assert slip_kinds == {"op", "arith"}


def test_builtin_datasets_columns():
    sft = arithmetic.sft_dataset(3)
    assert sft.column_names == ["prompt", "completion", "answer"]
    first = generate_problems(1, seed=0)[0]
    assert sft[0]["prompt"] == [{"role": "user", "content": first.question + "\n" + ANSWER_INSTRUCTION}]
    assert sft[0]["completion"] == [{"role": "assistant", "content": first.solution}]
    assert sft[0]["answer"] == "133"
    pref = arithmetic.preference_dataset(3)
    assert pref.column_names == ["prompt", "chosen", "rejected", "answer"]
    assert pref[0]["chosen"][0]["content"].endswith("#### " + pref[0]["answer"])
    assert not pref[0]["rejected"][0]["content"].endswith("#### " + pref[0]["answer"])
    prompts = arithmetic.prompt_dataset(3)
    assert prompts.column_names == ["prompt", "answer"]
    assert prompts[0]["prompt"][0]["content"].endswith("Give the final answer after ####.")
    # The stage streams are different problems.
    assert sft[0]["prompt"] != prompts[0]["prompt"] != pref[0]["prompt"]


def test_builtin_eval_prompts_do_not_overlap_train():
    train_questions = {m["prompt"][0]["content"] for kind in ("sft", "preference", "prompt")
                       for m in data.load_splits("builtin", kind, eval_size=0)[0]}
    assert len(train_questions) > 5900  # 3 x 2000 minus a few repeats
    for kind in ("sft", "preference", "prompt"):
        train, evaluation = data.load_splits("builtin", kind, eval_size=300)
        assert len(train) == 2000 and len(evaluation) == 300
        eval_questions = [row["prompt"][0]["content"] for row in evaluation]
        assert len(set(eval_questions)) == 300
        assert not set(eval_questions) & train_questions
    # The eval stream differs from the train stream of the same seed even before filtering.
    assert arithmetic.eval_problems(5)[0] != generate_problems(1, seed=0)[0]
    assert data.load_prompt_dataset("builtin", split="test", builtin_size=4).to_list() == \
        arithmetic.prompt_dataset(4, split="eval").to_list()


# ---------------------------------------------------------------------------------------------------------
# Known raw formats
# ---------------------------------------------------------------------------------------------------------

_HH = {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman:  How do I boil an egg? "
                 "\n\nAssistant: Put it in boiling water for 8 minutes.",
       "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman:  How do I boil an egg? "
                   "\n\nAssistant: I don't know."}


def test_hh_rlhf_transcript_converted(tmp_path):
    path = _write_jsonl(tmp_path / "hh.jsonl", [_HH])
    assert data.detect_format(data.load_records(str(path))) == "hh_rlhf"
    pairs = data.load_preference_dataset(str(path))
    assert pairs.to_list() == [{
        "prompt": [{"role": "user", "content": "Hi there"},
                   {"role": "assistant", "content": "Hello! How can I help?"},
                   {"role": "user", "content": "How do I boil an egg?"}],
        "chosen": [{"role": "assistant", "content": "Put it in boiling water for 8 minutes."}],
        "rejected": [{"role": "assistant", "content": "I don't know."}]}]
    # SFT on the chosen response; RL prompts keep the prompt only.
    assert data.load_sft_dataset(str(path))[0]["completion"] == pairs[0]["chosen"]
    assert data.load_prompt_dataset(str(path)).to_list() == [{"prompt": pairs[0]["prompt"]}]


def test_hh_rlhf_different_prompts_is_an_error(tmp_path):
    other = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hey\n\nHuman: Bye\n\nAssistant: Bye!",
             "rejected": "\n\nHuman: Hi\n\nAssistant: Hey\n\nHuman: Help me\n\nAssistant: No."}
    path = _write_jsonl(tmp_path / "hh.jsonl", [_HH, other])
    with pytest.raises(DataFormatError, match=r"line 2 of .*hh\.jsonl: fields 'chosen' and 'rejected' do not "
                                              r"share the prompt.*Fix"):
        data.load_preference_dataset(str(path))


def test_hh_rlhf_empty_final_turn_skipped_with_count(tmp_path, caplog):
    empty = {"chosen": "\n\nHuman: Hi\n\nAssistant:", "rejected": "\n\nHuman: Hi\n\nAssistant: Hello"}
    path = _write_jsonl(tmp_path / "hh.jsonl", [_HH, empty, empty])
    with caplog.at_level(logging.WARNING, logger="open_rlhf.data"):
        pairs = data.load_preference_dataset(str(path))
    assert len(pairs) == 1
    assert "skipped 2 hh-rlhf records whose final chosen or rejected turn is empty" in caplog.text


def test_hh_rlhf_real_file(shared_data, caplog):
    path = shared_data / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
    with caplog.at_level(logging.WARNING, logger="open_rlhf.data"):
        pairs = data.load_preference_dataset(str(path))
    # 2312 records; 4 have an empty final turn (lines 87, 517, 926, 1104).
    assert len(pairs) == 2308 and "skipped 4 hh-rlhf records" in caplog.text
    first = pairs[0]
    assert [m["role"] for m in first["prompt"]] == ["user", "assistant", "user", "assistant", "user"]
    assert first["prompt"][0]["content"] == "what are some pranks with a pen i can do?"
    assert first["prompt"][-1]["content"] == "okay some of these do not have anything to do with pens"
    assert first["chosen"][0]["content"].startswith("No, sorry!  All of these involve a pen")
    assert first["rejected"][0]["content"].startswith("There are lots of funny things you can do with pens")
    for row in pairs.select(range(300)):
        roles = [m["role"] for m in row["prompt"]]
        assert roles[::2] == ["user"] * len(roles[::2]) and "assistant" not in roles[::2]
        assert roles[-1] == "user" and row["chosen"][0]["content"] and row["rejected"][0]["content"]


def test_hh_transcript_without_assistant_turn_is_an_error(tmp_path):
    """A chosen/rejected hh-rlhf transcript with no Assistant turn is not a pair (TRL's common-prefix prompt
    extraction would make one out of "...hi ther" / "e" / "e")."""
    cases = {
        "implicit_same.jsonl": [{"chosen": "\n\nHuman: hi there", "rejected": "\n\nHuman: hi there"}],
        "implicit_differ.jsonl": [{"chosen": "\n\nHuman: hi there", "rejected": "\n\nHuman: hello"}],
        "hh_line2.jsonl": [_HH, {"chosen": "\n\nHuman: Hi\n\nAssistant: Hey",
                                 "rejected": "\n\nHuman: Hi\n\nHuman: Hey"}],
    }
    for name, rows in cases.items():
        path = _write_jsonl(tmp_path / name, rows)
        line, column = (2, "rejected") if name.startswith("hh") else (1, "chosen")
        with pytest.raises(DataFormatError, match=rf"line {line} of .*{re.escape(name)}: field '{column}' is an "
                                                  rf"hh-rlhf transcript with no '\\n\\nAssistant:' turn.*Fix: an "
                                                  rf"hh-rlhf transcript needs a final Assistant turn"):
            data.load_preference_dataset(str(path))


def test_pair_with_chosen_equal_to_rejected_is_an_error(tmp_path):
    """In every pair format a pair whose chosen equals its rejected is an error naming the file and line."""
    user = {"role": "user", "content": "Sky?"}
    same_hh = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "\n\nHuman: Hi\n\nAssistant: Hello "}
    cases = {
        "hh.jsonl": [_HH, same_hh],  # equal final turns once stripped
        "pref.jsonl": [{"prompt": "Sky?", "chosen": "Blue", "rejected": "Green"},
                       {"prompt": "Sea?", "chosen": "Blue", "rejected": "Blue"}],
        "pref_mixed.jsonl": [{"prompt": "Sky?", "chosen": "Blue",
                              "rejected": [{"role": "assistant", "content": "Green"}]},
                             {"prompt": "Sea?", "chosen": "Blue",
                              "rejected": [{"role": "assistant", "content": "Blue"}]}],
        "implicit.jsonl": [{"chosen": "Sky? Blue", "rejected": "Sky? Green"},
                           {"chosen": "Sky? Blue", "rejected": "Sky? Blue"}],
        "implicit_conv.jsonl": [{"chosen": [user, {"role": "assistant", "content": "Blue"}],
                                 "rejected": [user, {"role": "assistant", "content": "Green"}]},
                                {"chosen": [user, {"role": "assistant", "content": "Blue"}],
                                 "rejected": [user, {"role": "assistant", "content": "Blue"}]}],
    }
    for name, rows in cases.items():
        path = _write_jsonl(tmp_path / name, rows)
        with pytest.raises(DataFormatError, match=rf"line 2 of .*{re.escape(name)}: fields 'chosen' and 'rejected' "
                                                  rf"are the same.*Fix: chosen and rejected must differ"):
            data.load_preference_dataset(str(path))
        # The first line alone is a good pair.
        assert len(data.load_preference_dataset(str(_write_jsonl(tmp_path / f"ok_{name}", rows[:1])))) == 1


def test_hh_rlhf_real_file_splits(shared_data_dir):
    """The real harmless-base file (none of whose pairs is equal or lacks an Assistant turn) still splits; KTO
    holds out exactly the DPO eval pairs, unpaired."""
    path = str(shared_data_dir / "hh-rlhf" / "harmless-base" / "test.jsonl.gz")
    train, pairs = data.load_splits(path, "preference", eval_size=64, seed=42)
    assert (len(train), len(pairs)) == (2308 - 64, 64)
    kto_train, held_out = data.load_splits(path, "unpaired", eval_size=64, seed=42)
    assert (len(kto_train), len(held_out)) == (2 * (2308 - 64), 128)
    expected = sorted(json.dumps([p, c, label]) for p, ch, rj in zip(pairs["prompt"], pairs["chosen"],
                                                                     pairs["rejected"], strict=True)
                      for c, label in ((ch, True), (rj, False)))
    assert sorted(json.dumps([p, c, label]) for p, c, label in zip(held_out["prompt"], held_out["completion"],
                                                                   held_out["label"], strict=True)) == expected


def test_gsm8k_converted(tmp_path):
    rows = [{"question": "Tom has 3 bags of 400 marbles. How many?", "answer": "3*400=<<3*400=1200>>1200\n#### 1,200"},
            {"question": " Ann has 5 pens and loses 2. How many are left? ", "answer": "5-2=<<5-2=3>>3\n#### 3"}]
    path = _write_jsonl(tmp_path / "gsm.jsonl", rows)
    assert data.detect_format(data.load_records(str(path))) == "gsm8k"
    sft = data.load_sft_dataset(str(path))
    assert sft.to_list()[0] == {
        "prompt": [{"role": "user", "content": "Tom has 3 bags of 400 marbles. How many?\n"
                                               "Give the final answer after ####."}],
        "completion": [{"role": "assistant", "content": "3*400=1200\n#### 1,200"}],
        "answer": "1200"}
    assert sft[1]["prompt"][0]["content"].startswith("Ann has 5 pens")
    assert data.load_prompt_dataset(str(path))["answer"] == ["1200", "3"]


def test_gsm8k_missing_marker_names_line_and_field(tmp_path):
    rows = [{"question": "q1", "answer": "1+1=2\n#### 2"}, {"question": "q2", "answer": "The answer is 4"}]
    path = _write_jsonl(tmp_path / "gsm.jsonl", rows)
    with pytest.raises(DataFormatError, match=r"line 2 of .*gsm\.jsonl: field 'answer' has no '#### ' marker"):
        data.load_sft_dataset(str(path))


def test_gsm8k_real_file(shared_data):
    sft = data.load_sft_dataset(str(shared_data / "gsm8k" / "test.jsonl"))
    assert len(sft) == 1319
    assert sft[0]["answer"] == "18"
    assert sft[0]["completion"][0]["content"] == (
        "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes 9 * 2 = $18 every day at the farmer’s market."
        "\n#### 18")
    assert sft[0]["prompt"][0]["content"].startswith("Janet’s ducks lay 16 eggs per day.")
    assert not any("<<" in row[0]["content"] for row in sft["completion"])
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", answer) for answer in sft["answer"])


# ---------------------------------------------------------------------------------------------------------
# TRL standard formats
# ---------------------------------------------------------------------------------------------------------

def test_detect_format_of_each_standard_format():
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    cases = {
        "prompt_completion": {"prompt": ["p"], "completion": ["c"]},
        "preference": {"prompt": ["p"], "chosen": ["c"], "rejected": ["r"]},
        "implicit_preference": {"chosen": [conv], "rejected": [conv]},
        "messages": {"messages": [conv]},
        "prompt_only": {"prompt": ["p"]},
        "unpaired_preference": {"prompt": ["p"], "completion": ["c"], "label": [True]},
        "gsm8k": {"question": ["q"], "answer": ["#### 1"]},
        "hh_rlhf": {"chosen": [_HH["chosen"]], "rejected": [_HH["rejected"]]},
    }
    for expected, columns in cases.items():
        assert data.detect_format(Dataset.from_dict(columns)) == expected


def test_prompt_completion_strings_become_conversational(tmp_path):
    path = _write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "2+2?", "completion": "4", "answer": 4}])
    assert data.load_sft_dataset(str(path)).to_list() == [{
        "prompt": [{"role": "user", "content": "2+2?"}],
        "completion": [{"role": "assistant", "content": "4"}], "answer": "4"}]
    assert data.load_sft_dataset(str(path), conversational=False).to_list() == [
        {"prompt": "2+2?", "completion": "4", "answer": "4"}]


def test_explicit_and_implicit_preference(tmp_path):
    explicit = _write_jsonl(tmp_path / "pref.jsonl", [{"prompt": "Sky?", "chosen": "Blue", "rejected": "Green"}])
    assert data.load_preference_dataset(str(explicit)).to_list() == [{
        "prompt": [{"role": "user", "content": "Sky?"}], "chosen": [{"role": "assistant", "content": "Blue"}],
        "rejected": [{"role": "assistant", "content": "Green"}]}]
    user = {"role": "user", "content": "What color is the sky?"}
    implicit = _write_jsonl(tmp_path / "implicit.jsonl", [
        {"chosen": [user, {"role": "assistant", "content": "Blue."}],
         "rejected": [user, {"role": "assistant", "content": "Green."}]}])
    assert data.load_preference_dataset(str(implicit)).to_list() == [{
        "prompt": [user], "chosen": [{"role": "assistant", "content": "Blue."}],
        "rejected": [{"role": "assistant", "content": "Green."}]}]


def test_messages_prompt_only_and_unpaired(tmp_path):
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    messages = _write_jsonl(tmp_path / "m.jsonl", [{"messages": conv}])
    assert data.load_sft_dataset(str(messages)).to_list() == [{"messages": conv}]
    assert data.load_prompt_dataset(str(messages)).to_list() == [{"prompt": conv[:1]}]
    prompts = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi"}])
    assert data.load_prompt_dataset(str(prompts)).to_list() == [{"prompt": [{"role": "user", "content": "Hi"}]}]
    with pytest.raises(DataFormatError, match=r"holds only prompts.*SFT needs completions"):
        data.load_sft_dataset(str(prompts))
    with pytest.raises(DataFormatError, match=r"prompt_only format.*not preference pairs"):
        data.load_preference_dataset(str(prompts))
    unpaired = _write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "a", "completion": "good", "label": True},
                                                     {"prompt": "a", "completion": "bad", "label": False}])
    assert data.load_sft_dataset(str(unpaired))["completion"] == [[{"role": "assistant", "content": "good"}]]


# ---------------------------------------------------------------------------------------------------------
# Files and errors
# ---------------------------------------------------------------------------------------------------------

def test_json_parquet_gzip_and_folder_sources(tmp_path):
    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(4)]
    (tmp_path / "list.json").write_text(json.dumps(rows))
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": rows}))
    Dataset.from_list(rows).to_parquet(str(tmp_path / "rows.parquet"))
    _write_jsonl(tmp_path / "rows.jsonl.gz", rows, gz=True)
    for name in ("list.json", "wrapped.json", "rows.parquet", "rows.jsonl.gz"):
        assert data.load_records(str(tmp_path / name)).to_list() == rows, name
    folder = tmp_path / "folder"
    folder.mkdir()
    _write_jsonl(folder / "b.jsonl", rows[2:])
    _write_jsonl(folder / "a.jsonl", rows[:2])
    (folder / "notes.txt").write_text("ignored")
    assert data.load_records(str(folder))["prompt"] == ["p0", "p1", "p2", "p3"]  # sorted by file name


def test_folder_without_the_requested_split_is_an_error(tmp_path):
    """A folder laid out by split but without the split asked for does not fall back to its other splits."""
    folder = tmp_path / "by_split"
    folder.mkdir()
    _write_jsonl(folder / "test.jsonl", [{"prompt": "held-out", "completion": "c"}])
    _write_jsonl(folder / "validation-00000.jsonl", [{"prompt": "held-out 2", "completion": "c"}])
    message = (r"folder .*by_split holds files named by split \(test\.jsonl, validation-00000\.jsonl\) but none "
               r"for split 'train'.*Fix: pass the file path directly, or name a file 'train\.jsonl'")
    with pytest.raises(DataFormatError, match=message):
        data.load_records(str(folder))
    with pytest.raises(DataFormatError, match=message):
        data.load_splits(str(folder), "sft", eval_size=0)
    assert data.load_sft_dataset(str(folder), split="test")["prompt"] == [[{"role": "user", "content": "held-out"}]]
    assert data.load_records(str(folder / "test.jsonl"))["prompt"] == ["held-out"]


def test_folder_without_split_names_uses_every_file(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    for name in ("part-1.jsonl", "data.jsonl", "testimonials.jsonl"):  # "testimonials" is no split name
        _write_jsonl(folder / name, [{"prompt": name, "completion": "c"}])
    assert data.load_records(str(folder))["prompt"] == ["data.jsonl", "part-1.jsonl", "testimonials.jsonl"]
    assert data.load_records(str(folder), split="test")["prompt"] == ["testimonials.jsonl"]  # a name prefix


def test_missing_field_names_line_and_field(tmp_path):
    path = _write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}] * 2
                        + [{"prompt": "a", "chosen": "b"}])
    with pytest.raises(DataFormatError, match=r"line 3 of .*pairs\.jsonl: record has missing field 'rejected' "
                                              r"\(the first record, line 1 of .*\).*Fix"):
        data.load_records(str(path))


def test_wrong_type_errors(tmp_path):
    mixed = _write_jsonl(tmp_path / "mixed.jsonl", [{"prompt": "a", "completion": "b"},
                                                    {"prompt": "a", "completion": 7}])
    with pytest.raises(DataFormatError, match=r"line 2 of .*mixed\.jsonl: field 'completion' is a number, but it "
                                              r"is a string in line 1"):
        data.load_records(str(mixed))
    numbers = _write_jsonl(tmp_path / "gsm.jsonl", [{"question": 12, "answer": "#### 1"}])
    with pytest.raises(DataFormatError, match=r"line 1 of .*gsm\.jsonl: field 'question' must be a string, got "
                                              r"a number"):
        data.load_sft_dataset(str(numbers))
    bad_messages = _write_jsonl(tmp_path / "m.jsonl", [{"prompt": [{"role": "user", "text": "hi"}],
                                                        "completion": "x"}])
    with pytest.raises(DataFormatError, match=r"line 1 of .*m\.jsonl: message 1 of field 'prompt' is not a"):
        data.load_sft_dataset(str(bad_messages))


def test_empty_files_are_errors(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text("\n  \n\n")
    for name in ("empty.jsonl", "blank.jsonl"):
        with pytest.raises(DataFormatError, match=rf"{name} is empty: no records found"):
            data.load_records(str(tmp_path / name))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataFormatError, match="holds no data file"):
        data.load_records(str(tmp_path / "empty_dir"))


def test_bad_json_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b",}\n')
    with pytest.raises(DataFormatError, match=r"bad JSON on line 3 of .*bad\.jsonl: "):
        data.load_records(str(path))
    path.write_text('{"prompt": "a"}\n["not", "an", "object"]\n')
    with pytest.raises(DataFormatError, match=r"line 2 of .*bad\.jsonl is a JSON list, not an object"):
        data.load_records(str(path))
    whole = tmp_path / "bad.json"
    whole.write_text('[{"prompt": "a"},\n {"prompt": }]')
    with pytest.raises(DataFormatError, match=r"bad JSON on line 2 of .*bad\.json"):
        data.load_records(str(whole))


def test_partial_last_line_is_skipped_with_a_warning(tmp_path, caplog):
    """A last line with no final newline that is not JSON is what an interrupted append leaves (here cut inside
    the two-byte 'é', so it is not even UTF-8): it is skipped with a warning naming the file and line."""
    path = tmp_path / "votes.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n\n{"prompt": "b"}\n{"prompt": "caf' + "é".encode()[:1])
    with caplog.at_level(logging.WARNING, logger="open_rlhf.data"):
        assert data.load_records(str(path)).to_list() == [{"prompt": "a"}, {"prompt": "b"}]
    assert re.search(r"skipped line 4 of .*votes\.jsonl: a partial line \(no final newline, not valid JSON\) left "
                     r"by an interrupted append", caplog.text)
    path.write_bytes(b'{"prompt": "a"}\n{"prompt": "b"}')  # a complete last record without its newline is kept
    assert data.load_records(str(path)).to_list() == [{"prompt": "a"}, {"prompt": "b"}]
    path.write_bytes(b'{"prompt": "a')
    with pytest.raises(DataFormatError, match=r"votes\.jsonl is empty: no records found"):
        data.load_records(str(path))


def test_other_bad_lines_are_still_errors(tmp_path):
    """Only an unterminated last line is taken for an interrupted append: a bad line in the middle (even of a
    file without a final newline) or a bad last line that ends with a newline names its line."""
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b\n{"prompt": "c"}')
    with pytest.raises(DataFormatError, match=r"bad JSON on line 2 of .*bad\.jsonl: Unterminated string"):
        data.load_records(str(path))
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c\n')
    with pytest.raises(DataFormatError, match=r"bad JSON on line 3 of .*bad\.jsonl: "):
        data.load_records(str(path))
    path.write_bytes(b'{"prompt": "\xff"}\n{"prompt": "b')  # invalid UTF-8 before the last line: an error
    with pytest.raises(DataFormatError, match=r"bad\.jsonl is not UTF-8 text"):
        data.load_records(str(path))


def test_truncated_gzip_is_an_error(tmp_path):
    full = gzip.compress(("".join(json.dumps({"prompt": f"p{i}" * 50}) + "\n" for i in range(200))).encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataFormatError, match=r"truncated or corrupt gzip file .*cut\.jsonl\.gz"):
        data.load_records(str(path))


def test_unknown_format_and_missing_file(tmp_path):
    path = _write_jsonl(tmp_path / "odd.jsonl", [{"instruction": "a", "output": "b"}])
    with pytest.raises(DataFormatError, match=r"unknown data format, columns found: \['instruction', 'output'\]"
                                              r".*prompt_completion: prompt, completion"):
        data.load_sft_dataset(str(path))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        data.load_records(str(tmp_path / "nope.jsonl"))
    with pytest.raises(FileNotFoundError, match="missing"):
        data.load_sft_dataset("./missing/dir")


# ---------------------------------------------------------------------------------------------------------
# Sampling and splits
# ---------------------------------------------------------------------------------------------------------

def test_max_samples_is_a_seeded_subset():
    first = data.load_prompt_dataset("builtin", builtin_size=50, max_samples=10, seed=1)
    again = data.load_prompt_dataset("builtin", builtin_size=50, max_samples=10, seed=1)
    other = data.load_prompt_dataset("builtin", builtin_size=50, max_samples=10, seed=2)
    full = data.load_prompt_dataset("builtin", builtin_size=50)
    assert len(first) == 10 and first.to_list() == again.to_list() != other.to_list()
    assert all(row in full.to_list() for row in first.to_list())


def test_train_eval_split_is_deterministic_and_disjoint():
    dataset = Dataset.from_dict({"prompt": [f"p{i}" for i in range(100)]})
    train, evaluation = data.train_eval_split(dataset, 10, seed=3)
    train2, evaluation2 = data.train_eval_split(dataset, 10.0, seed=3)  # a CLI float count
    assert (len(train), len(evaluation)) == (90, 10)
    assert evaluation["prompt"] == evaluation2["prompt"] and train["prompt"] == train2["prompt"]
    assert not set(train["prompt"]) & set(evaluation["prompt"])
    assert data.train_eval_split(dataset, 10, seed=4)[1]["prompt"] != evaluation["prompt"]
    assert len(data.train_eval_split(dataset, 0.25)[1]) == 25
    assert len(data.train_eval_split(dataset, 0)[1]) == 0
    with pytest.raises(ValueError, match="leaves no training data"):
        data.train_eval_split(dataset, 100)
    with pytest.raises(ValueError, match="neither a whole count"):
        data.train_eval_split(dataset, 2.5)


def test_load_splits_eval_does_not_depend_on_max_samples(tmp_path):
    path = _write_jsonl(tmp_path / "pc.jsonl", [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(50)])
    train, evaluation = data.load_splits(str(path), "sft", eval_size=5, seed=0)
    small_train, same_eval = data.load_splits(str(path), "sft", eval_size=5, seed=0, max_samples=8)
    assert (len(train), len(evaluation), len(small_train)) == (45, 5, 8)
    assert evaluation.to_list() == same_eval.to_list()
    assert not {r[0]["content"] for r in small_train["prompt"]} & {r[0]["content"] for r in evaluation["prompt"]}


def test_unpaired_for_kto_from_native_and_paired_data(tmp_path):
    """Native unpaired rows pass through; each pair becomes (chosen, True) and (rejected, False)."""
    native = _write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "a", "completion": "good", "label": True},
                                                   {"prompt": "a", "completion": "bad", "label": False}])
    got = data.load_unpaired_dataset(str(native))
    assert got["label"] == [True, False] and got["completion"][1] == [{"role": "assistant", "content": "bad"}]
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "q", "chosen": "yes", "rejected": "no"}])
    got = data.load_unpaired_dataset(str(pairs))
    assert [(c[0]["content"], label) for c, label in zip(got["completion"], got["label"], strict=True)] == [("yes", True),
                                                                                            ("no", False)]
    assert got["prompt"] == [[{"role": "user", "content": "q"}]] * 2
    sft = _write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "q", "completion": "c"}])
    with pytest.raises(data.DataFormatError, match="not \\(un\\)paired preferences"):
        data.load_unpaired_dataset(str(sft))


def test_load_splits_unpaired_builtin_holds_out_the_same_pairs_as_dpo():
    """The KTO eval set is exactly the DPO eval pairs, unpaired (so both methods are evaluated alike)."""
    train, held_out = data.load_splits("builtin", "unpaired", eval_size=4, seed=0, max_samples=10)
    _, pairs = data.load_splits("builtin", "preference", eval_size=4, seed=0)
    assert len(train) == 10 and len(held_out) == 8 and sum(held_out["label"]) == 4
    assert held_out["completion"][:4] == pairs["chosen"] and held_out["completion"][4:] == pairs["rejected"]


def test_load_splits_unpaired_file_holds_out_the_same_pairs_as_dpo(tmp_path):
    """From a file of pairs the pairs are split before unpairing: both halves of a held-out pair are in eval,
    the held-out pairs are the DPO eval pairs, and ``eval_size`` counts pairs."""
    rows = [{"prompt": f"question {i}?", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(30)]
    folder = tmp_path / "pairs"
    folder.mkdir()
    path = _write_jsonl(folder / "train.jsonl", rows)

    def prompts(dataset):
        return [p[0]["content"] for p in dataset["prompt"]]

    for source in (str(path), str(folder)):
        train, held_out = data.load_splits(source, "unpaired", eval_size=6, seed=0)
        _, pairs = data.load_splits(source, "preference", eval_size=6, seed=0)
        assert (len(train), len(held_out), sum(held_out["label"])) == (48, 12, 6)
        assert set(prompts(held_out)) == set(prompts(pairs)) and len(set(prompts(held_out))) == 6
        assert not set(prompts(held_out)) & set(prompts(train))
        got = sorted((p[0]["content"], c[0]["content"], label) for p, c, label in
                     zip(held_out["prompt"], held_out["completion"], held_out["label"], strict=True))
        assert got == sorted((p, f"{kind} {p.split()[1][:-1]}", kind == "good") for p in prompts(pairs)
                             for kind in ("good", "bad"))
        # max_samples caps the unpaired training examples and leaves the eval set as it is.
        small, same = data.load_splits(source, "unpaired", eval_size=6, seed=0, max_samples=10)
        assert len(small) == 10 and same.to_list() == held_out.to_list()
        assert not set(prompts(small)) & set(prompts(held_out))
        # A fraction is of the pairs too.
        assert len(data.load_splits(source, "unpaired", eval_size=0.2, seed=0)[1]) == 12
    # Native unpaired data is split as it is: eval_size counts examples.
    native = _write_jsonl(tmp_path / "kto.jsonl", [{"prompt": f"q{i}", "completion": f"c{i}", "label": i % 2 == 0}
                                                   for i in range(10)])
    train, held_out = data.load_splits(str(native), "unpaired", eval_size=3, seed=0)
    assert (len(train), len(held_out)) == (7, 3)
