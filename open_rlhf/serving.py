"""An OpenAI-compatible chat server for a trained model folder, and a load test against it.

The server is not ours: ``--backend transformers`` (the default) runs transformers' own ``transformers serve``
(FastAPI + uvicorn; ``/v1/chat/completions`` streaming or not, ``/v1/completions``, ``/v1/models``, ``/health``)
in this process, pinned to one model; ``--backend vllm`` runs vLLM's OpenAI server (``vllm.entrypoints.openai.
api_server``) as a child process when vLLM is installed. This module is only the launcher: it resolves the model
(None = the embedded default model), waits until the server answers, prints the URL and model id, and shuts down
cleanly on Ctrl-C / SIGTERM (uvicorn's graceful shutdown; the vLLM child is terminated).

What ``transformers serve`` (transformers 5.23) needs, and the two workarounds:

- its ``serving`` extra: fastapi, uvicorn, pydantic (already here through gradio) and ``openai`` (its request and
  response types), pinned in requirements.txt.
- A PEFT adapter folder cannot be served as is: the server loads ``AutoConfig.from_pretrained(folder)``, which
  finds no ``config.json`` ("Unrecognized model ... Should have a `model_type` key"). The launcher merges the
  adapter into a temporary plain folder first (`open_rlhf.export.export_merged`) and deletes it on exit.
- ``GET /v1/models`` lists the models of the Hugging Face hub cache (``huggingface_hub.scan_cache_dir``), never a
  pinned local folder, and answers 500 when that cache folder does not exist (``CacheNotFound``). The launcher
  replaces that listing (``ModelManager.get_gen_models``, one attribute) with the one model it serves, whose id
  is the path it was given; requests may name that id or omit ``model``.

Requests are answered one generation at a time (``model.generate`` on one worker thread; concurrent requests
queue); ``--continuous_batching`` turns on transformers' paged-attention continuous batching.

    python scripts/serve.py --model runs/default/ppo --port 8000
    curl http://127.0.0.1:8000/v1/chat/completions -H 'content-type: application/json' \
        -d '{"messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 32}'
    python scripts/bench_serve.py --model runs/default/ppo --requests 16 --max_tokens 16
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from open_rlhf.benchmark import CHAT_PROMPTS
from open_rlhf.errors import ConfigError, ModelNotFoundError, user_errors
from open_rlhf.models import adapter_base, resolve_model_path

BACKENDS = ("transformers", "vllm")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
LOAD_TEST_PROMPTS = CHAT_PROMPTS


@dataclass
class ServeArguments:
    model: str | None = field(default=None, metadata={"help": "A model folder or a PEFT adapter folder (merged "
                                                              "on start); none: the embedded default model."})
    host: str = field(default="127.0.0.1", metadata={"help": "Listen address (no authentication: keep loopback)."})
    port: int = field(default=8000, metadata={"help": "Listen port."})
    backend: str = field(default="transformers", metadata={"help": "transformers (transformers serve) or vllm.",
                                                           "choices": list(BACKENDS)})
    device: str = field(default="auto", metadata={"help": "transformers backend: auto, cpu, cuda:0, ..."})
    dtype: str = field(default="auto", metadata={"help": "transformers backend: auto (the weights'), float32, "
                                                         "bfloat16, ..."})
    continuous_batching: bool = field(default=False, metadata={"help": "transformers backend: paged-attention "
                                                                       "continuous batching."})
    ready_timeout: float = field(default=600.0, metadata={"help": "Seconds to wait for the server to answer."})


# ---------------------------------------------------------------------------------------------------- the model
@contextlib.contextmanager
def servable_model(model_name_or_path: str | None) -> Iterator[str]:
    """Yield a path a server can load as a plain model: the folder itself, or a PEFT adapter merged into a
    temporary folder (deleted afterwards).

    Raises:
        ModelNotFoundError: when the folder does not exist or the adapter's base model cannot be loaded.
    """
    path = resolve_model_path(model_name_or_path)
    if not Path(path).exists() and path.count("/") != 1:  # not a folder, nor a hub id ("org/name")
        raise ModelNotFoundError(f"model folder {model_name_or_path} does not exist. Fix: pass a folder a stage "
                                 "wrote (e.g. runs/default/sft), or nothing for the default model.")
    if adapter_base(path) is None:
        yield str(Path(path).resolve()) if Path(path).exists() else path
        return
    from open_rlhf.export import export_merged

    work = Path(tempfile.mkdtemp(prefix="open_rlhf-serve-"))
    try:
        merged = work / Path(path).resolve().name
        print(f"{path} is a PEFT adapter: merging it into {merged} for serving ...", file=sys.stderr, flush=True)
        export_merged(path, merged)
        yield str(merged)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _pin_model_list(model_id: str) -> None:
    """Make transformers serve's ``GET /v1/models`` list the pinned model (it scans the hub cache otherwise)."""
    from transformers.cli.serving.model_manager import ModelManager

    entry = {"id": model_id, "object": "model", "created": int(time.time()), "owned_by": "open_rlhf"}
    ModelManager.get_gen_models = staticmethod(lambda cache_dir=None: [dict(entry)])


def _announce_when_ready(base_url: str, timeout: float, stop: threading.Event) -> None:
    """Poll ``/v1/models`` until it answers, then print the URL and the model id (a daemon thread)."""
    try:
        model_id = wait_until_ready(base_url, timeout, stop=stop)
    except (TimeoutError, RuntimeError) as error:
        print(f"server not ready: {error}", file=sys.stderr, flush=True)
        return
    print(f"Serving {model_id!r} at {base_url}/v1 (POST /v1/chat/completions, GET /v1/models). Ctrl-C stops it.",
          flush=True)


def serve(args: ServeArguments) -> None:
    """Run the chat server until Ctrl-C or SIGTERM; print the URL once it answers.

    Args:
        args (`ServeArguments`): the model, address, backend and device options.

    Raises:
        ConfigError: when the backend is unknown, vLLM is asked for but not installed, or the port is taken.
        ModelNotFoundError: when the model folder does not exist.

    Source: transformers ``transformers serve`` (``transformers/cli/serve.py``), https://huggingface.co/docs/
    transformers/serving; vLLM's OpenAI-compatible server, https://docs.vllm.ai/en/latest/serving/.
    """
    if args.backend not in BACKENDS:
        raise ConfigError(f"--backend {args.backend!r} is unknown; choose one of {', '.join(BACKENDS)}.")
    if args.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ConfigError("--backend vllm needs vLLM, which is not installed here (pip install vllm; it wants a "
                          "CUDA GPU). Fix: install it, or use --backend transformers.")
    if args.host not in LOOPBACK:
        print(f"warning: listening on {args.host}: the server has no authentication.", file=sys.stderr)
    _check_port_free(args.host, args.port)
    host = "127.0.0.1" if args.host in ("0.0.0.0", "localhost") else args.host
    base_url = f"http://{f'[{host}]' if ':' in host else host}:{args.port}"
    # uvicorn shuts down gracefully on SIGTERM and then re-raises it; with the default handler that would kill the
    # process before the merged adapter's temporary folder is deleted, so SIGTERM becomes a clean exit here.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with servable_model(args.model) as path:
            stop = threading.Event()
            threading.Thread(target=_announce_when_ready, args=(base_url, args.ready_timeout, stop),
                             daemon=True).start()
            try:
                if args.backend == "vllm":
                    _serve_vllm(path, args)
                else:
                    _serve_transformers(path, args)
            finally:
                stop.set()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("server stopped", file=sys.stderr, flush=True)


def _exit_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError as error:
            raise ConfigError(f"cannot listen on {host}:{port} ({error.strerror}). Fix: pass another --port.") from None


def _serve_transformers(path: str, args: ServeArguments) -> None:
    from transformers.cli.serve import Serve
    from transformers.utils.import_utils import is_serve_available

    if not is_serve_available():
        raise ConfigError("transformers serve needs fastapi, uvicorn, pydantic and openai. Fix: pip install -r "
                          "requirements.txt (or pip install 'transformers[serving]').")
    _pin_model_list(path)
    # Blocking: uvicorn installs its own SIGINT/SIGTERM handlers and shuts down gracefully (the app's lifespan
    # unloads the model); force_model is loaded before uvicorn starts listening, so an answer means ready.
    Serve(force_model=path, host=args.host, port=args.port, device=args.device, dtype=args.dtype,
          continuous_batching=args.continuous_batching)


def _serve_vllm(path: str, args: ServeArguments) -> None:
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", path,
               "--served-model-name", path, "--host", args.host, "--port", str(args.port)]
    if args.dtype != "auto":
        command += ["--dtype", args.dtype]
    child = subprocess.Popen(command)
    try:
        child.wait()
    finally:  # Ctrl-C or SIGTERM (a KeyboardInterrupt here): stop the child too
        _stop_process(child)


# ------------------------------------------------------------------------------------------ client-side helpers
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_until_ready(base_url: str, timeout: float, process: subprocess.Popen | None = None,
                     stop: threading.Event | None = None) -> str:
    """Poll ``GET {base_url}/v1/models`` until it lists a model; return the first model's id.

    Args:
        base_url (`str`): e.g. ``http://127.0.0.1:8000``.
        timeout (`float`): seconds to wait.
        process (`subprocess.Popen`, *optional*): the server process; its exit ends the wait early.
        stop (`threading.Event`, *optional*): ends the wait early when set.

    Raises:
        TimeoutError: when the server does not answer within ``timeout`` seconds.
        RuntimeError: when ``process`` exits first, or ``stop`` is set.
    """
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} before answering")
        if stop is not None and stop.is_set():
            raise RuntimeError("stopped")
        try:
            response = httpx.get(f"{base_url}/v1/models", timeout=5.0)
            if response.status_code == 200 and response.json().get("data"):
                return response.json()["data"][0]["id"]
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{base_url} did not answer /v1/models within {timeout:.0f} s")


def _stop_process(process: subprocess.Popen, grace: float = 20.0) -> int | None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@dataclass
class RunningServer:
    """A server started by `running_server`: its base URL, the model id it serves, its process and log file."""

    base_url: str
    model_id: str
    process: subprocess.Popen
    log_path: Path


@contextlib.contextmanager
def running_server(model: str | None, port: int | None = None, host: str = "127.0.0.1",
                   extra_args: Sequence[str] = (), timeout: float = 600.0,
                   command: Sequence[str] | None = None) -> Iterator[RunningServer]:
    """Start the server as a child process, wait until it answers, yield it, and always stop it.

    Args:
        model (`str`, *optional*): the model folder; None: the default model.
        port (`int`, *optional*): the port; None: a free one.
        host (`str`): the listen address (loopback by default).
        extra_args (`Sequence[str]`): more flags of `ServeArguments` (e.g. ``["--backend", "vllm"]``).
        timeout (`float`): seconds to wait for readiness.
        command (`Sequence[str]`, *optional*): the server command before its flags; default
            ``python -m open_rlhf.serving`` (what ``scripts/serve.py`` runs).

    Raises:
        RuntimeError: when the server exits or does not answer in time (the message ends with its log's tail).
    """
    port = port or free_port(host)
    argv = list(command or [sys.executable, "-m", "open_rlhf.serving"]) + ["--host", host, "--port", str(port)]
    if model is not None:
        argv += ["--model", str(model)]
    argv += list(extra_args)
    log = tempfile.NamedTemporaryFile(prefix="open_rlhf-serve-", suffix=".log", delete=False)
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base_url = f"http://{host}:{port}"
    failed = True
    try:
        try:
            model_id = wait_until_ready(base_url, timeout, process=process)
        except (TimeoutError, RuntimeError) as error:
            log.flush()
            tail = Path(log.name).read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{error}; server log {log.name}:\n{tail}") from None
        yield RunningServer(base_url, model_id, process, Path(log.name))
        failed = False
    finally:
        _stop_process(process)
        log.close()
        if not failed:  # a failed start keeps its log for the error message's reader
            Path(log.name).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------- load test
async def _load_level(base_url: str, model_id: str, concurrency: int, requests: int, max_tokens: int,
                      prompts: Sequence[str], timeout: float) -> dict:
    import httpx
    import numpy as np

    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    latencies, tokens, errors = [], [], []

    async def client(http: httpx.AsyncClient) -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            body = {"model": model_id, "max_tokens": max_tokens, "temperature": 0.0,
                    "messages": [{"role": "user", "content": prompts[i % len(prompts)]}]}
            start = time.perf_counter()
            try:
                response = await http.post(f"{base_url}/v1/chat/completions", json=body)
                response.raise_for_status()
                usage = response.json()["usage"]
            except (httpx.HTTPError, KeyError, ValueError) as error:
                errors.append(f"{type(error).__name__}: {error}")
                continue
            latencies.append((time.perf_counter() - start) * 1000.0)
            tokens.append(int(usage["completion_tokens"]))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    p50, p95, p99 = (np.percentile(latencies, [50, 95, 99]) if latencies else (float("nan"),) * 3)
    return {"concurrency": concurrency, "requests": requests, "errors": len(errors), "p50_ms": float(p50),
            "p95_ms": float(p95), "p99_ms": float(p99), "req_per_s": len(latencies) / wall,
            "gen_tokens_per_s": sum(tokens) / wall, "mean_new_tokens": float(np.mean(tokens)) if tokens else 0.0,
            "wall_s": wall, "first_error": errors[0][:200] if errors else ""}


def load_test(base_url: str, model_id: str, concurrency_levels: Sequence[int] = (1, 4, 16), requests: int = 16,
              max_tokens: int = 16, prompts: Sequence[str] = LOAD_TEST_PROMPTS, timeout: float = 600.0) -> list[dict]:
    """Send ``requests`` greedy chat requests at each concurrency level and measure latency and throughput.

    Each level runs ``concurrency`` clients (``httpx.AsyncClient``, one connection each) that take requests from a
    shared queue until ``requests`` have been sent; one warm-up request goes first.

    Args:
        base_url (`str`): the server, e.g. ``http://127.0.0.1:8000``.
        model_id (`str`): the ``model`` field of the requests (from ``/v1/models``).
        concurrency_levels (`Sequence[int]`): concurrent clients per level.
        requests (`int`): requests per level.
        max_tokens (`int`): ``max_tokens`` of each request (generated tokens).
        prompts (`Sequence[str]`): user messages, cycled.
        timeout (`float`): seconds per request.

    Returns:
        `list[dict]`: one row per level: ``p50_ms``/``p95_ms``/``p99_ms`` (request latency, ms), ``req_per_s``,
        ``gen_tokens_per_s`` (``usage.completion_tokens`` summed over the level's wall time), ``errors``.

    Raises:
        ValueError: when ``requests`` or a concurrency level is below 1.
    """
    if requests < 1 or min(concurrency_levels) < 1:
        raise ValueError(f"requests ({requests}) and concurrency levels ({list(concurrency_levels)}) must be >= 1.")

    async def run() -> list[dict]:
        await _load_level(base_url, model_id, 1, 1, max_tokens, prompts, timeout)  # warm-up
        return [await _load_level(base_url, model_id, c, requests, max_tokens, prompts, timeout)
                for c in concurrency_levels]

    return asyncio.run(run())


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m open_rlhf.serving`` / ``scripts/serve.py``: parse `ServeArguments` and `serve`."""
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(ServeArguments).parse_args_into_dataclasses(args=argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with user_errors():
        serve(args)


if __name__ == "__main__":
    main()
