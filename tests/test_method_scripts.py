"""Smoke tests of every method's stage script: main() for 2 steps on a tiny model, loss finite, parameters changed.

The tiny random policy cannot solve arithmetic, so the online methods get a reward that varies on random text
(the length penalty), which gives non-zero advantages; the verifiable reward is tested in test_rewards.py.
"""

from __future__ import annotations

import json
import math

import pytest

from tests.test_scripts import COMMON, changed, run, weights

ONLINE = ["--per_device_train_batch_size", "4", "--max_train_samples", "16", "--eval_size", "4",
          "--report_to", "none", "--logging_steps", "1", "--save_steps", "1", "--learning_rate", "1e-2",
          "--num_generations", "2", "--max_completion_length", "8", "--reward", "length:5",
          "--temperature", "1.0"]


def history(folder) -> list[dict]:
    return json.loads((folder / "trainer_state.json").read_text())["log_history"]


def assert_trained(out, start, loss_key="loss"):
    assert (out / "training_complete.json").is_file()
    losses = [h[loss_key] for h in history(out) if loss_key in h]
    assert losses and all(math.isfinite(v) for v in losses), losses
    assert changed(weights(start), weights(out))
    marker = json.loads((out / "training_complete.json").read_text())
    assert marker["global_step"] == 2 and marker["peak_rss_mb"] > 0


@pytest.mark.parametrize("script, flags", [
    ("dpo", ["--loss_type", "ipo"]),
    ("dpo", ["--loss_type", "sigmoid", "hinge", "--loss_weights", "0.7", "0.3"]),
    ("kto", []),
    ("orpo", []),
    ("simpo", []),
], ids=["ipo", "dpo+hinge", "kto", "orpo", "simpo"])
def test_offline_method_trains(tmp_path, tiny_model_dir, script, flags):
    out = tmp_path / "out"
    run(script, ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--max_steps", "2",
                 *COMMON, *flags])
    assert_trained(out, tiny_model_dir)


@pytest.mark.parametrize("script", ["grpo", "rloo"])
def test_online_method_trains(tmp_path, tiny_model_dir, script):
    out = tmp_path / "out"
    run(script, ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--max_steps", "2",
                 *ONLINE])
    assert_trained(out, tiny_model_dir)
    rewards = [h["reward"] for h in history(out) if "reward" in h]
    assert rewards and all(math.isfinite(r) and r <= 0 for r in rewards)  # a length penalty is never positive


def test_gdpo_preset_trains_with_each_reward_term_normalised_in_its_group(tmp_path, tiny_model_dir):
    """--method gdpo is GRPO with TRL's per-term group normalisation (multi_objective_aggregation)."""
    import yaml

    from tests.test_scripts import REPO

    preset = yaml.safe_load((REPO / "config/grpo/gdpo.yaml").read_text())  # the preset parses: test_scripts.py
    assert preset["multi_objective_aggregation"] == "normalize_then_sum"
    out = tmp_path / "out"
    run("grpo", ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--max_steps", "2",
                 *ONLINE[:-4], "--reward", "length:5,0.5*length:3", "--multi_objective_aggregation",
                 "normalize_then_sum", "--temperature", "1.0"])
    assert_trained(out, tiny_model_dir)
    logged = [h for h in history(out) if "reward" in h]
    assert logged and all(math.isfinite(h["reward"]) for h in logged)
    assert any(k.startswith("rewards/") for k in logged[0])  # each term logged on its own


def test_reinforce_pp_script_trains_without_a_value_model(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    run("ppo", ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--max_steps", "2",
                      "--advantage_estimator", "reinforce_pp", "--reward", "length:5", "--response_length", "8",
                      "--gradient_accumulation_steps", "1", *COMMON])
    state = history(out)
    assert len(state) == 2 and all(math.isfinite(h["loss/policy"]) for h in state)
    assert "loss/value" not in state[-1] and not (out / "value_model").exists()
    assert changed(weights(tiny_model_dir), weights(out))


def test_trpo_script_takes_natural_gradient_steps(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    run("ppo", ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--max_steps", "2",
                "--policy_update", "trpo", "--trpo_max_kl", "0.05", "--reward", "length:5", "--response_length", "8",
                "--gradient_accumulation_steps", "1", *COMMON])
    state = history(out)
    assert len(state) == 2 and all(h["policy/trpo_kl"] <= 0.05 + 1e-6 for h in state)
    assert all(math.isfinite(h["loss/value"]) for h in state)


def test_reward_spec_needing_answers_is_checked_against_the_data(tmp_path, tiny_model_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": f"Say {i}."}) for i in range(16)) + "\n")
    with pytest.raises(ValueError, match="no \\['answer'\\] column"):
        run("grpo", ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "o"),
                           "--dataset_name", str(prompts), "--max_steps", "1",
                           *[f if f != "length:5" else "math" for f in ONLINE]])


def test_kto_data_order_follows_the_seed(tmp_path, tiny_model_dir):
    """TRL's KTOTrainer samples in order, so the stage shuffles the training set with the seed (stages.seeded_order):
    two seeds train on different batches, one seed always on the same ones; random samplers keep the dataset."""
    from datasets import Dataset
    from trl import DPOConfig, KTOConfig

    from open_rlhf.stages import seeded_order

    ds = Dataset.from_dict({"i": list(range(32))})
    order = lambda **kw: seeded_order(KTOConfig(output_dir=str(tmp_path), bf16=False, **kw), ds)["i"]  # noqa: E731
    assert order(seed=0) == order(seed=0) != order(seed=1) and sorted(order(seed=1)) == list(range(32))
    assert order(seed=0, data_seed=5) == order(seed=1, data_seed=5)  # transformers' data_seed wins over seed
    assert seeded_order(DPOConfig(output_dir=str(tmp_path), bf16=False, seed=1), ds)["i"] == list(range(32))

    first_batch = {}
    for run_index, seed in enumerate((0, 1, 0)):
        out = tmp_path / f"run{run_index}-seed{seed}"
        run("kto", ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out), "--max_steps", "1",
                    *COMMON, "--seed", str(seed)])
        first_batch.setdefault(seed, []).append(history(out)[0]["entropy"])
    assert first_batch[0][0] == first_batch[0][1] != first_batch[1][0]


def test_kto_batches_mix_desirable_and_undesirable_examples(tmp_path):
    """Built-in pairs are unpaired in blocks of 1,000 (TRL's `unpair_preference_dataset`), so in file order the KTO
    preset's 20 steps x 16 examples were all desirable answers (KTO reduced to SFT on the chosen answers); the
    seeded order mixes both labels from the first batch on."""
    from trl import KTOConfig

    from open_rlhf import data
    from open_rlhf.stages import seeded_order

    train, _ = data.load_splits("builtin", "unpaired", eval_size=64, seed=42)
    assert all(train["label"][:320])  # file order: the first 1,000 rows are one side of the pairs
    for seed in (0, 1):
        labels = seeded_order(KTOConfig(output_dir=str(tmp_path), bf16=False, seed=seed), train)["label"][:320]
        assert 100 < sum(labels) < 220 and any(labels[:16]) and not all(labels[:16])
