"""``eval/run_eval.py`` / ``open-rlhf eval``: lm-eval benchmarks and the RLHF metrics for one or more models.

    python eval/run_eval.py --model runs/default/ppo --model runs/default/sft --bench all --data_dir ../shared/data
    python eval/run_eval.py --model PATH --tasks arc_easy,hellaswag,gsm8k --limit 200 --num_fewshot 0 --data_dir DIR
    python eval/run_eval.py --model PATH --tasks my_task --include_path my_tasks/     # any lm-eval task YAML
    python eval/run_eval.py --model runs/default/ppo --model runs/default/sft --rlhf --reward_model runs/default/reward

Results go to a new folder (``--output_dir``, default ``runs/eval/<UTC time>/``): ``results.md`` / ``.csv`` /
``.png`` (model x task, lm-eval's metric ± stderr), lm-eval's own ``<model>/results.json``, and with ``--rlhf``
``rlhf.md`` / ``.csv`` / ``.json`` / ``.png`` (`open_rlhf.rlhf_eval`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from open_rlhf.errors import ConfigError, user_errors

RLHF_SETS = ("builtin", "gsm8k", "mt_bench", "self_instruct")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eval/run_eval.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=None,
                        help="A model folder (full, merged or PEFT adapter), a hub id, or 'default'; repeat for "
                             "several. Default: the default model.")
    parser.add_argument("--tasks", default=None,
                        help="Comma-separated lm-eval tasks, groups or tags. With --data_dir, arc_easy, hellaswag, "
                             "gsm8k are the shipped local copies (eval/tasks/).")
    parser.add_argument("--bench", choices=["all", "lm_eval", "rlhf"], default=None,
                        help="all = every shipped task plus the RLHF metrics; lm_eval = every shipped task; "
                             "rlhf = only the RLHF metrics.")
    parser.add_argument("--include_path", action="append", default=None,
                        help="A folder of extra lm-eval task YAMLs (as lm-eval's --include_path); repeatable.")
    parser.add_argument("--data_dir", default=None, help="The local public data (e.g. ../shared/data).")
    parser.add_argument("--limit", type=float, default=None,
                        help="Documents per task (lm-eval --limit; below 1: a fraction). Default: all.")
    parser.add_argument("--num_fewshot", type=int, default=None, help="Few-shot examples (default: the task's).")
    parser.add_argument("--batch_size", default="8", help="lm-eval batch size (an int, or 'auto').")
    parser.add_argument("--device", default=None, help="cpu / cuda / cuda:0 (default: cuda if available).")
    parser.add_argument("--dtype", default=None, help="float32 / bfloat16 / auto (default: the model's config).")
    parser.add_argument("--apply_chat_template", action="store_true",
                        help="Format prompts with the model's chat template (lm-eval --apply_chat_template).")
    parser.add_argument("--gen_kwargs", default=None, help="lm-eval --gen_kwargs, e.g. max_gen_toks=128.")
    parser.add_argument("--bootstrap_iters", type=int, default=100000,
                        help="lm-eval bootstrap iterations for the stderr of non-mean metrics (0: none).")
    parser.add_argument("--seed", type=int, default=0, help="lm-eval's random seed (its default is 0).")
    parser.add_argument("--log_samples", action="store_true", help="Keep lm-eval's per-document samples.")
    parser.add_argument("--online", action="store_true",
                        help="Allow the Hugging Face Hub (hub ids, lm-eval's standard datasets). Default: offline.")
    parser.add_argument("--output_dir", default=None, help="A new folder for the results (default runs/eval/<time>).")
    rlhf = parser.add_argument_group("RLHF metrics (--rlhf or --bench all|rlhf)")
    rlhf.add_argument("--rlhf", action="store_true", help="Also compute the RLHF metrics.")
    rlhf.add_argument("--rlhf_sets", default=",".join(RLHF_SETS),
                      help=f"Held-out prompt sets, comma-separated from {', '.join(RLHF_SETS)}.")
    rlhf.add_argument("--rlhf_prompts", type=int, default=64, help="Prompts per set.")
    rlhf.add_argument("--reward_model", default=None, help="Reward model for scores and win rates.")
    rlhf.add_argument("--baseline", default=None,
                      help="Baseline B of the win rates and reference of the KL (default: the last --model).")
    rlhf.add_argument("--max_new_tokens", type=int, default=96, help="Generation length of the RLHF metrics.")
    rlhf.add_argument("--split_seed", type=int, default=42, help="Seed of the held-out split (as the stages').")
    return parser


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Validate flag values before anything loads.

    Raises:
        ConfigError: for ``--limit`` <= 0, no tasks and no RLHF metrics, or an unknown RLHF set.
    """
    from open_rlhf import harness

    if args.limit is not None and args.limit <= 0:
        raise ConfigError(f"--limit must be > 0 (documents per task, or a fraction below 1), got {args.limit:g}.")
    if args.limit is not None and args.limit >= 1:
        if args.limit != int(args.limit):
            raise ConfigError(f"--limit {args.limit:g}: a count of documents must be whole (or below 1 for a fraction).")
        args.limit = int(args.limit)
    tasks = [t.strip() for t in (args.tasks or "").split(",") if t.strip()]
    if args.bench in ("all", "lm_eval"):
        tasks += [t for t in harness.SHIPPED_TASKS if t not in tasks]
    args.task_list = tasks
    args.rlhf = args.rlhf or args.bench in ("all", "rlhf")
    args.rlhf_set_list = [s.strip() for s in args.rlhf_sets.split(",") if s.strip()]
    unknown = [s for s in args.rlhf_set_list if s not in RLHF_SETS]
    if unknown:
        raise ConfigError(f"--rlhf_sets: unknown set(s) {', '.join(unknown)}; choose from {', '.join(RLHF_SETS)}.")
    if not tasks and not args.rlhf:
        raise ConfigError("nothing to evaluate: pass --tasks, --bench all|lm_eval|rlhf, or --rlhf.")
    if args.rlhf_prompts <= 0:
        raise ConfigError(f"--rlhf_prompts must be > 0, got {args.rlhf_prompts}.")
    args.models = args.model or ["default"]
    if len(set(args.models)) != len(args.models):
        raise ConfigError(f"--model given twice: {', '.join(args.models)}.")
    return args


def run_eval(args: argparse.Namespace) -> Path:
    """Run the benchmarks (and RLHF metrics) of ``args`` (from `make_parser`, checked by `check_args`).

    Every model and task is checked before the first model loads, so a typo fails in seconds.

    Returns:
        `Path` of the results folder.
    """
    from open_rlhf import harness, outputs

    if not args.online:
        harness.set_offline()
    specs = [harness.resolve_model(m) for m in args.models]
    manager = tasks = None
    if args.task_list:
        manager = harness.task_manager(args.include_path, args.data_dir)
        tasks = harness.resolve_tasks(args.task_list, manager, args.data_dir)
    if args.rlhf:
        from open_rlhf import rlhf_eval

        rlhf_eval.check_rlhf_inputs(args)
    out = outputs.new_results_dir(args.output_dir, "eval")
    out.mkdir(parents=True, exist_ok=True)
    print(f"results -> {out}", flush=True)
    timings = {}
    if tasks:
        from tqdm.auto import tqdm

        results_by_model = {}
        with tqdm(total=len(specs) * len(tasks), desc="lm-eval", unit="task", file=sys.stdout) as bar:
            for spec in specs:
                start = time.perf_counter()
                lm = harness.load_lm(spec, args.batch_size, args.device, args.dtype)
                parts = []
                for task in tasks:
                    bar.set_postfix_str(f"{spec.name}: {task}")
                    parts.append(harness.evaluate_task(
                        lm, task, manager, num_fewshot=args.num_fewshot, limit=args.limit,
                        apply_chat_template=args.apply_chat_template, gen_kwargs=args.gen_kwargs,
                        bootstrap_iters=args.bootstrap_iters, seed=args.seed, log_samples=args.log_samples))
                    bar.update(1)
                results_by_model[spec.name] = harness.merge_results(parts)
                timings[spec.name] = time.perf_counter() - start
                del lm
                paths = harness.write_results(out, results_by_model)  # after each model: a crash keeps what finished
        print("\n" + paths["markdown"].read_text(), flush=True)
    if args.rlhf:
        from open_rlhf import rlhf_eval

        start = time.perf_counter()
        paths = rlhf_eval.rlhf_evaluate(args, out)
        timings["rlhf metrics"] = time.perf_counter() - start
        print("\n" + paths["markdown"].read_text(), flush=True)
    for name, seconds in timings.items():
        print(f"wall time {name}: {seconds:.0f} s", flush=True)
    print(f"results: {out}", flush=True)
    return out


def main(argv: list[str] | None = None) -> Path:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run; a user error prints ``error: ...`` and exits 2."""
    with user_errors():
        return run_eval(check_args(make_parser().parse_args(argv)))
