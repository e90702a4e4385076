"""Benchmark: streaming merge (open_rlhf.merging) vs the naive load-everything merge of three model copies.

Builds three "fine-tuned" copies of the default model (SmolLM2-135M-Instruct, 538 MB fp32) by adding seeded
noise (1% of each tensor's std) in a temp folder, then runs each approach once, in its own child process, and
reports wall time and peak RSS (the child's VmHWM), with ratios against the naive merge measured in the same
run. Also checks that both outputs agree. Prints a table and writes bench_results/merge_<time>.csv.

    python scripts/bench_merge.py                      # ~2 min on 2 CPU cores, ~3.3 GB in $TMPDIR
    python scripts/bench_merge.py --work_dir /big/tmp
"""

import csv
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from trl import TrlParser

from open_rlhf.merging.bench import make_noisy_copies, max_abs_diff, measure
from open_rlhf.models import ensure_default_model


@dataclass
class BenchMergeArguments:
    work_dir: str | None = field(default=None, metadata={"help": "Scratch folder (default: a temp folder)."})
    results_dir: str = field(default="bench_results", metadata={"help": "Where the CSV goes."})
    num_models: int = field(default=3, metadata={"help": "Number of noisy copies to merge."})
    small_shard_mb: float = field(default=100, metadata={"help": "Shard size of the second streaming run (MB)."})


def main(args: BenchMergeArguments) -> None:
    source = ensure_default_model()
    with tempfile.TemporaryDirectory(dir=args.work_dir, prefix="bench_merge-") as work:
        work = Path(work)
        start = time.perf_counter()
        copies = [str(p) for p in make_noisy_copies(source, work / "inputs", n=args.num_models)]
        print(f"made {len(copies)} noisy copies of {source} in {time.perf_counter() - start:.1f} s")
        worker = [sys.executable, "-m", "open_rlhf.merging.bench"]
        runs = {
            "imports only (torch+transformers)": "imports",
            f"naive: {args.num_models} x from_pretrained, average, save_pretrained": "naive",
            "streaming merge_models (one output file)": "streaming",
            f"streaming merge_models ({args.small_shard_mb:g} MB shards)": f"streaming:{args.small_shard_mb:g}",
        }
        rows = []
        for label, approach in runs.items():
            result = measure([*worker, approach, str(work / approach.replace(":", "_")), *copies])
            rows.append({"approach": label, **result})
            print(f"  {label}: {result['wall_s']:.1f} s, {result['peak_rss_mb']:.0f} MB")
        diff = max_abs_diff(work / "naive", work / "streaming")
        diff_sharded = max_abs_diff(work / "naive", work / runs[list(runs)[-1]].replace(":", "_"))
    naive = rows[1]
    for row in rows:
        row["wall_vs_naive"] = row["wall_s"] / naive["wall_s"]
        row["rss_vs_naive"] = row["peak_rss_mb"] / naive["peak_rss_mb"]
    model_mb = (Path(source) / "model.safetensors").stat().st_size / 1e6
    print(f"\nMerging {args.num_models} copies of {Path(source).name} ({model_mb:.0f} MB each, fp32), linear average; "
          f"max |naive - streaming| = {diff:.2e} (sharded: {diff_sharded:.2e})")
    header = f"{'approach':<62} {'wall s':>7} {'peak RSS MB':>12} {'wall/naive':>11} {'RSS/naive':>10}"
    print(header + "\n" + "-" * len(header))
    for row in rows:
        print(f"{row['approach']:<62} {row['wall_s']:>7.1f} {row['peak_rss_mb']:>12.0f} "
              f"{row['wall_vs_naive']:>11.2f} {row['rss_vs_naive']:>10.2f}")
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"merge_{time.strftime('%Y%m%d-%H%M%S')}.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*rows[0], "model_mb", "num_models", "max_abs_diff_vs_naive"])
        writer.writeheader()
        diffs = {rows[2]["approach"]: diff, rows[3]["approach"]: diff_sharded}
        for row in rows:
            writer.writerow({**row, "model_mb": round(model_mb), "num_models": args.num_models,
                             "max_abs_diff_vs_naive": diffs.get(row["approach"], "")})
    print(f"wrote {csv_path}")


def make_parser() -> TrlParser:
    return TrlParser((BenchMergeArguments,))


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
