"""Slow: the real embedded default model (SmolLM2-135M-Instruct) through the whole pipeline, tiny step counts."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_default_model_is_a_working_chat_model():
    """The bootstrapped GGUF -> safetensors conversion gives the real instruct model (greedy answer)."""
    from open_rlhf import models
    from open_rlhf.evaluation import generate

    path = str(models.ensure_default_model())
    tokenizer, model = models.load_tokenizer(path), models.load_causal_lm(path)
    texts, _, _ = generate(model, tokenizer, [[{"role": "user", "content": "What is the capital of France?"}]],
                           max_new_tokens=16)
    assert "Paris" in texts[0]
    assert "quantization_config" not in json.loads((models.default_model_path() / "config.json").read_text())


def test_pipeline_on_default_model(tmp_path):
    from open_rlhf.pipeline import PipelineArguments, run_pipeline

    small = "--per_device_train_batch_size 2 --max_train_samples 16 --save_steps 2"
    report = run_pipeline(PipelineArguments(
        run_name="slow", runs_dir=str(tmp_path), sft_args=f"--max_steps 2 {small}",
        reward_args=f"--max_steps 2 {small}",
        method_args=f"--max_steps 1 {small} --gradient_accumulation_steps 1 --response_length 16",
        eval_prompts=4, eval_pairs=4, eval_max_new_tokens=32, eval_batch_size=4, eval_base_model=False))
    results = json.loads((tmp_path / "slow" / "eval" / "results.json").read_text())
    assert set(results["policies"]) == {"sft", "ppo"} and report.is_file()
