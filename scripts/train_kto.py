"""KTO: preference optimisation from unpaired desirable / undesirable completions (TRL `KTOTrainer`).

Kahneman-Tversky Optimisation (Ethayarajh et al. 2024, https://huggingface.co/papers/2402.01306) needs only a
binary label per completion. Native unpaired data (``prompt``/``completion``/``label``) is used as it is;
preference pairs (the built-in task, hh-rlhf) are split into one desirable and one undesirable example each.
The reference model is the starting policy.

    python scripts/train_kto.py --config config/kto/default.yaml --model_name_or_path runs/default/sft
    accelerate launch --config_file config/accelerate/multi_gpu.yaml scripts/train_kto.py --config config/kto/default.yaml
"""

from open_rlhf.cli import stage_main

if __name__ == "__main__":
    stage_main("kto")
