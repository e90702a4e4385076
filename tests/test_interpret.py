"""Interpretability (open_rlhf.interpretability, interpret/*.py) on tiny random Llamas with the real tokenizer:
attention maps are causal row-stochastic weights of the selected layers and heads; the logit lens reads each
residual stream through the final norm and LM head, and its last layer is the model's own output; the two
commands write their PNGs and JSON and turn bad input into one ``error:`` line with exit status 2."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import matplotlib.image
import pytest
import torch

from open_rlhf import interpretability as interp
from open_rlhf.errors import ConfigError
from tests.conftest import save_tiny_model

REPO = Path(__file__).resolve().parents[1]
PROMPT = "The capital of France is"


def _script(name: str):
    """Import interpret/<name>.py (a script folder, not a package) as a module."""
    spec = importlib.util.spec_from_file_location(f"interpret_{name}", REPO / "interpret" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def deeper_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A second tiny Llama, another seed and 3 layers (a model of different depth, e.g. a policy to compare)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama-3"), tokenizer, seed=1, num_hidden_layers=3)


@pytest.fixture(scope="module")
def eager_model(tiny_model_dir):
    """The tiny model with a non-trivial final norm weight: at its initial ones, normalising twice is almost a
    no-op, so a lens that applied the final norm to the already-normed last hidden state would still pass."""
    model, tokenizer = interp.load_model_and_tokenizer(str(tiny_model_dir), attn_implementation="eager")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.model.norm.weight.copy_(0.5 + 1.5 * torch.rand(model.model.norm.weight.shape, generator=generator))
    return model, tokenizer


def test_attention_weights_are_causal_rows_of_the_selected_layers_and_heads(eager_model):
    model, tokenizer = eager_model
    input_ids = interp.encode_prompt(tokenizer, "What is 17 + 25?")
    T = input_ids.shape[1]
    full = interp.attention_weights(model, input_ids)
    assert full.shape == (2, 4, T, T)  # (L, query heads, T, T): 4 query heads share 2 KV heads
    torch.testing.assert_close(full.sum(dim=-1), torch.ones(2, 4, T))
    assert (full >= 0).all() and full.triu(diagonal=1).abs().max() == 0  # causal: nothing above the diagonal
    assert full[:, :, 0, 0].allclose(torch.ones(2, 4))  # the first token can only attend to itself
    selected = interp.attention_weights(model, input_ids, layers=[1], heads=[0, 3])
    assert selected.shape == (1, 2, T, T)
    torch.testing.assert_close(selected, full[[1]][:, [0, 3]])
    # the chat template wraps the prompt in the system and user turns: more tokens, still rows of 1
    chat_ids = interp.encode_prompt(tokenizer, "What is 17 + 25?", chat=True)
    assert chat_ids.shape[1] > T and tokenizer.decode(chat_ids[0]).rstrip().endswith("assistant")


def test_attention_grid_has_one_row_per_layer_and_one_column_per_head(eager_model, tmp_path):
    model, tokenizer = eager_model
    input_ids = interp.encode_prompt(tokenizer, PROMPT)
    attentions = interp.attention_weights(model, input_ids, layers=[0, 1], heads=[0, 1, 3])
    tokens = interp.token_texts(tokenizer, input_ids[0])
    fig = interp.attention_grid_figure(attentions, tokens, [0, 1], [0, 1, 3])
    maps = [ax for ax in fig.axes if ax.images and ax.get_subplotspec() is not None]
    assert len(maps) == 6 and maps[0].get_subplotspec().get_gridspec().get_geometry() == (2, 3)
    assert [ax.get_title() for ax in maps[:4]] == ["layer 0, head 0", "layer 0, head 1", "layer 0, head 3",
                                                   "layer 1, head 0"]
    assert [t.get_text() for t in maps[-1].get_xticklabels()] == ["The", "␣capital", "␣of", "␣France", "␣is"]
    png = interp.save_png(fig, tmp_path / "grid.png")
    height, width = matplotlib.image.imread(png).shape[:2]
    assert width > height  # 3 columns, 2 rows
    assert list(tmp_path.iterdir()) == [png]  # the temp file was renamed, none left behind
    mean_fig = interp.attention_mean_figure(attentions, tokens)
    torch.testing.assert_close(torch.tensor(mean_fig.axes[0].images[0].get_array().filled(0)),
                               attentions.mean(dim=(0, 1)).tril())


def test_logit_lens_reads_each_layer_and_its_last_layer_is_the_model_output(eager_model):
    model, tokenizer = eager_model
    input_ids = interp.encode_prompt(tokenizer, PROMPT)
    T, V = input_ids.shape[1], model.config.vocab_size
    log_probs = interp.lens_log_probs(model, input_ids)
    assert log_probs.shape == (3, T, V)  # embeddings + 2 layers
    with torch.no_grad():
        outputs = model(input_ids=input_ids, output_hidden_states=True)
        norm, head = model.model.norm, model.lm_head
        embedded = head(norm(model.model.embed_tokens(input_ids)))[0]
        after_layer_1 = head(norm(outputs.hidden_states[1]))[0]
    torch.testing.assert_close(log_probs[-1], torch.log_softmax(outputs.logits[0], dim=-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(log_probs[0], torch.log_softmax(embedded, dim=-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(log_probs[1], torch.log_softmax(after_layer_1, dim=-1), atol=1e-5, rtol=1e-5)

    lens = interp.logit_lens(model, tokenizer, input_ids)
    probs = torch.softmax(outputs.logits[0, -1], dim=-1)
    assert lens.top_ids.shape == lens.top_probs.shape == (3, T) and lens.target_probs.shape == (3,)
    assert torch.equal(lens.top_ids, log_probs.argmax(dim=-1))
    torch.testing.assert_close(lens.top_probs, log_probs.max(dim=-1).values.exp())
    assert lens.target_id == int(probs.argmax()) and "greedy" in lens.target_note  # default: the greedy token
    assert ((lens.target_probs >= 0) & (lens.target_probs <= 1)).all()
    torch.testing.assert_close(lens.target_probs[-1], probs[lens.target_id])
    torch.testing.assert_close(lens.target_probs, log_probs[:, -1, lens.target_id].exp())
    assert lens.top_tokens[-1][-1] == tokenizer.decode([lens.target_id])

    paris = interp.logit_lens(model, tokenizer, input_ids, target=" Paris")
    (paris_id,) = tokenizer(" Paris", add_special_tokens=False)["input_ids"]
    assert paris.target_id == paris_id and paris.target_token == " Paris"
    torch.testing.assert_close(paris.target_probs[-1], probs[paris_id])
    two = interp.logit_lens(model, tokenizer, input_ids, target=" Parisienne")  # " Paris" + "ienne"
    assert two.target_id == paris_id and "2 tokens" in two.target_note and "first" in two.target_note
    with pytest.raises(ConfigError, match="encodes to no token"):
        interp.logit_lens(model, tokenizer, input_ids, target="")


def test_final_norm_is_found_on_the_decoder_or_reported():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=64, n_positions=16))
    assert interp.final_norm(gpt2) is gpt2.transformer.ln_f
    with pytest.raises(ConfigError, match="cannot find the final norm of Linear"):
        interp.final_norm(torch.nn.Linear(2, 2))


def test_a_peft_adapter_folder_is_loaded_merged(tiny_model_dir, tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # random B: not a no-op
    peft_model = get_peft_model(base, config).eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    input_ids = interp.encode_prompt(tokenizer, PROMPT)
    with torch.no_grad():
        expected = peft_model(input_ids=input_ids).logits
    model, loaded_tokenizer = interp.load_model_and_tokenizer(str(tmp_path / "adapter"))  # no tokenizer there
    assert type(model).__name__ == "LlamaForCausalLM" and len(loaded_tokenizer) == len(tokenizer)
    lens = interp.lens_log_probs(model, input_ids)
    torch.testing.assert_close(lens[-1], torch.log_softmax(expected[0], dim=-1), atol=1e-5, rtol=1e-5)


def test_attention_viz_main_writes_the_grid_the_mean_map_and_json(tiny_model_dir, tmp_path, capsys, monkeypatch):
    attention_viz = _script("attention_viz")
    out = tmp_path / "attention"
    attention_viz.main(["--model", str(tiny_model_dir), "--prompt", "What is 17 + 25?", "--layers", "0,-1",
                        "--heads", "2", "--output_dir", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["attention.json", "attention_layers.png", "attention_mean.png"]
    record = json.loads((out / "attention.json").read_text())
    assert record["layers"] == [0, 1] and record["heads"] == [2] and len(record["tokens"]) == 10
    assert all(abs(sum(row) - 1) < 1e-3 for row in record["mean_attention"])
    height, width = matplotlib.image.imread(out / "attention_layers.png").shape[:2]
    assert height > width  # 2 layers x 1 head
    assert f"wrote {out / 'attention_layers.png'}" in capsys.readouterr().out
    # without --output_dir: a new runs/interpret/<UTC timestamp>/ under the working folder
    monkeypatch.chdir(tmp_path)
    attention_viz.main(["--model", str(tiny_model_dir), "--prompt", "Hi"])
    (run,) = (tmp_path / "runs" / "interpret").iterdir()
    assert run.parent == tmp_path / "runs" / "interpret" and (run / "attention_mean.png").is_file()


def test_logit_lens_main_compares_models_of_different_depth(tiny_model_dir, deeper_model_dir, tmp_path, capsys):
    logit_lens = _script("logit_lens")
    out = tmp_path / "lens"
    out.mkdir()  # an existing empty folder is fine
    logit_lens.main(["--model", str(tiny_model_dir), "--model", str(deeper_model_dir), "--prompt", PROMPT,
                     "--output_dir", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["lens_target_prob.png", "lens_top_tokens.png",
                                                     "logit_lens.json"]
    first, second = json.loads((out / "logit_lens.json").read_text())["models"]
    assert (first["num_layers"], second["num_layers"]) == (2, 3)
    assert len(first["target_probs"]) == 3 and len(second["target_probs"]) == 4
    assert len(second["top_tokens"]) == 4 and len(second["top_tokens"][0]) == len(first["tokens"]) == 5
    # both follow the first model's greedy next token
    assert first["target"]["id"] == second["target"]["id"] and first["greedy_next_token"] == first["target"]["token"]
    printed = capsys.readouterr().out
    assert f"wrote {out / 'lens_top_tokens.png'}" in printed and printed.count(" at the output (layer ") == 2
    lenses = [("a", interp.LogitLens(**_lens_fields(first))), ("b", interp.LogitLens(**_lens_fields(second)))]
    fig = interp.lens_top_tokens_figure(lenses)
    assert len([ax for ax in fig.axes if ax.images and ax.get_subplotspec() is not None]) == 2
    x_last = [line.get_xdata()[-1] for line in interp.lens_target_figure(lenses).axes[0].lines]
    assert x_last == [1.0, 1.0]  # different depths: drawn against relative depth


def _lens_fields(record: dict) -> dict:
    """A `LogitLens` rebuilt from its JSON record (the figure functions need no model)."""
    return dict(tokens=record["tokens"], top_ids=torch.zeros(len(record["top_probs"]), len(record["tokens"])),
                top_probs=torch.tensor(record["top_probs"]), top_tokens=record["top_tokens"],
                target_id=record["target"]["id"], target_token=record["target"]["token"],
                target_probs=torch.tensor(record["target_probs"]), target_note=record["target"]["note"],
                final_logits=torch.zeros(0))


@pytest.mark.parametrize("script, args, message", [
    ("attention_viz", ["--model", "{missing}", "--prompt", "x"], "does not exist"),
    ("logit_lens", ["--model", "{tiny}", "--model", "{missing}", "--prompt", "x"], "does not exist"),
    ("attention_viz", ["--model", "{tiny}", "--prompt", "x", "--layers", "0,5"],
     "--layers: layer 5 out of range; the model has 2 layers, valid indices are 0..1"),
    ("attention_viz", ["--model", "{tiny}", "--prompt", "x", "--heads", "4"], "valid indices are 0..3"),
    ("attention_viz", ["--model", "{tiny}", "--prompt", "x", "--layers", "first"], "not a comma-separated list"),
    ("attention_viz", ["--model", "{tiny}", "--prompt", "x", "--output_dir", "{full}"], "already exists and is not empty"),
    ("logit_lens", ["--model", "{tiny}", "--prompt", "x", "--output_dir", "{full}"], "already exists and is not empty"),
])
def test_bad_input_exits_2_with_one_error_line(script, args, message, tiny_model_dir, tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("an earlier result")
    paths = {"missing": tmp_path / "no-such-model", "tiny": tiny_model_dir, "full": full}
    with pytest.raises(SystemExit) as exit_info:
        _script(script).main([a.format(**paths) for a in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert (full / "keep.txt").read_text() == "an earlier result" and len(list(full.iterdir())) == 1
