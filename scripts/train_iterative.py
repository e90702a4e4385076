"""Round-based self-improvement from one policy: SPIN, iterative DPO with a judge, rejection-sampling fine-tuning
(RFT) and Step-DPO; every round's data and policy under --output_dir, resumable per round (open_rlhf.iterative).

    python scripts/train_iterative.py --config config/iterative/spin.yaml --model_name_or_path runs/default/sft
    python scripts/train_iterative.py --config config/iterative/iterative_dpo.yaml --model_name_or_path runs/default/sft \\
        --judge model:runs/default/reward --rounds 3
    python scripts/run_pipeline.py --config config/pipeline/default.yaml --method rft
"""

from open_rlhf.iterative import iterative_main

if __name__ == "__main__":
    iterative_main()
