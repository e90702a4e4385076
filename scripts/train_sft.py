"""Supervised fine-tuning (SFT) of a chat model on prompt/completion demonstrations (TRL `SFTTrainer`).

The prompt is rendered with the model's chat template and masked out of the loss; the loss covers the
assistant's completion including its end-of-turn token, so the tuned model learns to stop.

    python scripts/train_sft.py --config config/sft/default.yaml
    python scripts/train_sft.py --config config/sft/default.yaml --dataset_name ../shared/data/gsm8k/train.jsonl \
        --output_dir runs/gsm8k/sft
    python scripts/train_sft.py --config config/sft/default.yaml --use_peft --lora_r 16 --load_in_4bit  # QLoRA
    accelerate launch --config_file config/accelerate/multi_gpu.yaml scripts/train_sft.py --config config/sft/default.yaml
"""

from transformers import set_seed
from trl import ModelConfig, SFTTrainer, TrlParser, get_peft_config

from open_rlhf import data, models, stages
from open_rlhf.config import ScriptArguments, SFTConfig


def main(script_args: ScriptArguments, training_args: SFTConfig, model_args: ModelConfig) -> None:
    # Output dir, resume, seed (before any model is built: a new reward/value head is randomly initialised)
    last_checkpoint = stages.prepare_output_dir(training_args.output_dir)
    set_seed(training_args.seed)

    # Model and tokenizer
    model_path = models.resolve_model_path(model_args.model_name_or_path)
    tokenizer = models.load_tokenizer(model_path, padding_side="right")
    model = models.load_causal_lm(model_path, model_args)
    if script_args.use_fused_rmsnorm:
        models.use_fused_rmsnorm(model)

    # Data
    train_dataset, eval_dataset = data.load_splits(
        script_args.dataset_name, "sft", eval_size=script_args.eval_size, seed=script_args.split_seed,
        max_samples=script_args.max_train_samples)

    # Train
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=tokenizer, peft_config=get_peft_config(model_args))
    trainer.train(resume_from_checkpoint=last_checkpoint)

    # Save
    stages.save_final(training_args.output_dir, lambda d: stages.save_trainer(trainer, d),
                      {"stage": "sft", "model": model_path, "dataset": script_args.dataset_name,
                       "train_examples": len(train_dataset), "global_step": trainer.state.global_step})


def make_parser() -> TrlParser:
    return TrlParser((ScriptArguments, SFTConfig, ModelConfig))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
