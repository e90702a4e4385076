"""Our PPO trainer on tiny random models: learning, kill-and-resume equivalence, LoRA reference, errors."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import LlamaForCausalLM, LlamaForSequenceClassification

from open_rlhf.trainers.ppo import PPOConfig, PPOTrainer
from tests.conftest import tiny_llama_config

WORDS = [" the", " a", " cat", " dog", " and", " is", " on", " mat"]


TARGETS = {"the", "a", "cat", "dog"}  # half of WORDS


def target_reward(prompts, completions, **_):
    """Dense, learnable reward: the share of the response's words that are in TARGETS."""
    return [sum(w in TARGETS for w in c.split()) / max(1, len(c.split())) for c in completions]


def restrict_to_words(model, tokenizer):
    """Add -20 to the logits of every token outside WORDS (a hook on the LM head), so a random tiny model is an
    ~8-way stochastic policy; without it, it is ~uniform over 49k tokens and no reward on text is ever seen."""
    ids = [tokenizer.encode(w, add_special_tokens=False)[0] for w in WORDS]
    bias = torch.full((model.config.vocab_size,), -20.0)
    bias[ids] = 0.0
    model.lm_head.register_forward_hook(lambda module, inputs, output: output + bias.to(output.dtype))


def make_models(tokenizer, seed=0):
    torch.manual_seed(seed)
    config = tiny_llama_config(tokenizer, tie_word_embeddings=False)
    policy = LlamaForCausalLM(config)
    ref = LlamaForCausalLM(config)
    ref.load_state_dict(policy.state_dict())
    restrict_to_words(policy, tokenizer)
    restrict_to_words(ref, tokenizer)
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
        torch.testing.assert_close(merged[key_in_peft], before)


def test_save_model_writes_loadable_policy_and_value(tmp_path, tokenizer):
    policy, ref, value = make_models(tokenizer)
    trainer = PPOTrainer(make_args(tmp_path, max_steps=1, save_strategy="no"), tokenizer, policy, ref,
                         target_reward, value, prompts())
    trainer.train()
    trainer.save_model(str(tmp_path / "out"))
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "out")
    torch.testing.assert_close(reloaded.lm_head.weight, trainer.policy.lm_head.weight)
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
