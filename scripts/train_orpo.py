"""ORPO: odds-ratio preference optimisation, SFT and preference alignment in one loss, no reference model
(TRL's `ORPOTrainer` from `trl.experimental.orpo`, imported through the guard in `open_rlhf.trainers.experimental`).

Loss = NLL of the chosen completion + beta * -log sigmoid(log odds(chosen) - log odds(rejected)), with
odds(y) = p(y) / (1 - p(y)) on length-averaged log-probs (Hong et al. 2024, https://huggingface.co/papers/2403.07691,
Eq. 6-7; ``beta`` is the paper's lambda).

    python scripts/train_orpo.py --config config/orpo/default.yaml --model_name_or_path runs/default/sft
    accelerate launch --config_file config/accelerate/multi_gpu.yaml scripts/train_orpo.py --config config/orpo/default.yaml
"""

from transformers import set_seed
from trl import ModelConfig, TrlParser, get_peft_config

from open_rlhf import data, models, stages
from open_rlhf.config import ScriptArguments
from open_rlhf.trainers.experimental import orpo_classes, orpo_config_class


def main(script_args: ScriptArguments, training_args, model_args: ModelConfig) -> None:
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
        script_args.dataset_name, "preference", eval_size=script_args.eval_size, seed=script_args.split_seed,
        max_samples=script_args.max_train_samples)

    # Train
    _, ORPOTrainer = orpo_classes()
    trainer = ORPOTrainer(model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                          processing_class=tokenizer, peft_config=get_peft_config(model_args))
    trainer.train(resume_from_checkpoint=last_checkpoint)

    # Save
    stages.save_final(training_args.output_dir, lambda d: stages.save_trainer(trainer, d),
                      {"stage": "orpo", "model": model_path, "dataset": script_args.dataset_name,
                       "train_examples": len(train_dataset), "global_step": trainer.state.global_step})


def make_parser() -> TrlParser:
    return TrlParser((ScriptArguments, orpo_config_class(), ModelConfig))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
