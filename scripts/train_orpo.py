"""ORPO: odds-ratio preference optimisation, SFT and preference alignment in one loss, no reference model
(TRL's `ORPOTrainer` from `trl.experimental.orpo`, imported through the guard in `open_rlhf.trainers.experimental`).

Loss = NLL of the chosen completion + beta * -log sigmoid(log odds(chosen) - log odds(rejected)), with
odds(y) = p(y) / (1 - p(y)) on length-averaged log-probs (Hong et al. 2024, https://huggingface.co/papers/2403.07691,
Eq. 6-7; ``beta`` is the paper's lambda).

    python scripts/train_orpo.py --config config/orpo/default.yaml --model_name_or_path runs/default/sft
    accelerate launch --config_file config/accelerate/multi_gpu.yaml scripts/train_orpo.py --config config/orpo/default.yaml
"""

from open_rlhf.cli import stage_main

if __name__ == "__main__":
    stage_main("orpo")
