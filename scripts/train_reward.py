"""Reward model: a sequence classifier with one output trained on chosen/rejected pairs (TRL `RewardTrainer`).

Loss: -log sigmoid(r(x, y_chosen) - r(x, y_rejected)) (Bradley-Terry; Ouyang et al. 2022, Eq. 1). The scalar
head is new; the backbone starts from ``--model_name_or_path`` (usually the SFT model).

    python scripts/train_reward.py --config config/reward/default.yaml --model_name_or_path runs/default/sft
    python scripts/train_reward.py --config config/reward/default.yaml \
        --dataset_name ../shared/data/hh-rlhf/harmless-base/test.jsonl.gz --output_dir runs/hh/reward
    accelerate launch --config_file config/accelerate/multi_gpu.yaml scripts/train_reward.py --config config/reward/default.yaml
"""

from open_rlhf.cli import stage_main

if __name__ == "__main__":
    stage_main("reward")
