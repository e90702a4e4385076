"""SimPO: reference-free preference optimisation with a length-normalised reward and a target margin
(our `open_rlhf.trainers.simpo.SimPOTrainer`, a small subclass of TRL's `DPOTrainer`).

Loss = -log sigmoid(beta * (avg log p(chosen) - avg log p(rejected)) - gamma), averages over completion tokens
(Meng et al. 2024, https://huggingface.co/papers/2405.14734, Eq. 6). No reference model is loaded.

    python scripts/train_simpo.py --config config/simpo/default.yaml --model_name_or_path runs/default/sft
    accelerate launch --config_file config/accelerate/multi_gpu.yaml scripts/train_simpo.py --config config/simpo/default.yaml
"""

from open_rlhf.cli import stage_main

if __name__ == "__main__":
    stage_main("simpo")
