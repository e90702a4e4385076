"""The whole pipeline in one command: SFT -> reward model -> PPO (or ``--method dpo``: SFT -> DPO), then a report.

Outputs go to ``runs/<run_name>/<stage>/``; a finished stage is skipped on re-run, an interrupted one resumes from
its last checkpoint. The report (``runs/<run_name>/report.md`` + PNG plots) compares the base, SFT and final
policies on held-out prompts: task accuracy, reward-model score, KL to the SFT policy, sample generations.

    python scripts/run_pipeline.py --config config/pipeline/default.yaml                     # make pipeline
    python scripts/run_pipeline.py --config config/pipeline/default.yaml --method dpo --run_name default-dpo
    python scripts/run_pipeline.py --config config/pipeline/real_ci.yaml \
        --sft_dataset ../shared/data/gsm8k/train.jsonl \
        --preference_dataset ../shared/data/hh-rlhf/harmless-base/test.jsonl.gz \
        --rl_dataset ../shared/data/gsm8k/test.jsonl --run_name real
"""

from open_rlhf.pipeline import pipeline_main

if __name__ == "__main__":
    pipeline_main()
