"""On-policy preference pairs: K samples per prompt from a policy, judged by a reward spec, best vs worst, written
as a conversational prompt/chosen/rejected JSONL for the preference stages (see `open_rlhf.onpolicy`).

    python scripts/make_pairs.py --policy runs/default/sft --k 4 --judge math --output runs/default/pairs-sft.jsonl
    python scripts/train_dpo.py --config config/dpo/default.yaml --model_name_or_path runs/default/sft \\
        --dataset_name runs/default/pairs-sft.jsonl
"""

from open_rlhf.onpolicy import make_pairs_main

if __name__ == "__main__":
    make_pairs_main()
