"""Chat inference of the web demo (open_rlhf.chat): streaming, cancelling, limits, best-of-N, model discovery."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from open_rlhf import chat, outputs
from tests.conftest import save_tiny_model

QUESTION = [{"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture(scope="module")
def pool():
    return chat.ModelPool(device="cpu", capacity=2)


@pytest.fixture(scope="module")
def tiny(pool, tiny_model_dir):
    return pool.policy(str(tiny_model_dir))


def test_stream_reply_streams_the_greedy_reply(tiny):
    settings = chat.GenerationSettings(max_new_tokens=24, temperature=0)
    updates = list(chat.stream_reply(tiny, QUESTION, settings))
    assert len(updates) >= 3 and updates[-1].finished and not updates[-1].stopped
    texts = [u.text for u in updates]
    assert all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:], strict=False))  # it grows, never rewrites
    # the same reply as one plain greedy `generate` call
    ids = tiny.tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt",
                                             return_dict=True)["input_ids"]
    out = tiny.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                              eos_token_id=tiny.stop_ids, pad_token_id=tiny.tokenizer.pad_token_id)
    reply = out[0, ids.shape[1]:]
    assert updates[-1].text == tiny.tokenizer.decode(reply, skip_special_tokens=True)
    assert updates[-1].new_tokens == reply.numel()
    last = updates[-1]
    assert 0 < last.first_token_s <= last.elapsed_s
    assert last.tokens_per_second is None or last.tokens_per_second > 0


def test_stop_event_cancels_within_a_token(tiny):
    stop = threading.Event()
    updates = []
    for update in chat.stream_reply(tiny, QUESTION, chat.GenerationSettings(max_new_tokens=400, temperature=1.0),
                                    stop_event=stop):
        updates.append(update)
        if len(updates) == 2:
            stop.set()
    assert updates[-1].finished and updates[-1].stopped
    assert updates[-1].new_tokens < 400


def test_closing_the_stream_stops_generation(tiny):
    stream = chat.stream_reply(tiny, QUESTION, chat.GenerationSettings(max_new_tokens=400, temperature=1.0))
    next(stream)
    before = {t.name for t in threading.enumerate()}
    assert "open-rlhf-generate" in before
    stream.close()  # what Gradio does when a user presses Stop or leaves
    assert "open-rlhf-generate" not in {t.name for t in threading.enumerate()}


def test_prompt_limits_name_the_length_and_the_fix(tiny):
    with pytest.raises(chat.PromptTooLongError, match=r"5001 characters long; this server accepts at most 4000"):
        list(chat.stream_reply(tiny, [{"role": "user", "content": "x" * 5001}], chat.GenerationSettings()))
    with pytest.raises(chat.PromptTooLongError, match=r"tokens long; this server accepts at most 10\. Shorten"):
        list(chat.stream_reply(tiny, QUESTION, chat.GenerationSettings(), max_tokens=10))
    with pytest.raises(ValueError, match="ends with a user message"):
        chat.check_prompt(tiny.tokenizer, [{"role": "assistant", "content": "hi"}])


@pytest.mark.parametrize("kwargs", [dict(temperature=-1), dict(top_p=0), dict(max_new_tokens=0), dict(best_of_n=17)])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match="must be in"):
        chat.GenerationSettings(**kwargs)


def test_a_failing_generation_raises_instead_of_hanging(pool, tokenizer, tmp_path):
    broken = pool.policy(str(save_tiny_model(tmp_path / "broken", tokenizer, seed=3)))

    def explode(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("pretend the device ran out of memory")

    original = broken.model.forward
    broken.model.forward = explode
    try:
        with pytest.raises(RuntimeError, match="generation failed: OutOfMemoryError"):
            list(chat.stream_reply(broken, QUESTION, chat.GenerationSettings(max_new_tokens=5), timeout=30))
    finally:
        broken.model.forward = original


def test_best_of_n_returns_the_highest_reward_sample(tiny, tokenizer, tmp_path):
    from open_rlhf.rewards import RewardModelScorer

    scorer = RewardModelScorer.from_pretrained(str(save_tiny_model(tmp_path / "rm", tokenizer, seed=5, reward=True)))
    torch.manual_seed(0)
    result = chat.best_of_n(tiny, QUESTION, chat.GenerationSettings(max_new_tokens=12, temperature=1.0, best_of_n=4),
                            scorer)
    assert len(result.texts) == len(result.scores) == 4
    assert len(set(result.texts)) > 1  # sampled, not four copies of one greedy reply
    assert result.score == max(result.scores) and result.text == result.texts[result.scores.index(result.score)]
    assert scorer([QUESTION], [result.text])[0] == pytest.approx(result.score, abs=1e-4)


def test_pool_loads_once_and_evicts_the_least_recently_used(tokenizer, tmp_path):
    pool = chat.ModelPool(device="cpu", capacity=1)
    first = str(save_tiny_model(tmp_path / "a", tokenizer, seed=1))
    second = str(save_tiny_model(tmp_path / "b", tokenizer, seed=2))
    loaded = [None] * 4
    threads = [threading.Thread(target=lambda i=i: loaded.__setitem__(i, pool.policy(first))) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(m is loaded[0] for m in loaded)  # four concurrent requests, one load
    pool.policy(second)
    assert pool.policy(first) is not loaded[0]  # evicted (capacity 1), loaded again


def _finished(folder):
    folder.mkdir(parents=True)
    (folder / outputs.COMPLETE_MARKER).write_text("{}")
    return folder


def test_discover_models_finds_finished_policies_and_reward_models(tokenizer, tmp_path):
    runs = tmp_path / "runs"
    save_tiny_model(_finished(runs / "default" / "sft"), tokenizer, seed=1)
    save_tiny_model(_finished(runs / "default" / "reward"), tokenizer, seed=1, reward=True)
    save_tiny_model(runs / "merged", tokenizer, seed=1)  # a merged model: no marker, a final model at the top
    save_tiny_model(runs / "training" / "checkpoint-5", tokenizer, seed=1)  # still training: weights only in a checkpoint
    (runs / "eval" / "20260101").mkdir(parents=True)
    found = chat.discover_models(runs)
    assert set(found["policy"]) == {str(runs / "default" / "sft"), str(runs / "merged")}
    assert set(found["reward"]) == {str(runs / "default" / "reward")}
    assert chat.model_kind(runs / "training") is None
    assert chat.discover_models(tmp_path / "missing") == {"policy": {}, "reward": {}}


def test_latest_pipeline_policy_is_the_newest_finished_run(tokenizer, tmp_path):
    import os

    runs = tmp_path / "runs"
    for i, name in enumerate(["old", "new"]):
        policy = save_tiny_model(_finished(runs / name / "ppo"), tokenizer, seed=1)
        state = runs / name / "pipeline_state.json"
        state.write_text(json.dumps({"final_policy": str(policy)}))
        os.utime(state, (1000 + i, 1000 + i))
    (runs / "broken").mkdir()
    (runs / "broken" / "pipeline_state.json").write_text(json.dumps({"final_policy": str(runs / "gone")}))
    assert chat.latest_pipeline_policy(runs) == str(runs / "new" / "ppo")
    assert chat.latest_pipeline_policy(tmp_path / "nothing") is None


def test_interleave_yields_from_both_and_reports_errors():
    def good():
        yield from range(3)

    def bad():
        yield "x"
        raise KeyError("boom")

    events = list(chat.interleave([good(), bad()]))
    assert sorted(item for i, item, error in events if i == 0) == [0, 1, 2]
    assert [item for i, item, error in events if i == 1 and error is None] == ["x"]
    errors = [error for i, _, error in events if error is not None]
    assert len(errors) == 1 and isinstance(errors[0], KeyError)
