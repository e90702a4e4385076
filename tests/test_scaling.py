"""The test-time scaling study: the nested-pool metrics by hand, and the whole study end to end on tiny models."""

from __future__ import annotations

import csv
import json

import pytest

from open_rlhf import models
from open_rlhf.errors import ConfigError
from open_rlhf.inference import scaling
from tests.conftest import save_tiny_model


def test_nested_sizes():
    assert scaling.nested_sizes(16) == [1, 2, 4, 8, 16]
    assert scaling.nested_sizes(6) == [1, 2, 4, 6]
    assert scaling.nested_sizes(1) == [1]


def test_pool_metrics_by_hand():
    answers = [["3", "5", "5", "5"], [None, "2", "7", "7"]]
    tokens = [[10, 20, 30, 40], [5, 5, 5, 5]]
    orm = [[0.9, 0.1, 0.2, 0.3], [0.0, 0.8, 0.1, 0.2]]
    prm = [[0.1, 0.7, 0.2, 0.3], [0.5, 0.1, 0.9, 0.2]]
    gold = ["5", "2"]
    at2 = scaling.pool_metrics(answers, tokens, orm, prm, gold, n=2, confidence=0.95)
    assert at2["majority"]["correct"] == [False, True]  # tie 3/5 -> the first seen; None ignored -> "2"
    assert at2["bon_orm"]["correct"] == [False, True] and at2["bon_prm"]["correct"] == [True, False]
    assert at2["pass"]["correct"] == [True, True] and at2["majority"]["tokens"] == [30, 10]
    at4 = scaling.pool_metrics(answers, tokens, orm, prm, gold, n=4, confidence=0.7)
    assert at4["majority"]["correct"] == [True, False]
    # adaptive at 0.7: prompt 1 stops at 3 samples ("5" twice vs "3" once: P = 0.6875 < 0.7 -> 4 samples);
    # Beta(3 + 1, 1 + 1): 1 - I_0.5(4, 2) = 0.8125 >= 0.7 at 4 samples
    assert at4["adaptive"]["samples"][0] == 4 and at4["adaptive"]["correct"][0] is True
    assert at4["adaptive"]["tokens"][0] == 100


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_model_dir, tokenizer):
    root = tmp_path_factory.mktemp("study")
    orm = save_tiny_model(root / "orm", tokenizer, seed=1, reward=True)
    prm = models.load_step_classifier(str(tiny_model_dir), tokenizer.pad_token_id)
    prm.save_pretrained(root / "prm")
    tokenizer.save_pretrained(root / "prm")
    argv = ["--policy", str(tiny_model_dir), "--reward_model", str(orm), "--prm", str(root / "prm"), "--builtin", "3",
            "--gsm8k", "", "--n_max", "2", "--search_budgets", "2", "--max_new_tokens_builtin", "8",
            "--max_steps", "2", "--max_step_tokens", "4", "--mcts_simulations", "4",
            "--output_dir", str(root / "out")]
    return scaling.run(scaling.make_parser().parse_args(argv)), argv, root


def test_study_writes_rows_plot_and_table_and_resumes(study):
    out, argv, root = study
    rows = list(csv.DictReader((out / "results.csv").open()))
    methods = {(r["method"], int(r["n"])) for r in rows}
    assert {("greedy", 1), ("majority", 2), ("bon_orm", 1), ("bon_prm", 2), ("pass", 2), ("adaptive", 2),
            ("beam_prm", 2), ("mcts", 2)} <= methods
    for r in rows:
        assert int(r["prompts"]) == 3 and float(r["ci_low"]) <= float(r["accuracy"]) <= float(r["ci_high"])
        assert float(r["tokens_per_prompt"]) > 0
    assert (out / "scaling.png").stat().st_size > 10_000 and "MCTS (PRM)" in (out / "results.md").read_text()
    # a rerun reads the cached phases (nothing regenerated: the greedy cache is untouched)
    cache = out / "builtin-greedy.json"
    before = cache.stat().st_mtime_ns, json.loads(cache.read_text())
    scaling.run(scaling.make_parser().parse_args(argv))
    assert (cache.stat().st_mtime_ns, json.loads(cache.read_text())) == before
    with pytest.raises(ConfigError, match="holds a study with other settings"):
        scaling.run(scaling.make_parser().parse_args([*argv, "--n_max", "4"]))


def test_phases_split_one_study_between_processes(study, tmp_path):
    """A beam_prm-only run computes only its phase (plus greedy), a pool,mcts run the rest; an all-phases run then
    assembles every row from the cache with the same values as the one-process study."""
    out, argv, _ = study
    split = tmp_path / "split"
    args = [*argv[:-1], str(split)]
    scaling.run(scaling.make_parser().parse_args([*args, "--phases", "beam_prm"]))
    assert sorted(p.name for p in split.glob("builtin-*.json")) == ["builtin-beam_prm-2.json", "builtin-greedy.json"]
    scaling.run(scaling.make_parser().parse_args([*args, "--phases", "pool,mcts"]))
    assert len(list(split.glob("builtin-*.json"))) == 4
    scaling.run(scaling.make_parser().parse_args(args))
    keep = ("method", "n", "accuracy", "tokens_per_prompt")
    assert ([{k: r[k] for k in keep} for r in csv.DictReader((split / "results.csv").open())]
            == [{k: r[k] for k in keep} for r in csv.DictReader((out / "results.csv").open())])
    with pytest.raises(ConfigError, match="--phases must be"):
        scaling.run(scaling.make_parser().parse_args([*args, "--phases", "beam"]))


def test_study_flags_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="--search_budgets must be"):
        scaling.run(scaling.make_parser().parse_args(["--search_budgets", "4,x", "--output_dir", str(tmp_path)]))
    with pytest.raises(ConfigError, match="--prm .* does not exist"):
        scaling.run(scaling.make_parser().parse_args(["--reward_model", str(tmp_path), "--prm", "nowhere",
                                                      "--output_dir", str(tmp_path)]))
