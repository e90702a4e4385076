"""GRPO: group-relative policy optimisation with verifiable rewards or a reward model (TRL `GRPOTrainer`).

For each prompt ``num_generations`` completions are sampled; each completion's advantage is its reward minus the
group mean (scaled per ``scale_rewards``), and the policy follows the clipped surrogate with TRL's ``loss_type``
(``grpo``, ``bnpo``, ``dr_grpo``, ``dapo``, ...) and an optional KL term to the reference (``beta``). DeepSeekMath,
Shao et al. 2024, https://huggingface.co/papers/2402.03300, Eq. 3. The reward is a spec (``--reward``): with the
verifiable ``math`` reward on the built-in task or GSM8K this is RLVR.

    python scripts/train_grpo.py --config config/grpo/default.yaml --model_name_or_path runs/default/sft
    python scripts/train_grpo.py --config config/grpo/default.yaml --reward "math,0.1*format" \
        --dataset_name ../shared/data/gsm8k/train.jsonl
    python scripts/train_grpo.py --config config/grpo/default.yaml --reward model:runs/default/reward
    accelerate launch --config_file config/accelerate/multi_gpu.yaml scripts/train_grpo.py --config config/grpo/default.yaml
"""

from open_rlhf.cli import stage_main

if __name__ == "__main__":
    stage_main("grpo")
