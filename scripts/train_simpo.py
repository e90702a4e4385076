"""SimPO: reference-free preference optimisation with a length-normalised reward and a target margin
(our `open_rlhf.trainers.simpo.SimPOTrainer`, a small subclass of TRL's `DPOTrainer`).

Loss = -log sigmoid(beta * (avg log p(chosen) - avg log p(rejected)) - gamma), averages over completion tokens
(Meng et al. 2024, https://huggingface.co/papers/2405.14734, Eq. 6). No reference model is loaded.

    python scripts/train_simpo.py --config config/simpo/default.yaml --model_name_or_path runs/default/sft
    accelerate launch --config_file config/accelerate/multi_gpu.yaml scripts/train_simpo.py --config config/simpo/default.yaml
"""

from transformers import set_seed
from trl import ModelConfig, TrlParser, get_peft_config

from open_rlhf import data, models, stages
from open_rlhf.config import ScriptArguments
from open_rlhf.trainers.simpo import SimPOConfig, SimPOTrainer


def main(script_args: ScriptArguments, training_args: SimPOConfig, model_args: ModelConfig) -> None:
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
    trainer = SimPOTrainer(model=model, args=training_args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                           processing_class=tokenizer, peft_config=get_peft_config(model_args))
    trainer.train(resume_from_checkpoint=last_checkpoint)

    # Save
    stages.save_final(training_args.output_dir, lambda d: stages.save_trainer(trainer, d),
                      {"stage": "simpo", "model": model_path, "dataset": script_args.dataset_name,
                       "train_examples": len(train_dataset), "global_step": trainer.state.global_step})


def make_parser() -> TrlParser:
    return TrlParser((ScriptArguments, SimPOConfig, ModelConfig))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
