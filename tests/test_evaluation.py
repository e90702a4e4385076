"""Held-out evaluation (open_rlhf/evaluation.py) on tiny models: stop ids, accuracy."""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM

from open_rlhf import evaluation
from tests.conftest import tiny_llama_config


def always_says(model, token_id: int) -> None:
    """Make greedy decoding emit ``token_id`` at every step (a +100 logit bias on the LM head)."""
    bias = torch.zeros(model.config.vocab_size)
    bias[token_id] = 100.0
    model.lm_head.register_forward_hook(lambda module, inputs, output: output + bias.to(output.device, output.dtype))


def test_generate_stops_at_any_stop_id_of_the_generation_config(tokenizer):
    """A model whose generation config lists a second stop id (Llama 3 has three): the response ends there, and
    the model's config is untouched (evaluation used to pass the tokenizer's single EOS id)."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer))
    stop = tokenizer.encode(" mat", add_special_tokens=False)[0]
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, stop]
    always_says(model, stop)
    prompts = [[{"role": "user", "content": "Where does the cat sit?"}]]
    texts, _, response_ids = evaluation.generate(model, tokenizer, prompts, max_new_tokens=6)
    assert response_ids[0].tolist() == [stop] and texts == [" mat"]
    assert model.generation_config.eos_token_id == [tokenizer.eos_token_id, stop]
    metrics = evaluation.evaluate_policy(model, tokenizer, prompts, ["3"], max_new_tokens=6)
    assert metrics["eos_rate"] == 1.0 and metrics["accuracy"] == 0.0


def test_pass_at_k_summary_hand_computed():
    """Three prompts x 2 samples: [1, 0] (greedy wrong), [0, 0] (greedy right), [1, 1] (greedy right).
    Sampled 3/6; pass@2 2/3; greedy 2/3; greedy wrong with a right sample: prompt 0 (1/3); greedy right with a wrong
    sample: prompt 1 (1/3); samples scored alike: prompts 1 and 2 (2/3)."""
    import pytest

    r = evaluation.pass_at_k_summary([[1, 0], [0, 0], [1, 1]], [0, 1, 1])
    assert (r["k"], r["prompts"]) == (2, 3)
    assert r["sampled_accuracy"] == pytest.approx(0.5) and r["pass_at_k"] == pytest.approx(2 / 3)
    assert r["greedy_accuracy"] == pytest.approx(2 / 3)
    assert r["greedy_wrong_sample_right"] == pytest.approx(1 / 3)
    assert r["greedy_right_sample_wrong"] == pytest.approx(1 / 3)
    assert r["samples_agree"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="same prompts"):
        evaluation.pass_at_k_summary([[1, 0]], [0, 1])
    with pytest.raises(ValueError, match="same number"):
        evaluation.pass_at_k_summary([[1, 0], [1]], [0, 1])
