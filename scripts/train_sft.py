"""Supervised fine-tuning (SFT) of a chat model on prompt/completion demonstrations (TRL `SFTTrainer`).

The prompt is rendered with the model's chat template and masked out of the loss; the loss covers the
assistant's completion including its end-of-turn token, so the tuned model learns to stop.

    python scripts/train_sft.py --config config/sft/default.yaml
    python scripts/train_sft.py --config config/sft/default.yaml --dataset_name ../shared/data/gsm8k/train.jsonl \
        --output_dir runs/gsm8k/sft
    python scripts/train_sft.py --config config/sft/default.yaml --use_peft --lora_r 16 --load_in_4bit  # QLoRA
    accelerate launch --config_file config/accelerate/multi_gpu.yaml scripts/train_sft.py --config config/sft/default.yaml
"""

from open_rlhf.cli import stage_main

if __name__ == "__main__":
    stage_main("sft")
