"""Load test of a running demo: N concurrent chat sessions through ``gradio_client``, timed.

    python web_demo/app.py &                                    # the server (loopback)
    python web_demo/load_test.py --sessions 16 --max_new_tokens 32

Each session is its own ``gradio_client.Client`` sending one message to ``/chat`` and reading the streamed reply.
Prints a table of the time to first streamed output and the total time (p50 / p95 / max) and the errors; exits 1
when any session failed. Bounded: at most 64 sessions, a wall-clock ``--timeout``, loopback addresses only (this
is a tool for your own server, not for someone else's).
"""

import argparse
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlparse

MAX_SESSIONS = 64
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class SessionResult:
    first_output_s: float | None
    total_s: float | None
    chars: int
    outputs: int
    error: str | None


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation (NumPy's default method)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def one_session(url: str, message: str, max_new_tokens: int, timeout: float, auth) -> SessionResult:
    from gradio_client import Client

    try:
        client = Client(url, verbose=False, auth=auth)
        start = time.perf_counter()
        job = client.submit(message, "", "", 0.7, 0.9, max_new_tokens, api_name="/chat")
        first, outputs, text = None, 0, ""
        for output in job:
            if first is None:
                first = time.perf_counter() - start
            outputs += 1
            text = output
            if time.perf_counter() - start > timeout:
                job.cancel()
                return SessionResult(first, None, len(text), outputs, f"timed out after {timeout:.0f} s")
        text = job.result(timeout=timeout)
        total = time.perf_counter() - start
        return SessionResult(first if first is not None else total, total, len(text or ""), outputs, None)
    except Exception as error:  # a failed session is a result, not a crash of the load test
        return SessionResult(None, None, 0, 0, f"{type(error).__name__}: {error}")


def run_load_test(url: str, sessions: int = 16, message: str = "Give me three tips for staying focused.",
                  max_new_tokens: int = 32, timeout: float = 300.0, auth=None) -> list[SessionResult]:
    """Run ``sessions`` concurrent chat sessions against the demo at ``url`` and return their results.

    Raises:
        ValueError: for more than `MAX_SESSIONS` sessions or a URL that is not on a loopback address.
    """
    host = urlparse(url).hostname
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"{url}: the load test only targets loopback addresses ({', '.join(LOOPBACK_HOSTS)})")
    if not 1 <= sessions <= MAX_SESSIONS:
        raise ValueError(f"--sessions must be in [1, {MAX_SESSIONS}], got {sessions}")
    results: list[SessionResult | None] = [None] * sessions
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(
        i, one_session(url, message, max_new_tokens, timeout, auth)), daemon=True) for i in range(sessions)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout + 30
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    return [r if r is not None else SessionResult(None, None, 0, 0, "did not finish in time") for r in results]


def summary(results: list[SessionResult]) -> str:
    """A markdown table: p50 / p95 / max of the time to first output and the total time, and the error count."""
    ok = [r for r in results if r.error is None]
    lines = [f"{len(ok)}/{len(results)} sessions completed without error", "",
             "| seconds | p50 | p95 | max |", "|---|---|---|---|"]
    for name, values in (("time to first output", [r.first_output_s for r in ok]),
                         ("total time", [r.total_s for r in ok])):
        if values:
            lines.append(f"| {name} | {percentile(values, 50):.2f} | {percentile(values, 95):.2f} | {max(values):.2f} |")
    errors = [r.error for r in results if r.error]
    if errors:
        lines += ["", "errors:", *[f"- {e}" for e in errors[:10]]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:7860/")
    p.add_argument("--sessions", type=int, default=16)
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--message", default="Give me three tips for staying focused.")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a session may take")
    p.add_argument("--auth", help="user:password when the server has --auth")
    args = p.parse_args(argv)
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    try:
        start = time.perf_counter()
        results = run_load_test(args.url, args.sessions, args.message, args.max_new_tokens, args.timeout, auth)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary(results))
    ok = [r.total_s for r in results if r.error is None]
    if ok:
        print(f"\nwall time {time.perf_counter() - start:.1f} s; mean total {statistics.mean(ok):.2f} s")
    return 0 if len(ok) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
