"""Our PPO trainer on tiny random models: learning, kill-and-resume equivalence, LoRA reference, errors."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from transformers import LlamaForCausalLM, LlamaForSequenceClassification

from open_rlhf.curves import training_reward
from open_rlhf.progress import read_metrics
from open_rlhf.trainers.ppo import PPOConfig, PPOTrainer
from tests.conftest import tiny_llama_config

WORDS = [" the", " a", " cat", " dog", " and", " is", " on", " mat"]


TARGETS = {"the", "a", "cat", "dog"}  # half of WORDS


def target_reward(prompts, completions, **_):
    """Dense, learnable reward: the share of the response's words that are in TARGETS."""
    return [sum(w in TARGETS for w in c.split()) / max(1, len(c.split())) for c in completions]


def word_id(tokenizer, word: str) -> int:
    return tokenizer.encode(word, add_special_tokens=False)[0]


def restrict_to_words(model, tokenizer, extra_ids=()):
    """Add -20 to the logits of every token outside WORDS (a hook on the LM head), so a random tiny model is an
    ~8-way stochastic policy; without it, it is ~uniform over 49k tokens and no reward on text is ever seen.
    ``extra_ids`` (e.g. the EOS id) are allowed too."""
    ids = [word_id(tokenizer, w) for w in WORDS] + list(extra_ids)
    bias = torch.full((model.config.vocab_size,), -20.0)
    bias[ids] = 0.0
    model.lm_head.register_forward_hook(lambda module, inputs, output: output + bias.to(output.device, output.dtype))


def make_models(tokenizer, seed=0, extra_ids=()):
    torch.manual_seed(seed)
    config = tiny_llama_config(tokenizer, tie_word_embeddings=False)
    policy = LlamaForCausalLM(config)
    ref = LlamaForCausalLM(config)
    ref.load_state_dict(policy.state_dict())
    restrict_to_words(policy, tokenizer, extra_ids)
    restrict_to_words(ref, tokenizer, extra_ids)
    value = LlamaForSequenceClassification(tiny_llama_config(tokenizer, num_labels=1))
    return policy, ref, value


def prompts(n=32):
    return Dataset.from_dict({"prompt": [[{"role": "user", "content": f"Write something, number {i}."}]
                                         for i in range(n)]})


def make_args(tmp_path, **overrides):
    kwargs = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=1,
                  num_mini_batches=2, num_ppo_epochs=2, max_steps=4, response_length=8, learning_rate=3e-3,
                  save_steps=2, report_to="none", num_sample_generations=0, seed=0, bf16=False,
                  lr_scheduler_type="constant", kl_coef=0.01)
    kwargs.update(overrides)
    return PPOConfig(**kwargs)


def test_mean_reward_rises(tmp_path, tokenizer):
    """A tiny policy learns to favour the TARGETS words: the mean score of the last 3 updates beats the first 3."""
    policy, ref, value = make_models(tokenizer)
    args = make_args(tmp_path, max_steps=8, save_strategy="no", response_length=6, learning_rate=3e-3,
                     per_device_train_batch_size=8, num_mini_batches=1, num_ppo_epochs=4)
    trainer = PPOTrainer(args, tokenizer, policy, ref, target_reward, value, prompts(64))
    history = trainer.train()
    scores = [h["objective/scores"] for h in history]
    assert len(scores) == 8 and all(torch.isfinite(torch.tensor(scores)))
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 0.15, scores  # observed: 0.62 -> 0.94
    assert history[-1]["objective/kl"] > 0  # the policy moved away from the reference


class KilledAfterCheckpoint(Exception):
    pass


class KillingPPOTrainer(PPOTrainer):
    """Dies right after writing its first checkpoint, as a preempted job would."""

    def _save_checkpoint(self):
        path = super()._save_checkpoint()
        raise KilledAfterCheckpoint(path)


def test_kill_and_resume_equals_uninterrupted_run(tmp_path, tokenizer):
    """4 updates straight vs 2 updates + kill + resume from checkpoint-2: identical weights and logs."""
    policy, ref, value = make_models(tokenizer)
    straight = PPOTrainer(make_args(tmp_path / "a"), tokenizer, policy, ref, target_reward, value, prompts())
    straight.train()

    policy, ref, value = make_models(tokenizer)
    killed = KillingPPOTrainer(make_args(tmp_path / "b"), tokenizer, policy, ref, target_reward, value, prompts())
    with pytest.raises(KilledAfterCheckpoint):
        killed.train()
    assert (tmp_path / "b" / "checkpoint-2").is_dir() and not list((tmp_path / "b").glob(".tmp-*"))

    # the trained networks start from another init: their state must come from the checkpoint; the frozen
    # reference is an input of the run (the same SFT model is passed again), not trainer state
    policy, _, value = make_models(tokenizer, seed=123)
    _, ref, _ = make_models(tokenizer)
    resumed = PPOTrainer(make_args(tmp_path / "b"), tokenizer, policy, ref, target_reward, value, prompts())
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-2"))

    assert resumed.global_step == straight.global_step == 4
    for (name, a), (_, b) in zip(straight.wrapper.state_dict().items(), resumed.wrapper.state_dict().items(),
                                 strict=True):
        torch.testing.assert_close(a, b, msg=f"parameter {name} differs after resume")
    assert [h["objective/scores"] for h in straight.log_history] == [h["objective/scores"]
                                                                       for h in resumed.log_history]


def test_lora_policy_uses_adapter_disabled_reference(tmp_path, tokenizer):
    """With a PEFT policy and no reference model, only adapters train; the base weights stay put."""
    from peft import LoraConfig, get_peft_model

    policy, _, value = make_models(tokenizer)
    base_before = {k: v.clone() for k, v in policy.state_dict().items()}
    policy = get_peft_model(policy, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                               task_type="CAUSAL_LM"))
    args = make_args(tmp_path, max_steps=2, save_strategy="no")
    trainer = PPOTrainer(args, tokenizer, policy, None, target_reward, value, prompts())
    history = trainer.train()
    assert history[0]["objective/kl"] == pytest.approx(0.0, abs=1e-6)  # adapters start as the identity (B=0)
    lora_b = [p for n, p in trainer.policy.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)
    merged = trainer.policy.get_base_model().state_dict()
    for key, before in base_before.items():
        key_in_peft = key.replace(".weight", ".base_layer.weight") if ("q_proj" in key or "v_proj" in key) else key
        torch.testing.assert_close(merged[key_in_peft].cpu(), before)


def test_save_model_writes_loadable_policy_and_value(tmp_path, tokenizer):
    policy, ref, value = make_models(tokenizer)
    trainer = PPOTrainer(make_args(tmp_path, max_steps=1, save_strategy="no"), tokenizer, policy, ref,
                         target_reward, value, prompts())
    trainer.train()
    trainer.save_model(str(tmp_path / "out"))
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "out")
    torch.testing.assert_close(reloaded.lm_head.weight, trainer.policy.lm_head.weight.cpu())
    assert LlamaForSequenceClassification.from_pretrained(tmp_path / "out" / "value_model").config.num_labels == 1


def test_errors_name_the_problem(tmp_path, tokenizer):
    policy, ref, value = make_models(tokenizer)
    with pytest.raises(ValueError, match="'prompt' column"):
        PPOTrainer(make_args(tmp_path), tokenizer, policy, ref, target_reward, value,
                   Dataset.from_dict({"text": ["a"] * 8}))
    with pytest.raises(ValueError, match="fewer than one rollout batch"):
        PPOTrainer(make_args(tmp_path), tokenizer, policy, ref, target_reward, value, prompts(3))
    with pytest.raises(ValueError, match="ref_model is required"):
        PPOTrainer(make_args(tmp_path), tokenizer, policy, None, target_reward, value, prompts())
    with pytest.raises(ValueError, match="kl_estimator"):
        make_args(tmp_path, kl_estimator="k9")


def test_reinforce_pp_learns_without_a_value_model(tmp_path, tokenizer):
    """REINFORCE++ (no value model): the same tiny task's mean score rises, and no value model is saved."""
    policy, ref, _ = make_models(tokenizer)
    args = make_args(tmp_path, max_steps=8, save_strategy="no", response_length=6, learning_rate=3e-3,
                     per_device_train_batch_size=8, num_mini_batches=1, num_ppo_epochs=4,
                     advantage_estimator="reinforce_pp")
    trainer = PPOTrainer(args, tokenizer, policy, ref, target_reward, None, prompts(64))
    assert trainer.value_model is None
    history = trainer.train()
    scores = [h["objective/scores"] for h in history]
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 0.15, scores
    assert "loss/value" not in history[-1] and history[-1]["objective/kl"] > 0
    trainer.save_model(tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").is_file() and not (tmp_path / "out" / "value_model").exists()


def test_value_model_must_match_the_advantage_estimator(tmp_path, tokenizer):
    policy, ref, value = make_models(tokenizer)
    with pytest.raises(ValueError, match="trains no value model"):
        PPOTrainer(make_args(tmp_path, advantage_estimator="reinforce_pp"), tokenizer, policy, ref, target_reward,
                   value, prompts())
    with pytest.raises(ValueError, match="needs a value model"):
        PPOTrainer(make_args(tmp_path), tokenizer, policy, ref, target_reward, None, prompts())
    with pytest.raises(ValueError, match="advantage_estimator must be one of"):
        make_args(tmp_path, advantage_estimator="vtrace")


def test_micro_batches_are_weighted_by_tokens(tmp_path, tokenizer):
    """One minibatch of 8 rollouts as 1 micro-batch of 8 or 4 micro-batches of 2: the same gradient, hence the same
    weights, because every token of the minibatch weighs the same (the responses differ in length here: the
    policy can stop). Weighting each micro-batch's token mean by its share of sequences would differ.
    adam_epsilon 1 makes the step ~ lr * gradient (not AdamW's first step ~ lr * sign(gradient), which turns the
    last-bit differences of a GPU's batch-shape-dependent reductions into full steps), so the check holds on a GPU
    too."""
    eos = tokenizer.eos_token_id
    data, weights = None, []
    for micro, accumulation in ((8, 1), (2, 4)):
        policy, ref, value = make_models(tokenizer, extra_ids=[eos])
        args = make_args(tmp_path / str(micro), per_device_train_batch_size=micro,
                         gradient_accumulation_steps=accumulation, num_mini_batches=1, num_ppo_epochs=1, max_steps=1,
                         save_strategy="no", max_grad_norm=0.0, learning_rate=1.0, adam_epsilon=1.0)
        trainer = PPOTrainer(args, tokenizer, policy, ref, target_reward, value, prompts())
        if data is None:
            data = trainer.rollout(trainer.train_dataset[:8])
            lengths = data.mask.sum(1).tolist()
            assert len(set(lengths)) > 1, f"the premise needs responses of different lengths, got {lengths}"
        before = {k: v.clone() for k, v in trainer.wrapper.state_dict().items()}
        trainer.optimize(data)
        moved = max((v - before[k]).abs().max().item() for k, v in trainer.wrapper.state_dict().items())
        assert moved > 1e-4, f"the step is too small ({moved}) for the comparison below to mean anything"
        weights.append({k: v.clone() for k, v in trainer.wrapper.state_dict().items()})
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, atol=1e-6, rtol=1e-5, msg=name)


def test_generation_keeps_every_eos_id_and_leaves_the_model_config_alone(tmp_path, tokenizer):
    """A model with two stop ids (Llama 3 has three): rollouts stop at either, and the generation config saved
    with the trained policy still lists both (it was overwritten with the tokenizer's single EOS id)."""
    mat = word_id(tokenizer, " mat")
    policy, ref, value = make_models(tokenizer)
    policy.generation_config.eos_token_id = [tokenizer.eos_token_id, mat]
    trainer = PPOTrainer(make_args(tmp_path, max_steps=1, save_strategy="no"), tokenizer, policy, ref, target_reward,
                         value, prompts())
    data = trainer.rollout(trainer.train_dataset[:4])
    responses = data.query_responses[:, data.context_length:]
    assert bool((responses == mat).any()), "premise: ' mat' is sampled"
    for row, mask in zip(responses, data.mask.bool(), strict=True):
        stops = (row == mat).nonzero()
        if len(stops):  # nothing after the first ' mat' is part of the response
            assert int(mask.sum()) == int(stops[0]) + 1
    trainer.save_model(str(tmp_path / "out"))
    saved = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert saved["eos_token_id"] == [tokenizer.eos_token_id, mat]


def test_ratio_save_and_logging_steps(tmp_path, tokenizer, capsys):
    """save_steps / logging_steps < 1 are ratios of the run (TrainingArguments' convention): 0.5 of 4 updates is
    every 2 updates (it divided by zero, and a ratio logging_steps silently became 1)."""
    policy, ref, value = make_models(tokenizer)
    args = make_args(tmp_path, max_steps=4, save_steps=0.5, logging_steps=0.5, save_total_limit=None)
    PPOTrainer(args, tokenizer, policy, ref, target_reward, value, prompts()).train()
    assert [p.name for p in tmp_path.glob("checkpoint-*")] == ["checkpoint-2"]  # 4 is the end: save_model's job
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith('{"step"')]
    assert [json.loads(line)["step"] for line in printed] == [2, 4]
    # the same logs reach metrics.jsonl, as the TRL stages write it (the web demo's job view, the curves' reward)
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [2, 4] and all(r["max_steps"] == 4 for r in records)
    assert training_reward(tmp_path) == [(r["step"], r["objective/scores"]) for r in records]


@pytest.mark.parametrize("field, value", [("eval_strategy", "steps"), ("optim", "adafactor"),
                                          ("torch_compile", True), ("push_to_hub", True)])
def test_training_arguments_our_trainer_ignores_are_rejected(tmp_path, field, value):
    from open_rlhf.errors import ConfigError

    with pytest.raises(ConfigError, match=f"--{field}"):
        make_args(tmp_path, **{field: value})


def test_gradient_checkpointing_is_honoured(tmp_path, tokenizer):
    policy, ref, value = make_models(tokenizer)
    args = make_args(tmp_path, max_steps=1, save_strategy="no", gradient_checkpointing=True)
    trainer = PPOTrainer(args, tokenizer, policy, ref, target_reward, value, prompts())
    assert trainer.policy.is_gradient_checkpointing and trainer.value_model.is_gradient_checkpointing
    history = trainer.train()
    assert torch.isfinite(torch.tensor(history[0]["loss/policy"]))


def test_report_to_tensorboard_writes_the_logged_scalars(tmp_path, tokenizer):
    """--report_to tensorboard goes through transformers' TensorBoardCallback; read a scalar back."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    policy, ref, value = make_models(tokenizer)
    args = make_args(tmp_path, max_steps=2, save_strategy="no", report_to="tensorboard")
    history = PPOTrainer(args, tokenizer, policy, ref, target_reward, value, prompts()).train()
    event_dirs = {p.parent for p in tmp_path.glob("runs/*/events.out.tfevents.*")}
    assert len(event_dirs) == 1
    events = EventAccumulator(str(event_dirs.pop()))
    events.Reload()
    scores = [e.value for e in events.Scalars("train/objective/scores")]
    assert scores == pytest.approx([h["objective/scores"] for h in history])


class DeviceRecordingReward:
    """A reward function holding a model would move it in `to`; this one records where it was asked to go."""

    def __init__(self):
        self.devices = []

    def to(self, device):
        self.devices.append(torch.device(device))
        return self

    def __call__(self, prompts, completions, **kwargs):
        return target_reward(prompts, completions)


def test_reward_functions_are_moved_to_the_training_device(tmp_path, tokenizer):
    """A reward model scores where the policy runs (on a GPU it scored on the CPU)."""
    policy, ref, value = make_models(tokenizer)
    reward = DeviceRecordingReward()
    trainer = PPOTrainer(make_args(tmp_path), tokenizer, policy, ref, reward, value, prompts())
    assert reward.devices == [trainer.accelerator.device]


def test_value_model_without_a_scalar_head_is_rejected(tmp_path, tokenizer):
    """A causal LM as value model used to give a vocabulary-sized "value" through get_output_embeddings."""
    from open_rlhf.errors import ConfigError

    policy, ref, _ = make_models(tokenizer)
    not_a_value_model = LlamaForCausalLM(tiny_llama_config(tokenizer))
    with pytest.raises(ConfigError, match="scalar head"):
        PPOTrainer(make_args(tmp_path), tokenizer, policy, ref, target_reward, not_a_value_model, prompts())


def test_reinforce_pp_uses_gamma(tmp_path, tokenizer):
    """REINFORCE++ advantages are the gamma-discounted reward-to-go (gamma was hard-coded to 1)."""
    from open_rlhf.rl_math import reinforce_pp_advantages

    policy, ref, _ = make_models(tokenizer)
    args = make_args(tmp_path, advantage_estimator="reinforce_pp", gamma=0.5)
    trainer = PPOTrainer(args, tokenizer, policy, ref, target_reward, None, prompts())
    data = trainer.rollout(trainer.train_dataset[:4])
    torch.testing.assert_close(data.advantages, reinforce_pp_advantages(data.rewards, data.mask, gamma=0.5))
    assert not torch.allclose(data.advantages, reinforce_pp_advantages(data.rewards, data.mask, gamma=1.0))


def test_reinforce_pp_baseline_samples_groups_and_subtracts_their_mean(tmp_path, tokenizer):
    """num_samples_per_prompt 4: an update's 8 rows are 2 prompts x 4 consecutive copies, each copy sampled with
    its own seed (the copies' responses differ), the advantages are REINFORCE++'s on the group-centred scores, and
    the next update takes the next 2 prompts of the permutation."""
    from open_rlhf.rl_math import compute_rewards, group_baseline, reinforce_pp_advantages

    policy, ref, _ = make_models(tokenizer)
    args = make_args(tmp_path, advantage_estimator="reinforce_pp_baseline", num_samples_per_prompt=4,
                     per_device_train_batch_size=8, num_mini_batches=1)
    trainer = PPOTrainer(args, tokenizer, policy, ref, target_reward, None, prompts())
    first, second = trainer._batch_indices(0), trainer._batch_indices(1)
    assert len(first) == 8 and first[:4] == [first[0]] * 4 and first[4:] == [first[4]] * 4 != first[:4]
    assert not set(first) & set(second)
    data = trainer.rollout(trainer.train_dataset[first], first)
    assert len(set(data.texts[:4])) > 1 and len(set(data.texts[4:])) > 1
    rewards, _ = compute_rewards(group_baseline(data.scores, 4), data.logprobs, data.ref_logprobs, data.mask,
                                 args.kl_coef)
    torch.testing.assert_close(data.advantages, reinforce_pp_advantages(rewards, data.mask))
    assert group_baseline(data.scores, 4).abs().sum() > 0  # the test's groups do carry signal
    assert "objective/zero_variance_groups" in trainer._rollout_metrics(data)


def test_reinforce_pp_baseline_learns(tmp_path, tokenizer):
    """REINFORCE++-baseline on the tiny task: 4 prompts x 4 samples an update, the mean score rises."""
    policy, ref, _ = make_models(tokenizer)
    args = make_args(tmp_path, max_steps=8, save_strategy="no", response_length=6, learning_rate=3e-3,
                     per_device_train_batch_size=16, num_mini_batches=1, num_ppo_epochs=4,
                     advantage_estimator="reinforce_pp_baseline", num_samples_per_prompt=4)
    history = PPOTrainer(args, tokenizer, policy, ref, target_reward, None, prompts(64)).train()
    scores = [h["objective/scores"] for h in history]
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 0.15, scores
    assert 0 <= history[-1]["objective/zero_variance_groups"] <= 1


def test_value_learning_rate_gives_the_value_model_its_own_step(tmp_path, tokenizer):
    """--value_learning_rate: the value model's parameters form a second AdamW group at that rate; after one
    update the value model has moved and the policy's group kept learning_rate (a tiny policy lr, so the value
    model's relative change must be far larger than the policy's)."""
    policy, ref, value = make_models(tokenizer)
    before_value = [p.detach().clone() for p in value.parameters()]
    before_policy = [p.detach().clone() for p in policy.parameters()]
    args = make_args(tmp_path, max_steps=1, save_strategy="no", learning_rate=1e-7, value_learning_rate=1e-2,
                     lr_scheduler_type="constant")
    trainer = PPOTrainer(args, tokenizer, policy, ref, target_reward, value, prompts())
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [1e-7, 1e-2]
    trainer.train()
    moved_value = max((p - b).abs().max().item() for p, b in zip(value.parameters(), before_value, strict=True))
    moved_policy = max((p - b).abs().max().item() for p, b in zip(policy.parameters(), before_policy, strict=True))
    assert moved_value > 1e3 * moved_policy > 0
    with pytest.raises(ValueError, match="value_learning_rate must be > 0"):
        make_args(tmp_path, value_learning_rate=0.0)


def test_num_samples_per_prompt_is_checked(tmp_path):
    with pytest.raises(ValueError, match="does not divide the rollout batch of 8"):
        make_args(tmp_path, num_samples_per_prompt=3)
    with pytest.raises(ValueError, match="needs --num_samples_per_prompt >= 2"):
        make_args(tmp_path, advantage_estimator="reinforce_pp_baseline")
    with pytest.raises(ValueError, match="must be >= 1"):
        make_args(tmp_path, num_samples_per_prompt=0)


@pytest.mark.slow  # ~30 s; kept out of the default run's 12-minute budget (AVX2 CPUs)
def test_trpo_steps_stay_in_the_trust_region_and_learn(tmp_path, tokenizer):
    """--policy_update trpo on the tiny task: every accepted step's KL(pi_old || pi_new) on the rollout is within
    trpo_max_kl, the surrogate improves where a step is taken, the mean score rises, the value model trains."""
    policy, ref, value = make_models(tokenizer)
    start = {n: p.detach().clone() for n, p in value.named_parameters()}
    args = make_args(tmp_path, max_steps=8, save_strategy="no", response_length=6, per_device_train_batch_size=8,
                     num_mini_batches=1, policy_update="trpo", trpo_max_kl=0.05)
    history = PPOTrainer(args, tokenizer, policy, ref, target_reward, value, prompts(64)).train()
    taken = [h for h in history if h["policy/trpo_step_fraction"] > 0]
    assert len(taken) >= 6, [h["policy/trpo_step_fraction"] for h in history]
    for h in taken:
        assert 0 < h["policy/trpo_kl"] <= 0.05 + 1e-6 and h["policy/trpo_improvement"] > 0
    scores = [h["objective/scores"] for h in history]
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 0.1, scores
    assert any(not torch.equal(start[n], p.cpu()) for n, p in value.named_parameters()) and "loss/value" in history[-1]


def test_trpo_options_are_checked(tmp_path):
    from open_rlhf.errors import ConfigError

    with pytest.raises(ConfigError, match="policy_update"):
        make_args(tmp_path, policy_update="sgd")
    with pytest.raises(ConfigError, match="trpo_max_kl > 0"):
        make_args(tmp_path, policy_update="trpo", trpo_max_kl=0.0)


def test_step_reward_penalises_the_token_that_completes_a_wrong_equation(tokenizer):
    """step_reward_tensor: -coef on the last token of each wrong result (digits are single tokens here), nothing
    for right equations or other tokens."""
    from open_rlhf.trainers.ppo import step_reward_tensor

    texts = ["He has 8 * 14 = 116 marbles.\nThen 116 - 6 = 110.\n#### 110", "2 + 2 = 4, 3 * 3 = 6 and 2 + 2 = 5"]
    rows = [tokenizer.encode(t, add_special_tokens=False) + [tokenizer.eos_token_id] for t in texts]
    responses = torch.full((2, max(map(len, rows)) + 3), tokenizer.pad_token_id)
    mask = torch.zeros(responses.shape, dtype=torch.bool)
    for b, row in enumerate(rows):
        responses[b, :len(row)], mask[b, :len(row)] = torch.tensor(row), True
    decoded = [tokenizer.decode(responses[b][mask[b]], skip_special_tokens=True) for b in range(2)]
    assert decoded == texts
    out = step_reward_tensor(decoded, responses, mask, tokenizer, coef=0.5)
    hits = out.nonzero().tolist()
    ends = [(b, tokenizer.decode(rows[b][:t + 1]), tokenizer.decode(rows[b][:t])) for b, t in hits]
    assert [b for b, _, _ in ends] == [0, 1, 1]
    for (_, upto, before), step in zip(ends, ("8 * 14 = 116", "3 * 3 = 6", "2 + 2 = 5"), strict=True):
        assert upto.endswith(step) and not before.endswith(step), (upto, step)
    assert out[out != 0].tolist() == [-0.5, -0.5, -0.5]


def test_step_reward_enters_the_rollout_rewards_and_log(tmp_path, tokenizer):
    """--step_reward arith on a tiny policy that writes only '2 + = 4 5' tokens: the rollout's per-token rewards are
    compute_rewards' with the step rewards of its own texts, the penalties are there, and the logged
    objective/step_rewards is -coef times the mean number of wrong equations per response."""
    from open_rlhf.rewards import arithmetic_step_checks
    from open_rlhf.rl_math import compute_rewards
    from open_rlhf.trainers.ppo import step_reward_tensor

    ids = [tokenizer.encode(s, add_special_tokens=False)[0] for s in ("2", "+", "=", "4", "5")]
    torch.manual_seed(0)
    policy, ref = (LlamaForCausalLM(tiny_llama_config(tokenizer, tie_word_embeddings=False)) for _ in range(2))
    ref.load_state_dict(policy.state_dict())
    for model in (policy, ref):
        bias = torch.full((model.config.vocab_size,), -20.0)
        bias[ids] = 0.0
        model.lm_head.register_forward_hook(lambda m, i, output, bias=bias: output + bias.to(output.dtype))
    args = make_args(tmp_path, advantage_estimator="reinforce_pp", response_length=16, per_device_train_batch_size=8,
                     num_mini_batches=1, step_reward="arith", step_reward_coef=0.5)
    trainer = PPOTrainer(args, tokenizer, policy, ref, target_reward, None, prompts())
    data = trainer.rollout(trainer.train_dataset[:8])
    responses = data.query_responses[:, data.context_length:]
    step = step_reward_tensor(data.texts, responses, data.mask.bool(), tokenizer, 0.5)
    wrong = [sum(not right for _, right in arithmetic_step_checks(t)) for t in data.texts]
    assert sum(wrong) > 0, data.texts
    torch.testing.assert_close(step.sum(1), -0.5 * torch.tensor(wrong, dtype=torch.float32))
    rewards, _ = compute_rewards(data.scores, data.logprobs, data.ref_logprobs, data.mask, args.kl_coef,
                                 step_rewards=step)
    torch.testing.assert_close(data.rewards, rewards)
    metrics = trainer._rollout_metrics(data)
    assert metrics["objective/step_rewards"] == pytest.approx(-0.5 * sum(wrong) / 8)


def test_step_reward_options_are_checked(tmp_path):
    with pytest.raises(Exception, match="--step_reward must be one of"):
        make_args(tmp_path, step_reward="prm")
    with pytest.raises(Exception, match="--step_reward_coef is a penalty"):
        make_args(tmp_path, step_reward="arith", step_reward_coef=-1.0)


def test_freezing_actor_steps_train_only_the_value_model_first(tmp_path, tokenizer):
    """--freezing_actor_steps 2: after two updates the policy is bit-for-bit the initial one while the value model
    has moved; the third update moves the policy. REINFORCE++ (no value model) rejects the option."""
    policy, ref, value = make_models(tokenizer)
    start_policy = {k: v.clone() for k, v in policy.state_dict().items()}
    start_value = {k: v.clone() for k, v in value.state_dict().items()}
    args = make_args(tmp_path, max_steps=3, save_strategy="no", freezing_actor_steps=2)
    trainer = PPOTrainer(args, tokenizer, policy, ref, target_reward, value, prompts())

    def moved(model, start):
        return any(not torch.equal(v, start[k]) for k, v in model.state_dict().items())

    for _ in range(2):
        indices = trainer._batch_indices(trainer.global_step)
        trainer.optimize(trainer.rollout(trainer.train_dataset[indices], indices))
        trainer.global_step += 1
    assert not moved(policy, start_policy) and moved(value, start_value)
    indices = trainer._batch_indices(trainer.global_step)
    trainer.optimize(trainer.rollout(trainer.train_dataset[indices], indices))
    assert moved(policy, start_policy)
    with pytest.raises(Exception, match="--freezing_actor_steps 2 warms up a value model"):
        make_args(tmp_path, advantage_estimator="reinforce_pp", freezing_actor_steps=2)


def demonstrations(n=16):
    return Dataset.from_dict({
        "prompt": [[{"role": "user", "content": f"Write something, number {i}."}] for i in range(n)],
        "completion": [[{"role": "assistant", "content": "the cat is on the mat"}] for _ in range(n)]})


def test_ptx_term_raises_the_demonstrations_likelihood(tmp_path, tokenizer):
    """PPO-ptx with a reward that is always 0 (no RL signal beyond the KL term): the demonstrations' NLL, logged as
    loss/ptx, falls over 6 updates, and the ptx micro-batches hold the prompt left-padded, then the assistant turn
    (with its end-of-turn token) right-padded. Without --ptx_coef the demonstrations are not used."""
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    policy, ref, _ = make_models(tokenizer, extra_ids=(eos, tokenizer.encode("\n", add_special_tokens=False)[0]))
    args = make_args(tmp_path, advantage_estimator="reinforce_pp", max_steps=6, save_strategy="no",
                     num_ppo_epochs=1, num_mini_batches=1, ptx_coef=1.0, response_length=12)
    trainer = PPOTrainer(args, tokenizer, policy, ref, lambda prompts, completions, **_: [0.0] * len(completions),
                         None, prompts(), ptx_dataset=demonstrations())
    qr, am, p_len, c_mask = trainer._ptx_batch(0)
    first = tokenizer.decode(qr[0, p_len:][c_mask[0].bool()])
    assert first.startswith("the cat is on the mat<|im_end|>"), first
    assert qr.shape[0] == args.per_device_train_batch_size and am[:, p_len:].equal(c_mask.long())
    history = trainer.train()
    ptx = [h["loss/ptx"] for h in history]
    assert ptx[-1] < ptx[0] - 0.5 and all(b < a for a, b in zip(ptx, ptx[1:], strict=False)), ptx
    plain = PPOTrainer(make_args(tmp_path / "plain", advantage_estimator="reinforce_pp"), tokenizer, policy, ref,
                       target_reward, None, prompts(), ptx_dataset=demonstrations())
    assert plain.ptx_dataset is None
    with pytest.raises(Exception, match="--ptx_coef 1.0 needs demonstrations"):
        PPOTrainer(args, tokenizer, policy, ref, target_reward, None, prompts())
