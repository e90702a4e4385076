"""Hyperparameter sweep of the preference and RL methods from one SFT policy: a grid per method times seeds, every
run's configuration and result in one CSV, resumable (see `open_rlhf.sweep`).

    python scripts/sweep.py --config config/sweep/default.yaml
    python scripts/sweep.py --sft_model_path runs/default/sft --reward_model_path runs/default/reward \\
        --grid dpo.learning_rate=5e-7,5e-6 dpo.beta=0.1,0.5 --seeds 0 1
"""

from open_rlhf.sweep import sweep_main

if __name__ == "__main__":
    sweep_main()
