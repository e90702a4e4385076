"""Benchmarks through lm-evaluation-harness (and the RLHF metrics) for one or more models.

    python eval/run_eval.py --model runs/default/ppo --model runs/default/sft --bench all --data_dir ../shared/data
    python eval/run_eval.py --model PATH --tasks arc_easy,hellaswag,gsm8k --limit 200 --num_fewshot 0 --data_dir DIR
    python eval/run_eval.py --model PATH --tasks my_task --include_path my_tasks/     # any lm-eval task YAML

See `open_rlhf.run_eval` for every flag (`python eval/run_eval.py --help`).
"""

from open_rlhf.run_eval import main

if __name__ == "__main__":
    main()
