"""Process reward model: a token classifier scoring every solution step (ours: TRL 1.16 removed its PRMTrainer).

Loss: cross-entropy of the step label (correct / wrong) at each step's last token (Lightman et al. 2023,
"Let's Verify Step by Step"; Wang et al. 2024, "Math-Shepherd", Eq. 4); see `open_rlhf.trainers.prm`.
Step labels come from the data:

- ``builtin``: exact labels; the built-in task knows where a rejected solution's slip is (steps before it correct,
  from it on wrong);
- GSM8K (or any prompts with gold answers): Math-Shepherd Monte-Carlo labels, ``--mc_rollouts`` completions per
  step sampled from ``--mc_policy`` (default the starting model); a step is good if any completion reaches the
  gold answer (cached in ``<output_dir>/step_labels-*.jsonl``);
- a file in TRL's stepwise-supervision format (``prompt``, ``completions``, ``labels``).

Held-out step accuracy and first-error-step accuracy are printed at the end and kept in the completion record.

    python scripts/train_prm.py --config config/prm/default.yaml --model_name_or_path runs/default/sft
    python scripts/train_prm.py --config config/prm/default.yaml --model_name_or_path runs/default/sft \
        --dataset_name ../shared/data/gsm8k/train.jsonl --max_train_samples 64 --eval_size 16 --mc_rollouts 4 \
        --output_dir runs/gsm8k/prm
"""

from open_rlhf.cli import stage_main

if __name__ == "__main__":
    stage_main("prm")
