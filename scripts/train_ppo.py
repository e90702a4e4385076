"""PPO (RLHF) of a chat policy against a reward model or a verifiable reward (our `open_rlhf.trainers.ppo`);
with ``--advantage_estimator reinforce_pp`` it is REINFORCE++ (no value model).

With no flags it trains the default model on the built-in arithmetic prompts with the verifiable accuracy
reward (PPO with verifiable rewards) into ``runs/ppo``: one pass over the 2000 built-in prompts, 250 updates of
8 rollouts (about 3 hours on 2 CPU cores; add ``--max_steps 6`` for a 5-minute run). ``--reward_model_path``
switches to a trained reward model; ``--reward`` takes any reward spec (`open_rlhf.rewards`).

    python scripts/train_ppo.py
    python scripts/train_ppo.py --config config/ppo/default.yaml --model_name_or_path runs/default/sft \
        --reward_model_path runs/default/reward --output_dir runs/default/ppo
    python scripts/train_ppo.py --config config/ppo/default.yaml --use_peft --lora_r 16   # LoRA: no reference copy
    python scripts/train_ppo.py --config config/ppo/reinforce_pp.yaml --model_name_or_path runs/default/sft  # REINFORCE++
    accelerate launch --config_file config/accelerate/multi_gpu.yaml scripts/train_ppo.py --config config/ppo/default.yaml
"""

from transformers import set_seed
from trl import ModelConfig, TrlParser

from open_rlhf import data, models, rewards, stages
from open_rlhf.config import ScriptArguments
from open_rlhf.trainers.ppo import PPOConfig, PPOTrainer


def main(script_args: ScriptArguments, training_args: PPOConfig, model_args: ModelConfig) -> None:
    # Output dir, resume, seed (before any model is built: a new reward/value head is randomly initialised)
    last_checkpoint = stages.prepare_output_dir(training_args.output_dir)
    set_seed(training_args.seed)

    # Models: policy, reference, reward, value
    policy, ref_model, tokenizer, model_path = models.load_policy_and_reference(
        model_args, training_args.sft_model_path)
    reward_spec = training_args.reward or (
        f"model:{training_args.reward_model_path}" if training_args.reward_model_path else "accuracy")
    reward = rewards.build_reward_functions(reward_spec)
    value_model = None  # REINFORCE++ has none
    if training_args.advantage_estimator == "gae":
        value_model = models.load_value_model(training_args.value_model_path, training_args.reward_model_path,
                                              model_path, tokenizer.pad_token_id)
    if script_args.use_fused_rmsnorm:
        for m in (policy, ref_model, value_model):
            if m is not None:
                models.use_fused_rmsnorm(m)

    # Data: prompts (+ gold answers for the verifiable reward)
    # (the eval split is held out, not trained on: the pipeline's final evaluation uses exactly those prompts)
    train_dataset, _ = data.load_splits(script_args.dataset_name, "prompt", eval_size=script_args.eval_size,
                                        seed=script_args.split_seed, max_samples=script_args.max_train_samples)
    rewards.check_columns(reward, train_dataset.column_names, script_args.dataset_name)

    # Train
    trainer = PPOTrainer(args=training_args, processing_class=tokenizer, model=policy, ref_model=ref_model,
                         reward_funcs=[reward], value_model=value_model, train_dataset=train_dataset)
    trainer.train(resume_from_checkpoint=last_checkpoint)

    # Save
    stages.save_final(training_args.output_dir, trainer.save_model,
                      {"stage": "ppo", "model": model_path, "dataset": script_args.dataset_name,
                       "reward": reward_spec, "global_step": trainer.global_step})


def make_parser() -> TrlParser:
    return TrlParser((ScriptArguments, PPOConfig, ModelConfig))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
