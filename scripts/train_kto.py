"""KTO: preference optimisation from unpaired desirable / undesirable completions (TRL `KTOTrainer`).

Kahneman-Tversky Optimisation (Ethayarajh et al. 2024, https://huggingface.co/papers/2402.01306) needs only a
binary label per completion. Native unpaired data (``prompt``/``completion``/``label``) is used as it is;
preference pairs (the built-in task, hh-rlhf) are split into one desirable and one undesirable example each.
The reference model is the starting policy.

    python scripts/train_kto.py --config config/kto/default.yaml --model_name_or_path runs/default/sft
    accelerate launch --config_file config/accelerate/multi_gpu.yaml scripts/train_kto.py --config config/kto/default.yaml
"""

from transformers import set_seed
from trl import KTOTrainer, ModelConfig, TrlParser, get_peft_config

from open_rlhf import data, models, stages
from open_rlhf.config import KTOConfig, ScriptArguments


def main(script_args: ScriptArguments, training_args: KTOConfig, model_args: ModelConfig) -> None:
    # Output dir, resume, seed (before any model is built: a new reward/value head is randomly initialised)
    last_checkpoint = stages.prepare_output_dir(training_args.output_dir)
    set_seed(training_args.seed)

    # Model and tokenizer
    model_path = models.resolve_model_path(model_args.model_name_or_path)
    tokenizer = models.load_tokenizer(model_path, padding_side="right")
    model = models.load_causal_lm(model_path, model_args)
    if script_args.use_fused_rmsnorm:
        models.use_fused_rmsnorm(model)

    # Data: unpaired (prompt, completion, label); pairs are unpaired after the split, so both halves of a
    # held-out pair stay held out
    train_dataset, eval_dataset = data.load_splits(
        script_args.dataset_name, "unpaired", eval_size=script_args.eval_size, seed=script_args.split_seed,
        max_samples=script_args.max_train_samples)

    # Train
    trainer = KTOTrainer(model=model, ref_model=None, args=training_args, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=tokenizer, peft_config=get_peft_config(model_args))
    trainer.train(resume_from_checkpoint=last_checkpoint)

    # Save
    stages.save_final(training_args.output_dir, lambda d: stages.save_trainer(trainer, d),
                      {"stage": "kto", "model": model_path, "dataset": script_args.dataset_name,
                       "train_examples": len(train_dataset), "global_step": trainer.state.global_step})


def make_parser() -> TrlParser:
    return TrlParser((ScriptArguments, KTOConfig, ModelConfig))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
