"""Serve a trained model folder (or a PEFT adapter folder, merged on start) behind an OpenAI-compatible chat API.

The server is transformers' own ``transformers serve`` (``--backend transformers``, the default) or vLLM's
(``--backend vllm``, when installed); see `open_rlhf.serving` for what the launcher adds and why.

    python scripts/serve.py                                   # the default model on http://127.0.0.1:8000/v1
    python scripts/serve.py --model runs/default/ppo --port 8001
    curl http://127.0.0.1:8001/v1/models
    curl http://127.0.0.1:8001/v1/chat/completions -H 'content-type: application/json' \
        -d '{"messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 32}'
    python scripts/bench_serve.py --model runs/default/ppo     # the load test (1, 4, 16 concurrent clients)
"""

from open_rlhf.serving import main

if __name__ == "__main__":
    main()
