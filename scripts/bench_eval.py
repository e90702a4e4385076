"""Benchmark: documents/s of ``eval/run_eval.py`` vs the plain ``lm-eval`` command line, same task, model and flags.

Each command runs whole (process start, task index, model load, evaluation), alternately, ``--repeats`` times; the
table gives documents/s of the best run of each and the ratio against the lm-eval CLI measured in the same run.
Both must report the same score (checked). Target: run_eval.py within 5% of the CLI.

    python scripts/bench_eval.py --data_dir ../shared/data                 # arc_easy, 200 documents, default model
    python scripts/bench_eval.py --data_dir ../shared/data --task hellaswag --limit 100 --repeats 3
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from trl import TrlParser

from open_rlhf import harness
from open_rlhf.benchmark import report
from open_rlhf.models import ensure_default_model


@dataclass
class BenchEvalArguments:
    data_dir: str = field(default="../shared/data", metadata={"help": "The local public data."})
    task: str = field(default="arc_easy", metadata={"help": "A shipped task (arc_easy, hellaswag, gsm8k)."})
    limit: int = field(default=200, metadata={"help": "Documents."})
    batch_size: int = field(default=8, metadata={"help": "lm-eval batch size (both commands)."})
    repeats: int = field(default=2, metadata={"help": "Runs of each command (alternating); the best counts."})
    results_csv: str = field(default="bench_results/eval.csv", metadata={"help": "Rows are appended here."})


def _score(results_json: Path, task: str) -> float:
    results = json.loads(results_json.read_text())["results"][task]
    return next(v for k, v in results.items() if "," in k and "_stderr" not in k and isinstance(v, float))


def main(args: BenchEvalArguments) -> None:
    model = str(ensure_default_model())
    task = harness.SHIPPED_TASKS.get(args.task, args.task)
    data_dir = str(Path(args.data_dir).resolve())
    env = {**os.environ, **{v: "1" for v in harness.OFFLINE_VARIABLES}}
    with tempfile.TemporaryDirectory(prefix="bench_eval-") as work:
        work = Path(work)
        commands = {
            "lm-eval CLI": [str(Path(sys.executable).with_name("lm-eval")), "run", "--model", "hf", "--model_args",
                            f"pretrained={model}", "--tasks", task, "--include_path", str(harness.TASKS_DIR),
                            "--metadata", json.dumps({"data_dir": data_dir}), "--limit", str(args.limit),
                            "--batch_size", str(args.batch_size), "--device", "cpu", "--output_path", "{out}"],
            "eval/run_eval.py": [sys.executable, str(harness.REPO_ROOT / "eval" / "run_eval.py"), "--tasks", task,
                                 "--data_dir", data_dir, "--limit", str(args.limit), "--batch_size",
                                 str(args.batch_size), "--device", "cpu", "--output_dir", "{out}"],
        }
        seconds = {name: [] for name in commands}
        scores = {}
        for i in range(args.repeats):
            for name, command in commands.items():
                out = work / f"{name.split()[0].replace('/', '_')}-{i}"
                start = time.perf_counter()
                subprocess.run([c.replace("{out}", str(out)) for c in command], check=True, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                seconds[name].append(time.perf_counter() - start)
                scores[name] = _score(next(out.rglob("results*.json")), task)
                print(f"  {name} run {i + 1}: {seconds[name][-1]:.1f} s, score {scores[name]:.4f}", flush=True)
    if len(set(scores.values())) != 1:
        raise SystemExit(f"the two commands disagree: {scores}")
    baseline = args.limit / min(seconds["lm-eval CLI"])
    rows = [{"command": name, "task": task, "documents": args.limit, "best_s": min(s),
             "docs_per_s": args.limit / min(s), "vs_cli": args.limit / min(s) / baseline, "score": scores[name]}
            for name, s in seconds.items()]
    report(rows, ["command", "task", "documents", "best_s", "docs_per_s", "vs_cli", "score"],
           f"run_eval.py vs lm-eval CLI ({Path(model).name}, batch {args.batch_size}, best of {args.repeats})",
           args.results_csv, model=Path(model).name)


def make_parser() -> TrlParser:
    return TrlParser((BenchEvalArguments,))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
