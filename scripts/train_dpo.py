"""Direct preference optimisation (DPO, and IPO etc. through ``--loss_type``) with TRL's `DPOTrainer`.

The reference model is the starting policy (a frozen copy, or the adapter-disabled policy with ``--use_peft``).

    python scripts/train_dpo.py --config config/dpo/default.yaml --model_name_or_path runs/default/sft
    python scripts/train_dpo.py --config config/dpo/default.yaml --loss_type ipo --beta 0.1       # IPO
    accelerate launch --config_file config/accelerate/multi_gpu.yaml scripts/train_dpo.py --config config/dpo/default.yaml
"""

from open_rlhf.cli import stage_main

if __name__ == "__main__":
    stage_main("dpo")
