"""Context compression (open_rlhf.inference.compress) on a tiny model: the kept share, exactly the lowest
self-information tokens dropped, protected digits and question, identity at ratio 1, errors."""

from __future__ import annotations

import math

import pytest
import torch

from open_rlhf import models
from open_rlhf.inference.compress import ContextCompressor, compress_prompts, self_information

TEXT = ("The museum opened in the spring and the visitors came from every part of the country to see the old "
        "paintings that hung in the long hall beside the river where the boats passed slowly every afternoon.")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return models.load_inference_model(str(tiny_model_dir))


def test_self_information_is_the_negative_log_likelihood(tiny):
    model, tokenizer = tiny
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"][:12]
    info = self_information(model, ids)
    logp = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
    assert math.isinf(info[0]) and info.shape == (12,)
    assert info[5].item() == pytest.approx(-logp[4, ids[5]].item(), abs=1e-4)
    with_context = self_information(model, ids[6:], context=ids[:6])
    assert torch.allclose(with_context, info[6:], atol=1e-4)


def test_drops_exactly_the_most_predictable_tokens_at_the_ratio(tiny):
    model, tokenizer = tiny
    compressor = ContextCompressor(model, tokenizer, ratio=0.5, segment_tokens=1000)
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    info = self_information(model, ids)
    keep = compressor.keep_mask(ids)
    assert sum(keep) == math.ceil(0.5 * len(ids))  # no digit, '#' or newline in TEXT: nothing protected
    dropped = [info[i].item() for i in range(len(ids)) if not keep[i]]
    kept = [info[i].item() for i in range(len(ids)) if keep[i]]
    assert max(dropped) <= min(kept)  # every dropped token is at most as surprising as every kept one
    out = compressor.compress(TEXT)
    assert out.original_tokens == len(ids) and abs(out.kept_tokens - len(ids) / 2) <= 3  # re-tokenized


def test_digits_markers_and_the_question_survive(tiny):
    model, tokenizer = tiny
    compressor = ContextCompressor(model, tokenizer, ratio=0.3, segment_tokens=16)
    prompt = [{"role": "system", "content": "You are a careful tutor. " + TEXT},
              {"role": "user", "content": f"Example: Tom has 12 apples and buys 7.\n#### 19\n\n{TEXT}\n\n"
                                          "Question: what is 3 + 4?\nGive the final answer after ####."}]
    (messages, *_), stats = compress_prompts([prompt], compressor)
    assert [m["role"] for m in messages] == ["system", "user"]
    user = messages[1]["content"]
    assert user.endswith("\n\nQuestion: what is 3 + 4?\nGive the final answer after ####.")
    assert "".join(c for c in user if c.isdigit() or c == "#") == "127####1934####"  # every digit and marker kept
    assert stats["kept_tokens"] < 0.75 * stats["original_tokens"] and len(messages[0]["content"]) < len(TEXT)


def test_ratio_one_is_the_identity_and_bad_ratios_fail(tiny):
    model, tokenizer = tiny
    assert ContextCompressor(model, tokenizer, ratio=1.0).compress(TEXT).text == TEXT
    for ratio in (0, 1.5, -0.2):
        with pytest.raises(ValueError, match=r"ratio \(the share of tokens kept\) must be in \(0, 1\]"):
            ContextCompressor(model, tokenizer, ratio=ratio)
