"""RLOO: REINFORCE with a leave-one-out baseline, with verifiable rewards or a reward model (TRL `RLOOTrainer`).

For each prompt ``num_generations`` (k) completions are sampled; completion i's advantage is its reward minus the
mean reward of the other k-1 completions of the same prompt, and the KL to the reference (``beta``) enters the
reward. Ahmadian et al. 2024, https://huggingface.co/papers/2402.14740, Eq. 6 (Kool et al. 2019). The reward is a
spec (``--reward``), as for GRPO.

    python scripts/train_rloo.py --config config/rloo/default.yaml --model_name_or_path runs/default/sft
    python scripts/train_rloo.py --config config/rloo/default.yaml --reward model:runs/default/reward
    accelerate launch --config_file config/accelerate/multi_gpu.yaml scripts/train_rloo.py --config config/rloo/default.yaml
"""

from open_rlhf.cli import stage_main

if __name__ == "__main__":
    stage_main("rloo")
