"""Load test of the chat server: p50/p95/p99 latency and throughput at 1, 4 and 16 concurrent clients.

Starts ``scripts/serve.py``'s server (transformers serve) on loopback for ``--model`` (or uses a running one with
``--url``), sends ``--requests`` greedy chat requests per concurrency level through ``httpx`` (one connection per
client, ``--max_tokens`` new tokens each), prints a table with the CPU above it and appends the rows to
bench_results/serve.csv. Logic: `open_rlhf.serving.load_test`.

    python scripts/bench_serve.py                                  # the default model, 16 requests per level
    python scripts/bench_serve.py --model runs/default/ppo --requests 32 --max_tokens 32
    python scripts/serve.py --port 8000 & python scripts/bench_serve.py --url http://127.0.0.1:8000
"""

from dataclasses import dataclass, field

import torch
from trl import TrlParser

from open_rlhf.benchmark import report
from open_rlhf.errors import user_errors
from open_rlhf.serving import load_test, running_server, wait_until_ready


@dataclass
class BenchServeArguments:
    model: str = field(default="default", metadata={"help": "The model folder to serve (or default)."})
    url: str = field(default="", metadata={"help": "A running server to test instead of starting one."})
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16], metadata={"help": "Concurrent clients."})
    requests: int = field(default=16, metadata={"help": "Requests per concurrency level."})
    max_tokens: int = field(default=16, metadata={"help": "max_tokens of each request (greedy)."})
    continuous_batching: bool = field(default=False, metadata={"help": "Serve with transformers' continuous "
                                                                       "batching."})
    results_csv: str = field(default="bench_results/serve.csv", metadata={"help": "Rows are appended here."})


def main(args: BenchServeArguments) -> None:
    print(f"CPU: {torch.backends.cpu.get_cpu_capability()} (torch.backends.cpu.get_cpu_capability()), "
          f"{torch.get_num_threads()} torch threads")
    columns = ["concurrency", "requests", "errors", "p50_ms", "p95_ms", "p99_ms", "req_per_s", "gen_tokens_per_s",
               "mean_new_tokens"]
    title = (f"Chat server load test: {args.requests} requests per level, max_tokens {args.max_tokens}, greedy, "
             f"transformers serve{', continuous batching' if args.continuous_batching else ''}")
    if args.url:
        model_id = wait_until_ready(args.url.rstrip("/"), 60)
        rows = load_test(args.url.rstrip("/"), model_id, args.concurrency, args.requests, args.max_tokens)
    else:
        extra = ["--continuous_batching", "true"] if args.continuous_batching else []
        with running_server(args.model, extra_args=extra) as server:
            rows = load_test(server.base_url, server.model_id, args.concurrency, args.requests, args.max_tokens)
    report(rows, columns, title, args.results_csv, args.model)


if __name__ == "__main__":
    (bench_args,) = TrlParser(BenchServeArguments).parse_args_and_config()
    with user_errors():
        main(bench_args)
