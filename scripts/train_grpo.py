"""GRPO: group-relative policy optimisation with verifiable rewards or a reward model (TRL `GRPOTrainer`).

For each prompt ``num_generations`` completions are sampled; each completion's advantage is its reward minus the
group mean (scaled per ``scale_rewards``), and the policy follows the clipped surrogate with TRL's ``loss_type``
(``grpo``, ``bnpo``, ``dr_grpo``, ``dapo``, ...) and an optional KL term to the reference (``beta``). DeepSeekMath,
Shao et al. 2024, https://huggingface.co/papers/2402.03300, Eq. 3. The reward is a spec (``--reward``): with the
verifiable ``math`` reward on the built-in task or GSM8K this is RLVR.

    python scripts/train_grpo.py --config config/grpo/default.yaml --model_name_or_path runs/default/sft
    python scripts/train_grpo.py --config config/grpo/default.yaml --reward "math,0.1*format" \
        --dataset_name ../shared/data/gsm8k/train.jsonl
    python scripts/train_grpo.py --config config/grpo/default.yaml --reward model:runs/default/reward
    accelerate launch --config_file config/accelerate/multi_gpu.yaml scripts/train_grpo.py --config config/grpo/default.yaml
"""

from transformers import set_seed
from trl import GRPOTrainer, ModelConfig, TrlParser, get_peft_config

from open_rlhf import data, models, rewards, stages
from open_rlhf.config import GRPOConfig, ScriptArguments


def main(script_args: ScriptArguments, training_args: GRPOConfig, model_args: ModelConfig) -> None:
    # Output dir, resume, seed (before any model is built: a new reward/value head is randomly initialised)
    last_checkpoint = stages.prepare_output_dir(training_args.output_dir)
    set_seed(training_args.seed)

    # Model, tokenizer, rewards
    model_path = models.resolve_model_path(model_args.model_name_or_path)
    tokenizer = models.load_tokenizer(model_path, padding_side="left")
    model = models.load_causal_lm(model_path, model_args)
    if script_args.use_fused_rmsnorm:
        models.use_fused_rmsnorm(model)
    reward = rewards.build_reward_functions(training_args.reward)
    training_args.reward_weights = reward.weights

    # Data: prompts (+ gold answers for verifiable rewards); the eval split is held out for the final evaluation
    train_dataset, _ = data.load_splits(script_args.dataset_name, "prompt", eval_size=script_args.eval_size,
                                        seed=script_args.split_seed, max_samples=script_args.max_train_samples)
    rewards.check_columns(reward, train_dataset.column_names, script_args.dataset_name)

    # Train
    trainer = GRPOTrainer(model=model, reward_funcs=reward.funcs, args=training_args, train_dataset=train_dataset,
                          processing_class=tokenizer, peft_config=get_peft_config(model_args))
    trainer.train(resume_from_checkpoint=last_checkpoint)

    # Save
    stages.save_final(training_args.output_dir, lambda d: stages.save_trainer(trainer, d),
                      {"stage": "grpo", "model": model_path, "dataset": script_args.dataset_name,
                       "reward": training_args.reward, "global_step": trainer.state.global_step})


def make_parser() -> TrlParser:
    return TrlParser((ScriptArguments, GRPOConfig, ModelConfig))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
