"""Safety of one or more policies on held-out hh-rlhf harmless-base prompts: harmlessness reward-model score,
refusal rate, offensive-language rate, worst responses (see `open_rlhf.safety`).

    python eval/run_safety.py --model runs/default/ppo --model runs/default/sft --data_dir ../shared/data
    python eval/run_safety.py --model default --num_prompts 32 --max_new_tokens 64 --data_dir ../shared/data
    python eval/run_safety.py --model runs/default/ppo --reward_model runs/safety/<time>/harmless_reward

Without ``--reward_model`` a harmless reward model is trained first (``config/reward/harmless.yaml``, a few
minutes on a CPU) into ``<output_dir>/harmless_reward/``. Results: ``safety.md``, ``safety.csv``, ``safety.png``,
``responses.jsonl`` in ``--output_dir`` (default ``runs/safety/<UTC time>/``). Bad input: one ``error:`` line, exit 2.
"""

from __future__ import annotations

from open_rlhf.errors import user_errors


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` (default ``sys.argv[1:]``), run `open_rlhf.safety.run_safety`, print where the results are."""
    from open_rlhf import safety

    with user_errors():
        report = safety.run_safety(safety.parse_args(argv))
    print((report.output_dir / "safety.md").read_text().split("\n## ")[0])  # the table, not the worst-5
    print(f"Written: {report.output_dir}/safety.md, safety.csv, safety.png, responses.jsonl")


if __name__ == "__main__":
    main()
