"""On-policy preference pairs (open_rlhf.onpolicy): best vs worst by hand, and make_pairs.py on a tiny policy."""

from __future__ import annotations

import json

import pytest

from open_rlhf.onpolicy import make_pairs_main, preference_pairs


def test_best_vs_worst_pairs_by_hand():
    prompts = ["p0", "p1", "p2"]
    samples = [["a", "b", "c"], ["d", "e"], ["f", "g", "h"]]
    scores = [[1.0, 0.0, 1.0], [0.0, 0.0], [0.2, 0.9, 0.5]]
    rows, no_margin = preference_pairs(prompts, samples, scores)
    assert no_margin == 1  # p1: both answers judged alike
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [("a", "b"), ("g", "f")]
    assert rows[0]["prompt"] == [{"role": "user", "content": "p0"}] and rows[1]["score_rejected"] == 0.2
    rows, no_margin = preference_pairs(prompts, samples, scores, min_margin=0.8)
    assert [r["prompt"][0]["content"] for r in rows] == ["p0"] and no_margin == 2  # p2's gap 0.7 is too small
    with pytest.raises(ValueError, match="one sample list"):
        preference_pairs(prompts, samples[:2], scores)


def test_make_pairs_writes_pairs_a_preference_stage_reads(tmp_path, tiny_model_dir):
    from open_rlhf import data

    out = tmp_path / "pairs.jsonl"
    argv = ["--policy", str(tiny_model_dir), "--num_prompts", "6", "--k", "3", "--judge", "length:5",
            "--max_new_tokens", "12", "--output", str(out)]
    make_pairs_main(argv)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    meta = json.loads((tmp_path / "pairs.jsonl.meta.json").read_text())
    assert 1 <= len(rows) == meta["pairs"] <= 6 and meta["pairs"] + meta["no_margin"] == 6
    assert all(r["score_chosen"] > r["score_rejected"] and r["chosen"] != r["rejected"] for r in rows)
    train, _ = data.load_splits(str(out), "preference", eval_size=0)
    assert len(train) == len(rows) and {"prompt", "chosen", "rejected"} <= set(train.column_names)
    with pytest.raises(SystemExit) as exit_info:  # never overwritten: a user error (status 2)
        make_pairs_main(argv)
    assert exit_info.value.code == 2 and out.read_text().count("\n") == len(rows)
