"""Reward model: a sequence classifier with one output trained on chosen/rejected pairs (TRL `RewardTrainer`).

Loss: -log sigmoid(r(x, y_chosen) - r(x, y_rejected)) (Bradley-Terry; Ouyang et al. 2022, Eq. 1). The scalar
head is new; the backbone starts from ``--model_name_or_path`` (usually the SFT model).

    python scripts/train_reward.py --config config/reward/default.yaml --model_name_or_path runs/default/sft
    python scripts/train_reward.py --config config/reward/default.yaml \
        --dataset_name ../shared/data/hh-rlhf/harmless-base/test.jsonl.gz --output_dir runs/hh/reward
    accelerate launch --config_file config/accelerate/multi_gpu.yaml scripts/train_reward.py --config config/reward/default.yaml
"""

from transformers import set_seed
from trl import ModelConfig, RewardTrainer, TrlParser, get_peft_config

from open_rlhf import data, models, stages
from open_rlhf.config import RewardConfig, ScriptArguments


def main(script_args: ScriptArguments, training_args: RewardConfig, model_args: ModelConfig) -> None:
    # Output dir, resume, seed (before any model is built: a new reward/value head is randomly initialised)
    last_checkpoint = stages.prepare_output_dir(training_args.output_dir)
    set_seed(training_args.seed)

    # Model and tokenizer
    model_path = models.resolve_model_path(model_args.model_name_or_path)
    tokenizer = models.load_tokenizer(model_path, padding_side="right")
    model = models.load_scalar_head_model(model_path, tokenizer.pad_token_id, model_args)
    if script_args.use_fused_rmsnorm:
        models.use_fused_rmsnorm(model)
    model_args.lora_task_type = "SEQ_CLS"  # LoRA on a classifier must also train (and save) the score head

    # Data
    train_dataset, eval_dataset = data.load_splits(
        script_args.dataset_name, "preference", eval_size=script_args.eval_size, seed=script_args.split_seed,
        max_samples=script_args.max_train_samples)

    # Train
    trainer = RewardTrainer(model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                            processing_class=tokenizer, peft_config=get_peft_config(model_args))
    trainer.train(resume_from_checkpoint=last_checkpoint)

    # Save
    stages.save_final(training_args.output_dir, lambda d: stages.save_trainer(trainer, d),
                      {"stage": "reward", "model": model_path, "dataset": script_args.dataset_name,
                       "train_examples": len(train_dataset), "global_step": trainer.state.global_step})


def make_parser() -> TrlParser:
    return TrlParser((ScriptArguments, RewardConfig, ModelConfig))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
