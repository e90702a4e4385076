"""scripts/serve.py and open_rlhf.serving: the real transformers-serve server started as a child process on loopback
on a tiny Llama (a plain folder and a PEFT adapter folder), its OpenAI-compatible answers, the load test against it,
and the launcher's clear errors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from open_rlhf.errors import ConfigError, ModelNotFoundError
from open_rlhf.serving import ServeArguments, load_test, running_server, serve

ROOT = Path(__file__).resolve().parents[1]
SERVE = [sys.executable, str(ROOT / "scripts" / "serve.py")]


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with running_server(str(tiny_model_dir), command=SERVE, timeout=240) as running:
        yield running
    assert running.process.returncode is not None  # stopped by the context manager


def _chat(base_url: str, **body) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 4, **body}
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=120)


def test_serve_answers_chat_completions(server, tiny_model_dir):
    models = httpx.get(f"{server.base_url}/v1/models", timeout=30).json()
    assert [m["id"] for m in models["data"]] == [str(Path(tiny_model_dir).resolve())] == [server.model_id]
    response = _chat(server.base_url, model=server.model_id)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "chat.completion"
    assert isinstance(answer["choices"][0]["message"]["content"], str)
    assert answer["choices"][0]["message"]["role"] == "assistant"
    assert 1 <= answer["usage"]["completion_tokens"] <= 4
    assert _chat(server.base_url).status_code == 200  # `model` may be omitted: the server is pinned to one
    wrong = _chat(server.base_url, model="some/other-model")
    assert wrong.status_code == 400 and "pinned" in wrong.text


def test_serve_streams_chat_completions(server):
    body = {"model": server.model_id, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
            "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    # transformers serve (5.23) ends the stream with a chunk carrying finish_reason, and no OpenAI "[DONE]" line.
    chunks = [json.loads(line.removeprefix("data: ")) for line in events if line != "data: [DONE]"]
    assert chunks[0]["object"] == "chat.completion.chunk" and chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 3


def test_load_test_measures_every_level(server):
    rows = load_test(server.base_url, server.model_id, concurrency_levels=(1, 2), requests=3, max_tokens=2)
    assert [r["concurrency"] for r in rows] == [1, 2]
    for row in rows:
        assert row["errors"] == 0 and row["requests"] == 3, row["first_error"]
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["req_per_s"] > 0 and row["gen_tokens_per_s"] > 0 and 1 <= row["mean_new_tokens"] <= 2


def test_serve_merges_an_adapter_folder_and_cleans_up(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                LoraConfig(r=2, target_modules=["q_proj"]))
    peft_model.save_pretrained(tmp_path / "adapter")  # no tokenizer saved: it comes from the base model
    with running_server(str(tmp_path / "adapter"), command=SERVE, timeout=240) as running:
        merged = Path(running.model_id)
        assert (merged / "config.json").is_file() and not (merged / "adapter_config.json").exists()
        assert _chat(running.base_url, model=running.model_id).status_code == 200
    assert running.process.returncode == 0  # SIGTERM is a clean shutdown
    assert not merged.exists()  # the temporary merged folder is deleted on exit


def test_serve_errors_are_clear(tiny_model_dir, tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        serve(ServeArguments(model=str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match="backend 'tgi' is unknown"):
        serve(ServeArguments(model=str(tiny_model_dir), backend="tgi"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            serve(ServeArguments(model=str(tiny_model_dir), port=port))


def test_vllm_backend_absent_is_a_clear_error(tiny_model_dir):
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vLLM is installed here")
    result = subprocess.run(SERVE + ["--model", str(tiny_model_dir), "--backend", "vllm", "--port", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --backend vllm needs vLLM")
