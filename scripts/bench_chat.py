"""Benchmark: the web demo's chat latency, time to first token and tokens/s, against plain ``model.generate``.

In one process, on the same prompts and greedy settings: the baseline is ``model.generate`` without a streamer
(its first-token time is a ``max_new_tokens=1`` call: the prefill plus one decoding step), the demo's path is
`open_rlhf.chat.stream_reply` (chat template, `TextIteratorStreamer` in a background thread). With ``--url`` the
same messages also go through a running demo server (``/chat`` via ``gradio_client``: HTTP, queue and streaming
included), the time to first token being that of the first streamed output. Target: first token under 1 s on the
default model on 2 CPU cores.

    python scripts/bench_chat.py                                   # the default model, 5 prompts, 64 new tokens
    python web_demo/app.py & python scripts/bench_chat.py --url http://127.0.0.1:7860/
"""

import statistics
import time
from dataclasses import dataclass, field

import torch
from trl import TrlParser

from open_rlhf import chat
from open_rlhf.benchmark import CHAT_PROMPTS, report

PROMPTS = list(CHAT_PROMPTS)


@dataclass
class BenchChatArguments:
    model: str = field(default="default", metadata={"help": "The policy (a folder, or default)."})
    max_new_tokens: int = field(default=64, metadata={"help": "Tokens per reply (greedy)."})
    repeats: int = field(default=2, metadata={"help": "Passes over the prompts; the median of all counts."})
    url: str = field(default="", metadata={"help": "A running demo to time through /chat as well."})
    results_csv: str = field(default="bench_results/chat.csv", metadata={"help": "Rows are appended here."})


def _baseline(loaded: chat.LoadedModel, prompt: str, max_new_tokens: int) -> tuple[float, float, int]:
    """(first-token seconds, total seconds, new tokens) of plain ``generate`` calls."""
    ids = chat.check_prompt(loaded.tokenizer, [{"role": "user", "content": prompt}])
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, eos_token_id=loaded.stop_ids,
                  pad_token_id=loaded.tokenizer.pad_token_id)
    with torch.inference_mode():
        start = time.perf_counter()
        loaded.model.generate(max_new_tokens=1, **kwargs)
        first = time.perf_counter() - start
        start = time.perf_counter()
        out = loaded.model.generate(max_new_tokens=max_new_tokens, **kwargs)
        total = time.perf_counter() - start
    return first, total, out.shape[1] - ids.shape[1]


def _streamed(loaded: chat.LoadedModel, prompt: str, max_new_tokens: int) -> tuple[float, float, int]:
    settings = chat.GenerationSettings(max_new_tokens=max_new_tokens, temperature=0)
    *_, last = chat.stream_reply(loaded, [{"role": "user", "content": prompt}], settings)
    return last.first_token_s, last.elapsed_s, last.new_tokens


def _served(url: str, prompt: str, max_new_tokens: int) -> tuple[float, float, int]:
    from gradio_client import Client

    client = Client(url, verbose=False)
    start = time.perf_counter()
    job = client.submit(prompt, "", "", 0.0, 0.9, max_new_tokens, api_name="/chat")
    first = None
    for _ in job:
        first = first or time.perf_counter() - start
    text = job.result()
    return first, time.perf_counter() - start, len(text)


def _row(name: str, runs: list[tuple[float, float, int]], baseline_tps: float | None, unit: str = "tokens") -> dict:
    first = statistics.median(r[0] for r in runs)
    total = statistics.median(r[1] for r in runs)
    tokens = statistics.median(r[2] for r in runs)
    decode = statistics.median([(r[2] - 1) / (r[1] - r[0]) for r in runs if r[2] > 1 and r[1] > r[0]] or [0.0])
    row = {"path": name, "first_token_s": first, "total_s": total, f"new_{unit}": tokens}
    if unit == "tokens":
        row["tokens_per_s"] = decode
    if baseline_tps and unit == "tokens":
        row["vs_generate"] = decode / baseline_tps
    return row


def main(args: BenchChatArguments) -> None:
    loaded = chat.ModelPool().policy(args.model)
    print(f"{args.model}: {sum(p.numel() for p in loaded.model.parameters()) / 1e6:.0f}M parameters, "
          f"{loaded.model.dtype}, {torch.get_num_threads()} threads")
    _streamed(loaded, PROMPTS[0], 8)  # warm-up: first-call allocations and kernel selection
    base, streamed, served = [], [], []
    for _ in range(args.repeats):
        for prompt in PROMPTS:
            base.append(_baseline(loaded, prompt, args.max_new_tokens))
            streamed.append(_streamed(loaded, prompt, args.max_new_tokens))
            if args.url:
                served.append(_served(args.url, prompt, args.max_new_tokens))
    baseline = _row("model.generate (baseline)", base, None)
    rows = [baseline, _row("chat.stream_reply (the demo)", streamed, baseline["tokens_per_s"])]
    if served:
        rows.append(_row(f"server /chat ({args.url})", served, None, unit="chars"))
    report(rows, ["path", "first_token_s", "total_s", "new_tokens", "new_chars", "tokens_per_s", "vs_generate"],
           f"Chat latency: {len(PROMPTS)} prompts x {args.repeats}, greedy, max {args.max_new_tokens} new tokens "
           "(medians)", args.results_csv, args.model)


if __name__ == "__main__":
    (bench_args,) = TrlParser(BenchChatArguments).parse_args_and_config()
    main(bench_args)
