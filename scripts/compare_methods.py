"""Train every preference / RL method from one SFT policy and compare them on held-out prompts.

Writes ``runs/<run_name>/method_comparison.{csv,md,png}`` (accuracy, reward-model win rate vs SFT, KL to SFT,
wall time, peak memory); see `open_rlhf.compare`. Finished methods are reused, so a rerun only adds what is new.

    python scripts/compare_methods.py --sft_model_path runs/default/sft --reward_model_path runs/default/reward
    python scripts/compare_methods.py --methods dpo simpo grpo --run_name methods-small
"""

from open_rlhf.compare import compare_main

if __name__ == "__main__":
    compare_main()
