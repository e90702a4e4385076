"""--streaming (issue 15, data larger than memory): `open_rlhf.data.load_streaming_splits` and the stages on it.

What is checked: a stream gives the in-memory loaders' examples in file order (every format, .jsonl.gz, parquet,
folders, the real hh-rlhf file); a bad record names its file and line, also in the middle of training; the held-out
split is the first ``eval_size`` examples, disjoint from training on every pass; peak memory stays flat while a
~200 MB file is streamed; SFT, reward, DPO and KTO each train on a stream (KTO's KL completions are mismatched within
each batch); a stopped and resumed SFT run ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import gzip
import itertools
import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from open_rlhf import data, stages
from open_rlhf.errors import ConfigError, DataFormatError, DataNotFoundError
from open_rlhf.memory import PeakMemory

COMMON = ["--per_device_train_batch_size", "2", "--report_to", "none", "--logging_steps", "1", "--learning_rate", "1e-3",
          "--streaming"]


def _write_jsonl(path: Path, rows: list) -> Path:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as file:
        file.writelines(json.dumps(row) + "\n" for row in rows)
    return path


def _sft_rows(n: int) -> list[dict]:
    return [{"prompt": f"What is {i} + 1?", "completion": f"{i + 1}"} for i in range(n)]


def _pair_rows(n: int) -> list[dict]:
    return [{"prompt": f"What is {i} + 1?", "chosen": f"{i + 1}", "rejected": f"{i + 2}"} for i in range(n)]


def _one_pass(source: str, kind: str, eval_size: int, **kwargs) -> tuple[list, list]:
    """(eval rows, the first pass of training rows) of a stream (the training stream never ends by itself)."""
    train, evaluation = data.load_streaming_splits(source, kind, eval_size, **kwargs)
    stream = data._ExampleStream(source, "train", kind, True)
    n_train = sum(1 for _ in stream) - eval_size
    if stream.paired:
        n_train *= 2
        n_train = min(n_train, kwargs.get("max_samples") or n_train)
    elif kwargs.get("max_samples"):
        n_train = min(n_train, kwargs["max_samples"])
    return ([] if evaluation is None else evaluation.to_list()), list(itertools.islice(iter(train), n_train))


def run(stage: str, args: list[str]):
    stages.run_stage(stage, *stages.make_parser(stage).parse_args_and_config(args=args))


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


# ---------------------------------------------------------------------------------------------------------
# The stream gives the in-memory loaders' examples
# ---------------------------------------------------------------------------------------------------------

_HH = {"chosen": "\n\nHuman: How do I boil an egg?\n\nAssistant: Boiling water, 8 minutes.",
       "rejected": "\n\nHuman: How do I boil an egg?\n\nAssistant: I don't know."}
_HH_EMPTY = {"chosen": "\n\nHuman: Hi\n\nAssistant:", "rejected": "\n\nHuman: Hi\n\nAssistant: Hello"}
_GSM8K = {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"}


@pytest.mark.parametrize(("rows", "kind", "loader"), [
    (_sft_rows(9), "sft", data.load_sft_dataset),
    ([_GSM8K] * 5, "sft", data.load_sft_dataset),
    (_pair_rows(9), "sft", data.load_sft_dataset),  # SFT on the chosen responses
    ([{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
      for i in range(6)], "sft", data.load_sft_dataset),
    ([{"prompt": f"p{i}", "completion": f"c{i}", "label": i % 3 != 0} for i in range(9)], "sft",
     data.load_sft_dataset),  # the desirable completions only
    (_pair_rows(9), "preference", data.load_preference_dataset),
    ([_HH, _HH_EMPTY, _HH, _HH], "preference", data.load_preference_dataset),  # the empty pair is skipped
    ([{"chosen": f"Q{i}? A{i}", "rejected": f"Q{i}? B{i}"} for i in range(6)], "preference",
     data.load_preference_dataset),  # implicit prompt
    ([{"prompt": f"p{i}", "completion": f"c{i}", "label": i % 2 == 0} for i in range(8)], "unpaired",
     data.load_unpaired_dataset),
])
def test_stream_gives_the_in_memory_examples_in_file_order(tmp_path, rows, kind, loader):
    path = _write_jsonl(tmp_path / "data.jsonl", rows)
    held_out, train = _one_pass(str(path), kind, eval_size=2)
    assert held_out + train == loader(str(path)).to_list()


def test_pairs_for_kto_are_split_then_unpaired_in_blocks(tmp_path):
    """From pairs, ``eval_size`` counts pairs (the same pairs DPO holds out); the rest are unpaired a block at a time:
    the block's chosen halves, then its rejected halves, as TRL's `unpair_preference_dataset` orders them."""
    path = _write_jsonl(tmp_path / "pairs.jsonl", _pair_rows(7))
    held_out, train = _one_pass(str(path), "unpaired", eval_size=2)
    assert held_out == data.unpair(data.load_preference_dataset(str(path)).select(range(2))).to_list()
    prompts = [row["prompt"][0]["content"] for row in train]
    assert prompts == [f"What is {i} + 1?" for i in range(2, 7)] * 2
    assert [row["label"] for row in train] == [True] * 5 + [False] * 5
    # max_samples counts unpaired examples
    _, capped = _one_pass(str(path), "unpaired", eval_size=2, max_samples=4)
    assert [(row["prompt"][0]["content"], row["label"]) for row in capped] == [
        ("What is 2 + 1?", True), ("What is 3 + 1?", True), ("What is 2 + 1?", False), ("What is 3 + 1?", False)]


def test_a_seed_shuffles_each_block_of_unpaired_examples(tmp_path, monkeypatch):
    """Without a seed a block gives all its desirable examples first, so KTO's batches are one-sided; with the
    stage's seed each block's examples are shuffled: the same examples per block, both labels in each block's first
    half, the same order on every read and every pass, another order for another seed."""
    monkeypatch.setattr(data, "_UNPAIR_BLOCK", 6)  # 12 training pairs: two blocks
    path = str(_write_jsonl(tmp_path / "pairs.jsonl", _pair_rows(14)))

    def key(row):
        return row["prompt"][0]["content"], row["completion"][0]["content"], row["label"]

    _, plain = _one_pass(path, "unpaired", eval_size=2)
    _, seeded = _one_pass(path, "unpaired", eval_size=2, seed=0)
    assert len(seeded) == 24
    for block in (slice(0, 12), slice(12, 24)):
        assert sorted(map(key, seeded[block])) == sorted(map(key, plain[block]))
    assert [row["label"] for row in plain[:12]] == [True] * 6 + [False] * 6
    for batch in (seeded[:6], seeded[12:18]):  # the all-desirable halves of the unshuffled blocks
        assert {row["label"] for row in batch} == {True, False}
    train, _ = data.load_streaming_splits(path, "unpaired", eval_size=2, seed=0)
    two_passes = list(itertools.islice(iter(train), 48))
    assert two_passes[:24] == seeded and two_passes[24:] == seeded
    assert _one_pass(path, "unpaired", eval_size=2, seed=1)[1] != seeded


def test_gzip_parquet_and_folder_sources(tmp_path):
    rows = _sft_rows(6)
    _write_jsonl(tmp_path / "rows.jsonl.gz", rows)
    Dataset.from_list(rows).to_parquet(str(tmp_path / "rows.parquet"))
    folder = tmp_path / "folder"
    folder.mkdir()
    _write_jsonl(folder / "b.jsonl", rows[3:])
    Dataset.from_list(rows[:3]).to_parquet(str(folder / "a.parquet"))  # files in name order
    expected = data.load_sft_dataset(str(tmp_path / "rows.jsonl.gz")).to_list()
    for source in (tmp_path / "rows.jsonl.gz", tmp_path / "rows.parquet", folder):
        held_out, train = _one_pass(str(source), "sft", eval_size=1)
        assert held_out + train == expected, source


def test_hub_dataset_streams_through_datasets_streaming_mode(monkeypatch):
    """A Hub id goes to ``datasets.load_dataset(..., streaming=True)`` (stubbed: the Hub is offline here); its
    records get the same conversion and checks, a bad one named by its record number."""
    from datasets import IterableDataset

    rows = [*_sft_rows(5), {"prompt": "p", "completion": None}]
    calls = []

    def load_dataset(source, split, streaming=False):
        calls.append((source, split, streaming))
        return IterableDataset.from_generator(lambda: iter(rows))

    monkeypatch.setattr(data.datasets, "load_dataset", load_dataset)
    train, held_out = data.load_streaming_splits("org/name", "sft", eval_size=2)
    assert [row["completion"][0]["content"] for row in held_out] == ["1", "2"]
    assert [row["prompt"][0]["content"] for row in itertools.islice(iter(train), 3)] == [
        f"What is {i} + 1?" for i in range(2, 5)]
    assert calls[0] == ("org/name", "train", True)
    with pytest.raises(DataFormatError, match=r"record 6 of hub dataset 'org/name' \(split 'train'\): field "
                                              r"'completion' must be a string or a list of messages"):
        list(itertools.islice(iter(train), 10))


def test_real_hh_rlhf_file_streams_as_it_loads(shared_data_dir):
    path = shared_data_dir / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
    held_out, train = _one_pass(str(path), "preference", eval_size=16)
    assert held_out + train == data.load_preference_dataset(str(path)).to_list()


# ---------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------

def test_bad_records_name_the_file_and_line_when_the_stream_reaches_them(tmp_path):
    """The first rows load (so the split and the first steps succeed); the error comes when the stream reaches the
    bad line, with the in-memory loader's message."""
    good = [json.dumps(row) for row in _sft_rows(30)]
    cases = {
        "bad_json.jsonl": (good[:20] + ['{"prompt": "x", "completion": '] + good[20:],
                           r"bad JSON on line 21 of .*bad_json\.jsonl: .*Fix: each line"),
        "missing.jsonl": (good[:25] + ['{"prompt": "x"}'] + good[25:],
                          r"line 26 of .*missing\.jsonl: record has missing field 'completion'"),
        "wrong_type.jsonl": (good[:12] + ['{"prompt": "x", "completion": 3}'] + good[12:],
                             r"line 13 of .*wrong_type\.jsonl: field 'completion' is a number, but it is a string "
                             r"in line 1 of"),
        "not_object.jsonl": (good[:5] + ["[1, 2]"] + good[5:], r"line 6 of .*not_object\.jsonl is a JSON list"),
        "bad_utf8.jsonl": (good[:7] + ['{"prompt": "\xff", "completion": "y"}'] + good[7:],
                           r"line 8 of .*bad_utf8\.jsonl is not UTF-8"),
    }
    for name, (lines, message) in cases.items():
        path = tmp_path / name
        encoded = [line.encode("latin-1") if "\xff" in line else line.encode() for line in lines]
        path.write_bytes(b"\n".join(encoded) + b"\n")
        train, held_out = data.load_streaming_splits(str(path), "sft", eval_size=4)
        assert len(held_out) == 4
        with pytest.raises(DataFormatError, match=message):
            list(itertools.islice(iter(train), 100))
    gsm8k = _write_jsonl(tmp_path / "gsm8k.jsonl", [_GSM8K] * 5 + [{"question": "q", "answer": "no marker"}])
    train, _ = data.load_streaming_splits(str(gsm8k), "sft", eval_size=2)
    with pytest.raises(DataFormatError, match=r"line 6 of .*gsm8k\.jsonl: field 'answer' has no '#### ' marker"):
        list(itertools.islice(iter(train), 10))


def test_partial_last_line_is_skipped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "votes.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in _sft_rows(3)) + '{"prompt": "interrupt')
    with caplog.at_level(logging.WARNING, logger="open_rlhf.data"):
        held_out, train = _one_pass(str(path), "sft", eval_size=1)
    assert len(held_out) == 1 and len(train) == 2
    assert "skipped line 4 of" in caplog.text and "partial line" in caplog.text


def test_truncated_gzip_is_an_error(tmp_path):
    whole = gzip.compress("".join(json.dumps(row) + "\n" for row in _sft_rows(2000)).encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    train, _ = data.load_streaming_splits(str(path), "sft", eval_size=1)
    with pytest.raises(DataFormatError, match=r"truncated or corrupt gzip file .*cut\.jsonl\.gz \(after line \d+\)"):
        list(itertools.islice(iter(train), 5000))


def test_sources_and_options_that_cannot_stream(tmp_path):
    rows = _sft_rows(5)
    jsonl = _write_jsonl(tmp_path / "rows.jsonl", rows)
    (tmp_path / "list.json").write_text(json.dumps(rows))
    with pytest.raises(DataFormatError, match=r"list\.json is one JSON document.*Fix: convert it to JSON Lines"):
        data.load_streaming_splits(str(tmp_path / "list.json"), "sft", 1)
    with pytest.raises(ConfigError, match="built-in task, generated in memory"):
        data.load_streaming_splits("builtin", "sft", 1)
    with pytest.raises(ConfigError, match=r"--eval_size 0\.1 is a fraction.*count"):
        data.load_streaming_splits(str(jsonl), "sft", 0.1)
    with pytest.raises(ConfigError, match=r"--eval_size 5 leaves no training data from the 5 examples"):
        data.load_streaming_splits(str(jsonl), "sft", 5)
    with pytest.raises(ConfigError, match="'prompt' data kind cannot be streamed"):
        data.load_streaming_splits(str(jsonl), "prompt", 1)
    with pytest.raises(DataFormatError, match="not preference pairs"):
        data.load_streaming_splits(str(jsonl), "preference", 1)
    prompts = _write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "p"}] * 3)
    with pytest.raises(DataFormatError, match="holds only prompts"):
        data.load_streaming_splits(str(prompts), "sft", 1)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataFormatError, match="is empty: no records found"):
        data.load_streaming_splits(str(tmp_path / "empty.jsonl"), "sft", 1)
    with pytest.raises(DataNotFoundError):
        data.load_streaming_splits(str(tmp_path / "missing.jsonl"), "sft", 1)
    # Examples are counted after conversion (the skipped hh-rlhf pairs do not count)
    hh = str(_write_jsonl(tmp_path / "hh.jsonl", [_HH, _HH_EMPTY, _HH_EMPTY]))
    with pytest.raises(ConfigError, match=r"--eval_size 1 leaves no training data from the 1 examples of .*hh"):
        data.load_streaming_splits(hh, "preference", 1)
    # A pass with no training example (the file shrank since the split) is an error, not an endless empty loop
    with pytest.raises(DataFormatError, match=r"no training examples after the 1 held-out ones"):
        next(data._training_stream(data._ExampleStream(hh, "train", "preference", True), skip=1, max_samples=None))


def test_stage_checks_come_before_anything_loads(tmp_path):
    jsonl = str(_write_jsonl(tmp_path / "rows.jsonl", _sft_rows(5)))
    args = ["--dataset_name", jsonl, "--output_dir", str(tmp_path / "out"), "--model_name_or_path", "/nonexistent"]
    with pytest.raises(ConfigError, match=r"--streaming needs --max_steps"):
        run("sft", [*args, "--streaming"])
    with pytest.raises(ConfigError, match=r"the grpo stage cannot stream its data; the stages that can are sft, "
                                          r"reward, dpo, kto"):
        run("grpo", [*args, "--streaming", "--max_steps", "2"])
    with pytest.raises(ConfigError, match=r"--streaming needs --max_steps"):  # TRL's own flag does the same
        run("dpo", [*args, "--dataset_streaming", "true"])


# ---------------------------------------------------------------------------------------------------------
# The held-out split
# ---------------------------------------------------------------------------------------------------------

def test_split_is_the_first_examples_disjoint_on_every_pass_and_the_same_every_time(tmp_path):
    path = str(_write_jsonl(tmp_path / "rows.jsonl", _sft_rows(10)))
    train, held_out = data.load_streaming_splits(path, "sft", eval_size=3)
    eval_prompts = [row["prompt"][0]["content"] for row in held_out]
    assert eval_prompts == [f"What is {i} + 1?" for i in range(3)]
    three_passes = [row["prompt"][0]["content"] for row in itertools.islice(iter(train), 21)]
    assert three_passes == [f"What is {i} + 1?" for i in range(3, 10)] * 3  # endless, in file order
    again_train, again_eval = data.load_streaming_splits(path, "sft", eval_size=3)
    assert again_eval.to_list() == held_out.to_list()
    assert list(itertools.islice(iter(again_train), 21)) == list(itertools.islice(iter(train), 21))
    # max_samples: the first N training examples, repeated; the eval set does not change
    capped, capped_eval = data.load_streaming_splits(path, "sft", eval_size=3, max_samples=2)
    assert [row["prompt"][0]["content"] for row in itertools.islice(iter(capped), 4)] == [
        "What is 3 + 1?", "What is 4 + 1?"] * 2
    assert capped_eval.to_list() == held_out.to_list()
    assert data.load_streaming_splits(path, "sft", eval_size=0)[1] is None


# ---------------------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def big_jsonl(tmp_path_factory) -> Path:
    """~200 MB of prompt/completion lines (100,000 rows of ~2 kB), written in about a second."""
    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    pad = "x" * 1000
    with path.open("w") as file:
        for start in range(0, 100_000, 1000):
            file.write("".join(f'{{"prompt": "question {i} {pad}", "completion": "answer {i} {pad}"}}\n'
                               for i in range(start, start + 1000)))
    return path


def test_streaming_a_file_larger_than_the_memory_bound(big_jsonl, tmp_path, capsys):
    """Peak RSS (VmHWM, `open_rlhf.memory.PeakMemory`) grows by less than a tenth of the file while the whole file
    streams through (measured on a 2-core Xeon: +0 to 3 MB for 197 MB in 2.5 s; `load_sft_dataset` of the same
    file: +1510 MB in 22 s).

    A small stream first pays the one-time imports (datasets' builders, TRL), which are not the data's memory.
    """
    small = _write_jsonl(tmp_path / "small.jsonl", _sft_rows(4))
    next(iter(data.load_streaming_splits(str(small), "sft", 1)[0]))
    size_mb = big_jsonl.stat().st_size / 2**20
    with PeakMemory() as memory:
        train, held_out = data.load_streaming_splits(str(big_jsonl), "sft", eval_size=64)
        count = sum(1 for _ in itertools.islice(iter(train), 100_000 - 64))
    assert count == 100_000 - 64 and len(held_out) == 64
    with capsys.disabled():
        print(f"\nstreamed {size_mb:.0f} MB ({count} rows): peak RSS +{memory.delta_mb:.1f} MB ({memory.source})")
    assert size_mb > 150
    assert memory.delta_mb < size_mb / 10


# ---------------------------------------------------------------------------------------------------------
# The stages on a stream
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stage", ["sft", "reward", "dpo", "kto"])
def test_stage_trains_on_a_stream(tmp_path, tiny_model_dir, stage):
    rows = _sft_rows(24) if stage == "sft" else _pair_rows(24)
    source = _write_jsonl(tmp_path / "data.jsonl", rows)
    out = tmp_path / "out"
    run(stage, ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--dataset_name",
                str(source), "--max_steps", "2", "--eval_size", "4", "--save_strategy", "no", *COMMON])
    record = json.loads((out / "training_complete.json").read_text())
    assert record["streaming"] is True and record["train_examples"] is None and record["global_step"] == 2
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [h["step"] for h in history if "loss" in h] == [1, 2]
    assert all(math.isfinite(h["loss"]) for h in history if "loss" in h)
    before, after = weights(tiny_model_dir), weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)


def test_kto_kl_completions_are_rotated_within_each_streamed_batch(tiny_model_dir, tmp_path):
    """TRL's KTO pairs each prompt with the previous example's completion within a batch (a lazy batched map of
    ``per_device_train_batch_size`` on the stream, aligned with the DataLoader's batches from the start)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOConfig, KTOTrainer

    source = _write_jsonl(tmp_path / "pairs.jsonl", _pair_rows(12))
    train, _ = data.load_streaming_splits(str(source), "unpaired", eval_size=2)
    args = KTOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=3, max_steps=1, report_to="none",
                     use_cpu=True)
    trainer = KTOTrainer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), args=args, train_dataset=train,
                         processing_class=AutoTokenizer.from_pretrained(tiny_model_dir))
    rows = list(itertools.islice(iter(trainer.train_dataset), 12))
    for start in range(0, 12, 3):
        batch = rows[start:start + 3]
        completions = [row["completion_ids"] for row in batch]
        assert [row["KL_completion_ids"] for row in batch] == completions[-1:] + completions[:-1]


def test_a_bad_line_stops_training_with_its_file_and_line(tmp_path, tiny_model_dir):
    """The error of a bad record reached at step 3 comes out of the Trainer as it is (a `DataFormatError`, which the
    stage runner prints as one ``error:`` line), naming the file and line."""
    lines = [json.dumps(row) for row in _sft_rows(10)]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines[:7] + ['{"prompt": "q", "completion": '] + lines[7:]) + "\n")
    with pytest.raises(DataFormatError, match=r"bad JSON on line 8 of .*rows\.jsonl"):
        run("sft", ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "out"),
                    "--dataset_name", str(path), "--eval_size", "1", "--max_steps", "5", "--save_strategy", "no",
                    *COMMON])


def test_resumed_sft_run_sees_the_rows_of_an_uninterrupted_one(tmp_path, tiny_model_dir):
    """8 rows, 2 held out, batches of 2: 3 steps per pass. An uninterrupted 5-step run against one stopped after step
    4 (in the second pass; its completion marker removed, as if killed) and resumed to step 5: the same weights,
    because the Trainer skips the 4 trained batches of the endless stream. Resuming the same checkpoint with
    ``--ignore_data_skip`` (step 5 trains the first batch again) gives other weights, so the comparison can fail."""
    source = str(_write_jsonl(tmp_path / "rows.jsonl", _sft_rows(8)))
    base = ["--model_name_or_path", str(tiny_model_dir), "--dataset_name", source, "--eval_size", "2",
            "--lr_scheduler_type", "constant", "--save_steps", "4", *COMMON]
    run("sft", [*base, "--output_dir", str(tmp_path / "whole"), "--max_steps", "5"])
    run("sft", [*base, "--output_dir", str(tmp_path / "resumed"), "--max_steps", "4"])
    (tmp_path / "resumed" / "training_complete.json").unlink()  # as if killed after checkpoint-4
    shutil.copytree(tmp_path / "resumed", tmp_path / "no_skip")
    for name, extra in (("resumed", []), ("no_skip", ["--ignore_data_skip", "true"])):
        run("sft", [*base, "--output_dir", str(tmp_path / name), "--max_steps", "5", *extra])
        history = json.loads((tmp_path / name / "trainer_state.json").read_text())["log_history"]
        assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4, 5]  # 1-4 restored from checkpoint-4
    whole, resumed, no_skip = (weights(tmp_path / name) for name in ("whole", "resumed", "no_skip"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert any(not torch.equal(whole[k], no_skip[k]) for k in whole)
