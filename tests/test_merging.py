"""Tests of open_rlhf.merging: hand-computed tensors per method, error paths, file round trips, LoRA adapters
against PEFT's merge_and_unload, greedy soup, EnsemblePolicy, scripts/merge.py end to end, and differential
tests against mergekit 0.1.5 (skipped when mergekit is not installed).

Tiny Llama models (hidden 16, 2 layers, vocab 64) are built offline from a config; "fine-tuned" models are the
base plus seeded noise of std 0.002 (weights have std 0.02: relative L2 distance ~0.1 to the base), the unrelated
model is an independent initialization (relative distance ~1.41).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from open_rlhf.merging import (
    EnsemblePolicy,
    LoraAdapterCheckpoint,
    SafetensorsCheckpoint,
    dare,
    dare_drop,
    disjoint_mean,
    elect_sign,
    greedy_soup,
    layer_position,
    linear,
    merge_models,
    merge_state_dicts,
    schedule_value,
    slerp,
    task_arithmetic,
    ties,
    trim_magnitude,
)

REPO = Path(__file__).resolve().parents[1]
T = torch.tensor


# ------------------------------------------------------------------------------------------------------------
# Tiny models
# ------------------------------------------------------------------------------------------------------------


def tiny_config(**overrides):
    from transformers import LlamaConfig

    kwargs = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, vocab_size=64, max_position_embeddings=64, tie_word_embeddings=False,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def tiny_model(seed: int, **overrides):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(**overrides)).eval()


def perturbed(model, seed: int, std: float = 0.002):
    """A 'fine-tuned' copy: every floating parameter plus N(0, std^2) noise from a seeded generator."""
    import copy

    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer):
    """Saved tiny models: base, two fine-tunes of it, an unrelated model, a bf16 copy, other shapes/keys."""
    root = tmp_path_factory.mktemp("tiny")
    base = tiny_model(0)
    models = {"base": base, "ft1": perturbed(base, 1), "ft2": perturbed(base, 2), "other": tiny_model(99),
              "wide": tiny_model(0, hidden_size=32), "deep": tiny_model(0, num_hidden_layers=3)}
    models["ft1_bf16"] = perturbed(base, 1).to(torch.bfloat16)
    paths = {}
    for name, model in models.items():
        paths[name] = root / name
        model.save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    state_dicts = {name: {k: v.detach().clone() for k, v in m.state_dict().items()} for name, m in models.items()}
    return {"paths": paths, "sd": state_dicts, "root": root}


# ------------------------------------------------------------------------------------------------------------
# Per-tensor methods, hand-computed
# ------------------------------------------------------------------------------------------------------------


def test_linear_weighted_average():
    """(1*[1, 2] + 3*[3, 6]) / (1 + 3) = [10, 20] / 4 = [2.5, 5.0]; without normalize: [10, 20]."""
    a, b = T([1.0, 2.0]), T([3.0, 6.0])
    torch.testing.assert_close(linear([a, b], [1.0, 3.0]), T([2.5, 5.0]))
    torch.testing.assert_close(linear([a, b], [1.0, 3.0], normalize=False), T([10.0, 20.0]))
    torch.testing.assert_close(linear([a, b]), T([2.0, 4.0]))  # uniform soup


def test_linear_keeps_bf16_dtype_and_sums_in_fp32():
    """bf16 inputs -> bf16 output; the sum runs in fp32: (1 + 1/256 + ...) average of 256 copies of 1 is 1."""
    x = T([1.0, -2.0], dtype=torch.bfloat16)
    out = linear([x] * 256)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, x)


def test_task_arithmetic_hand_computed():
    """base [1, 1, 1]; tau1 = [2, 1, 0] - base = [1, 0, -1]; tau2 = [1, 3, 1] - base = [0, 2, 0];
    lambda 0.5: base + 0.5 * (tau1 + tau2) = [1, 1, 1] + 0.5 * [1, 2, -1] = [1.5, 2.0, 0.5];
    weights (2, 1): base + 0.5 * [2, 2, -2] = [2.0, 2.0, 0.0]."""
    base, m1, m2 = T([1.0, 1.0, 1.0]), T([2.0, 1.0, 0.0]), T([1.0, 3.0, 1.0])
    torch.testing.assert_close(task_arithmetic(base, [m1, m2], lambda_=0.5), T([1.5, 2.0, 0.5]))
    torch.testing.assert_close(task_arithmetic(base, [m1, m2], [2.0, 1.0], lambda_=0.5), T([2.0, 2.0, 0.0]))


def test_trim_magnitude_keeps_top_k():
    """density 0.5 of 6 entries: k = 3, the magnitudes 4, 3, 2 survive."""
    tau = T([4.0, -1.0, 2.0, -3.0, 0.5, 1.5])
    torch.testing.assert_close(trim_magnitude(tau, 0.5), T([4.0, 0.0, 2.0, -3.0, 0.0, 0.0]))
    assert trim_magnitude(tau, 1.0) is tau
    assert int((trim_magnitude(tau, 0.01) != 0).sum()) == 1  # k = max(1, floor(0.06)) = 1


def test_ties_hand_computed():
    """base = 1; tau1 = [4, -1, 2, -3, 0.5, 1.5], tau2 = [-2, 3, 2.5, -1, 0.1, 0.2]; density 0.5 -> k = 3:
    trimmed tau1 = [4, 0, 2, -3, 0, 0], tau2 = [-2, 3, 2.5, 0, 0, 0];
    sum = [2, 3, 4.5, -3, 0, 0] -> elected sign [+, +, +, -, + (0 -> +), +];
    disjoint mean: [4/1, 3/1, (2 + 2.5)/2, -3/1, 0 (no agreeing entry), 0] = [4, 3, 2.25, -3, 0, 0];
    lambda 1: base + tau_m = [5, 4, 3.25, -2, 1, 1]; lambda 0.5: [3, 2.5, 2.125, -0.5, 1, 1]."""
    base = torch.ones(6)
    m1 = base + T([4.0, -1.0, 2.0, -3.0, 0.5, 1.5])
    m2 = base + T([-2.0, 3.0, 2.5, -1.0, 0.1, 0.2])
    torch.testing.assert_close(ties(base, [m1, m2], density=0.5), T([5.0, 4.0, 3.25, -2.0, 1.0, 1.0]))
    torch.testing.assert_close(ties(base, [m1, m2], density=0.5, lambda_=0.5), T([3.0, 2.5, 2.125, -0.5, 1.0, 1.0]))


def test_elect_sign_and_weighted_disjoint_mean():
    """weights (1, 3) on taus [[2, -1], [-1, -1]]: weighted [[2, -1], [-3, -3]], sum [-1, -4] -> sign [-, -];
    entry 0: only model 2 agrees -> -3 / 3 = -1; entry 1: both agree -> (-1 - 3) / (1 + 3) = -1."""
    taus = T([[2.0, -1.0], [-1.0, -1.0]]) * T([1.0, 3.0])[:, None]
    sign = elect_sign(taus)
    torch.testing.assert_close(sign, T([-1.0, -1.0]))
    torch.testing.assert_close(disjoint_mean(taus, sign, [1.0, 3.0]), T([-1.0, -1.0]))


def test_dare_drop_rescales_survivors_and_is_seeded():
    """density 0.3: every survivor equals tau / 0.3, the rest is 0; the kept fraction of 10^5 entries is
    0.3 +- 0.01 (binomial std 0.0014); E[tau_hat] = tau, so the mean of 10^5 ones stays 1 +- 0.05.
    l1 rescale: survivors equal tau * |tau|_1 / |kept|_1, so |tau_hat|_1 = |tau|_1."""
    tau = torch.ones(100_000)
    out = dare_drop(tau, 0.3, generator=torch.Generator().manual_seed(0))
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.01
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / 0.3))
    assert abs(out.mean().item() - 1.0) < 0.05
    again = dare_drop(tau, 0.3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert not torch.equal(out, dare_drop(tau, 0.3, generator=torch.Generator().manual_seed(1)))

    tau = torch.arange(1.0, 101.0)
    l1 = dare_drop(tau, 0.5, generator=torch.Generator().manual_seed(0), rescale="l1")
    kept = l1 != 0
    scale = tau.sum() / tau[kept].sum()
    torch.testing.assert_close(l1[kept], tau[kept] * scale)
    torch.testing.assert_close(l1.abs().sum(), tau.sum())
    none = dare_drop(tau, 0.5, generator=torch.Generator().manual_seed(0), rescale="none")
    torch.testing.assert_close(none, tau * kept)  # same mask for the same seed


def test_dare_density_one_reduces_to_task_arithmetic_and_ties():
    """density 1 drops nothing. base 0, tau1 = [1, -2], tau2 = [-3, -1]:
    dare_linear, lambda 0.5: 0.5 * [-2, -3] = [-1, -1.5];
    dare_ties: sum [-2, -3] -> signs [-, -]; entry 0: only tau2 agrees -> -3; entry 1: (-2 - 1) / 2 = -1.5."""
    base, m1, m2 = torch.zeros(2), T([1.0, -2.0]), T([-3.0, -1.0])
    torch.testing.assert_close(dare(base, [m1, m2], 1.0, lambda_=0.5), T([-1.0, -1.5]))
    torch.testing.assert_close(dare(base, [m1, m2], 1.0, combine="ties"), T([-3.0, -1.5]))


def test_dare_ties_uses_one_mask_draw_per_model_in_order():
    """dare(..., combine='ties') equals TIES' sign election + disjoint mean over dare_drop'ed task vectors drawn
    from the same generator in model order."""
    g = torch.Generator().manual_seed(0)
    base, m1, m2 = torch.zeros(50), torch.randn(50, generator=g), torch.randn(50, generator=g)
    merged = dare(base, [m1, m2], 0.5, combine="ties", generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    taus = torch.stack([dare_drop(m1, 0.5, generator=g), dare_drop(m2, 0.5, generator=g)])
    torch.testing.assert_close(merged, disjoint_mean(taus, elect_sign(taus)))


def test_slerp_hand_computed_and_colinear_fallback():
    """Orthogonal [2, 0] and [0, 4]: Omega = pi/2, t = 0.5: sin(pi/4)/sin(pi/2) = 0.7071 on the raw vectors
    -> [1.4142, 2.8284]. Colinear [1, 2], [2, 4] (cos = 1 > 0.9995): lerp t = 0.25 -> [1.25, 2.5].
    Antiparallel [1, 0], [-1, 0] (|cos| = 1): lerp t = 0.5 -> [0, 0]. 60 degrees: [1, 0], [0.5, sqrt(3)/2],
    t = 0.5 -> sin(30)/sin(60) * (v0 + v1) = 0.57735 * [1.5, 0.8660] = [0.8660, 0.5]."""
    r = math.sqrt(0.5)
    torch.testing.assert_close(slerp(0.5, T([2.0, 0.0]), T([0.0, 4.0])), T([2 * r, 4 * r]))
    torch.testing.assert_close(slerp(0.25, T([1.0, 2.0]), T([2.0, 4.0])), T([1.25, 2.5]))
    torch.testing.assert_close(slerp(0.5, T([1.0, 0.0]), T([-1.0, 0.0])), T([0.0, 0.0]))
    torch.testing.assert_close(slerp(0.5, T([1.0, 0.0]), T([0.5, math.sqrt(3) / 2])),
                               T([math.sqrt(3) / 2, 0.5]))
    v0, v1 = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(slerp(0.0, v0, v1), v0)
    torch.testing.assert_close(slerp(1.0, v0, v1), v1)
    assert slerp(0.3, v0, v1).shape == (3, 4)


def test_layer_schedule():
    """3 layers at positions 0, 0.5, 1; anchors [0, 1] -> t = 0, 0.5, 1; anchors [0, 1, 0] -> 0, 1, 0;
    embeddings sit at 0, the final norm and lm_head at 1; a single value is a constant."""
    assert [layer_position(f"model.layers.{i}.mlp.up_proj.weight", 3) for i in range(3)] == [0.0, 0.5, 1.0]
    assert layer_position("model.embed_tokens.weight", 3) == 0.0
    assert layer_position("model.norm.weight", 3) == layer_position("lm_head.weight", 3) == 1.0
    assert [schedule_value([0.0, 1.0], p) for p in (0.0, 0.5, 1.0)] == [0.0, 0.5, 1.0]
    assert [schedule_value([0.0, 1.0, 0.0], p) for p in (0.0, 0.25, 0.5, 1.0)] == [0.0, 0.5, 1.0, 0.0]
    assert schedule_value([0.7], 0.3) == schedule_value(0.7, 0.9) == 0.7


def test_layerwise_linear_merge_of_state_dicts():
    """2 layers, t = [0, 1] as weights (1 - t, t): embeddings and layer 0 come from model a (t = 0), layer 1,
    the norm and lm_head from model b (t = 1)."""
    names = ["model.embed_tokens.weight", "model.layers.0.w.weight", "model.layers.1.w.weight", "model.norm.weight"]
    a = {n: torch.zeros(2, 2) for n in names}
    b = {n: torch.ones(2, 2) for n in names}
    out = merge_state_dicts([a, b], "linear", t=[0.0, 1.0], max_relative_distance=None)
    assert [float(out[n].mean()) for n in names] == [0.0, 0.0, 1.0, 1.0]
    out = merge_state_dicts([a, b], "slerp", t=[0.0, 1.0], max_relative_distance=None)
    assert [float(out[n].mean()) for n in names] == [0.0, 0.0, 1.0, 1.0]


# ------------------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------------------


def test_mismatched_keys_shapes_dtypes_raise(tiny):
    sd = tiny["sd"]
    missing = {k: v for k, v in sd["ft1"].items() if k != "lm_head.weight"}
    with pytest.raises(ValueError, match="different tensor names"):
        merge_state_dicts([sd["ft1"], missing])
    with pytest.raises(ValueError, match="different tensor names"):
        merge_state_dicts([sd["ft1"], sd["deep"]])
    with pytest.raises(ValueError, match="differ in shape"):
        merge_state_dicts([sd["ft1"], sd["wide"]])
    with pytest.raises(ValueError, match="differ in dtype"):
        merge_state_dicts([sd["ft1"], sd["ft1_bf16"]])
    with pytest.raises(ValueError, match="differ in dtype"):
        merge_models([tiny["paths"]["ft2"], tiny["paths"]["ft1_bf16"]], tiny["root"] / "never", "linear")
    with pytest.raises(ValueError, match="shape"):
        linear([torch.zeros(2), torch.zeros(3)])
    with pytest.raises(ValueError, match="dtype"):
        slerp(0.5, torch.zeros(2), torch.zeros(2, dtype=torch.float64))
    assert not (tiny["root"] / "never").exists()


def test_argument_errors(tiny):
    sd = tiny["sd"]
    with pytest.raises(ValueError, match="base_model"):
        merge_state_dicts([sd["ft1"], sd["ft2"]], "ties", density=0.5)
    with pytest.raises(ValueError, match="exactly 2"):
        merge_state_dicts([sd["ft1"], sd["ft2"], sd["base"]], "slerp")
    with pytest.raises(ValueError, match="density"):
        merge_state_dicts([sd["ft1"], sd["ft2"]], "ties", base=sd["base"], density=0.0)
    with pytest.raises(ValueError, match="weights"):
        merge_state_dicts([sd["ft1"], sd["ft2"]], "linear", weights=[1.0])
    with pytest.raises(ValueError, match="does not use base_model"):
        merge_state_dicts([sd["ft1"], sd["ft2"]], "linear", base=sd["base"])


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties"])
def test_non_shared_base_raises(tiny, method):
    """Two independent inits of std 0.02 are sqrt(0.02^2 + 0.02^2) / 0.02 = 1.41 apart (relative L2) > 0.5: refused
    whether compared with the base (task vectors) or with the first model (linear)."""
    sd = tiny["sd"]
    base = sd["base"] if method != "linear" else None
    with pytest.raises(ValueError, match="do not share a base"):
        merge_state_dicts([sd["ft1"], sd["other"]], method, base=base, density=0.5)


def test_existing_output_dir_is_never_overwritten(tiny):
    paths = tiny["paths"]
    out = tiny["root"] / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="never overwrites"):
        merge_models([paths["ft1"], paths["ft2"]], out, "linear")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_failed_merge_leaves_no_output_and_no_temp_folder(tiny):
    paths = tiny["paths"]
    parent = tiny["root"] / "failed"
    parent.mkdir()
    with pytest.raises(ValueError, match="do not share a base"):
        merge_models([paths["ft1"], paths["other"]], parent / "out", "task_arithmetic", base_model=paths["base"])
    assert list(parent.iterdir()) == []


# ------------------------------------------------------------------------------------------------------------
# Files: streaming merge, sharding, record, LoRA adapters
# ------------------------------------------------------------------------------------------------------------


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


def test_merge_models_matches_in_memory_merge_and_loads(tiny):
    """The streaming file merge equals merge_state_dicts on the loaded state dicts, loads with
    from_pretrained, carries the tokenizer and records method, inputs and parameters."""
    from transformers import AutoTokenizer

    paths, sd = tiny["paths"], tiny["sd"]
    out = merge_models([paths["ft1"], paths["ft2"]], tiny["root"] / "ties", "ties", base_model=paths["base"],
                       density=0.5, lambda_=[0.8])
    expected = merge_state_dicts([sd["ft1"], sd["ft2"]], "ties", base=sd["base"], density=0.5, lambda_=0.8)
    loaded = _load(out).state_dict()
    for name, tensor in expected.items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0)
    assert AutoTokenizer.from_pretrained(out).vocab_size == AutoTokenizer.from_pretrained(paths["base"]).vocab_size
    record = json.loads((out / "merge_record.json").read_text())
    assert record["method"] == "ties"
    assert [Path(i["path"]).name for i in record["inputs"]] == ["ft1", "ft2"]
    assert record["parameters"]["density"] == 0.5 and record["parameters"]["lambda_"] == [0.8]
    assert all(d < 0.6 for d in record["shared_base_check"]["relative_l2_distance"].values())
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".ties.tmp")]


def test_sharded_output_and_dtype(tiny):
    """A 0.002 MB shard limit writes one tensor per shard plus an index; bf16 output is recorded in config."""
    paths = tiny["paths"]
    out = merge_models([paths["ft1"], paths["ft2"]], tiny["root"] / "sharded", "linear",
                       max_shard_size_mb=0.002, dtype="bfloat16")
    assert (out / "model.safetensors.index.json").is_file() and not (out / "model.safetensors").exists()
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    model = _load(out)
    assert model.lm_head.weight.dtype == torch.bfloat16
    expected = linear([tiny["sd"]["ft1"]["lm_head.weight"], tiny["sd"]["ft2"]["lm_head.weight"]])
    torch.testing.assert_close(model.lm_head.weight, expected.to(torch.bfloat16))


def _make_adapter(base_path, out_path, seed, target_modules=("q_proj", "v_proj", "embed_tokens"), **kwargs):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_path)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=list(target_modules), **kwargs)
    peft_model = get_peft_model(model, config)
    # PEFT initializes every delta to 0 (B = 0, or embedding A = 0); set small seeded values instead, sized like
    # a short fine-tune (relative L2 change of the weights ~0.2).
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_embedding" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.03)
            elif "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.005)
            elif "modules_to_save" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.004)
    peft_model.save_pretrained(out_path)
    return peft_model


def test_lora_adapter_equals_peft_merge_and_unload(tiny):
    """Linear + embedding LoRA (rslora, alpha_pattern) and a modules_to_save head: every tensor of the lazy
    adapter view equals PEFT's merge_and_unload; merging two adapters equals merging the unloaded models."""
    paths = tiny["paths"]
    a = _make_adapter(paths["base"], tiny["root"] / "lora_a", 1, use_rslora=True, alpha_pattern={"v_proj": 4},
                      modules_to_save=["lm_head"])
    b = _make_adapter(paths["base"], tiny["root"] / "lora_b", 2)
    full_a = {k: v.detach().clone() for k, v in a.merge_and_unload().state_dict().items()}
    full_b = {k: v.detach().clone() for k, v in b.merge_and_unload().state_dict().items()}
    base = SafetensorsCheckpoint(paths["base"])
    view = LoraAdapterCheckpoint(tiny["root"] / "lora_a", base)
    assert set(view) == set(full_a)
    for name in full_a:
        torch.testing.assert_close(view[name], full_a[name], rtol=1e-6, atol=1e-6, msg=name)
    out = merge_models([tiny["root"] / "lora_a", tiny["root"] / "lora_b"], tiny["root"] / "lora_ta",
                       "task_arithmetic", base_model=paths["base"], lambda_=0.5)
    expected = merge_state_dicts([full_a, full_b], "task_arithmetic", base=tiny["sd"]["base"], lambda_=0.5)
    loaded = _load(out).state_dict()
    for name in expected:
        torch.testing.assert_close(loaded[name], expected[name], rtol=1e-6, atol=1e-6, msg=name)
    record = json.loads((out / "merge_record.json").read_text())
    assert [i["kind"] for i in record["inputs"]] == ["lora_adapter", "lora_adapter"]


def test_lora_adapter_on_another_base_raises(tiny):
    """The adapter names ``base`` as its base model; offering ``other`` (same architecture) is refused, as is a
    missing base."""
    paths = tiny["paths"]
    adapter = tiny["root"] / "lora_c"
    _make_adapter(paths["base"], adapter, 3)
    with pytest.raises(ValueError, match="trained on base model"):
        merge_models([adapter, adapter], tiny["root"] / "x", "linear", base_model=paths["other"])
    with pytest.raises(ValueError, match="base_model"):
        merge_models([adapter, paths["ft1"]], tiny["root"] / "x", "linear")
    # A copy of the base folder under another name passes the name check but not the saved-weights check when
    # the adapter saved its base embedding (save_embedding_layers): use the unrelated model's weights there.
    impostor = tiny["root"] / "base_impostor" / "base"
    shutil.copytree(paths["other"], impostor)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(paths["base"])
    with pytest.raises(ValueError, match="another base model"):
        merge_models([adapter, adapter.parent / "lora_b"], tiny["root"] / "x", "linear", base_model=impostor)
    assert not (tiny["root"] / "x").exists()


# ------------------------------------------------------------------------------------------------------------
# Greedy soup
# ------------------------------------------------------------------------------------------------------------


def test_greedy_soup_hand_computed():
    """Candidates w = 1, 2, 10, 1.5; score = -|w - 1.7|: individual -0.7, -0.3, -8.3, -0.2 -> order 3, 1, 0, 2.
    Soup {3} = 1.5 (-0.2); + cand 1: mean(1.5, 2) = 1.75 -> -0.05 >= -0.2, keep; + cand 0: mean(1.5, 2, 1) = 1.5
    -> -0.2 < -0.05, drop; + cand 2: mean(1.5, 2, 10) = 4.5 -> -2.8, drop. Result 1.75; 2N - 1 = 7 evals."""
    calls = []

    def eval_fn(sd):
        calls.append(1)
        return -abs(float(sd["w"]) - 1.7)

    candidates = [{"w": T([v])} for v in (1.0, 2.0, 10.0, 1.5)]
    result = greedy_soup(candidates, eval_fn)
    assert result.order == [3, 1, 0, 2]
    assert result.ingredients == [3, 1]
    torch.testing.assert_close(result.state_dict["w"], T([1.75]))
    assert result.score == pytest.approx(-0.05)
    assert [t["accepted"] for t in result.trials] == [True, True, False, False]
    assert len(calls) == 7
    with pytest.raises(ValueError, match="finite"):
        greedy_soup(candidates, lambda sd: float("nan"))


# ------------------------------------------------------------------------------------------------------------
# EnsemblePolicy
# ------------------------------------------------------------------------------------------------------------


def _greedy_no_cache(model, ids, n):
    for _ in range(n):
        nxt = model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=-1)
    return ids


@torch.no_grad()
def test_ensemble_policy(tiny):
    """One model: equals a cache-free greedy loop; (A, A, B) majority vote follows A; left padding gives the same
    tokens as the unpadded prompt; next_token_logprobs = mean of the models' log-softmax."""
    a, b = tiny_model(0), tiny_model(7)
    prompt = T([[5, 9, 11, 3]])
    ref = _greedy_no_cache(a, prompt, 6)
    assert torch.equal(EnsemblePolicy([a]).generate(prompt, max_new_tokens=6), ref)
    assert torch.equal(EnsemblePolicy([a, a, b], mode="majority_vote").generate(prompt, max_new_tokens=6), ref)
    assert torch.equal(EnsemblePolicy([a, a]).generate(prompt, max_new_tokens=6), ref)

    padded = T([[0, 0, 5, 9, 11, 3], [7, 8, 5, 9, 11, 3]])
    mask = T([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    out = EnsemblePolicy([a, b]).generate(padded, attention_mask=mask, max_new_tokens=5)
    alone = EnsemblePolicy([a, b]).generate(prompt, max_new_tokens=5)
    assert torch.equal(out[0, 2:], alone[0])

    expected = (torch.log_softmax(a(prompt).logits[:, -1], -1) + torch.log_softmax(b(prompt).logits[:, -1], -1)) / 2
    torch.testing.assert_close(EnsemblePolicy([a, b]).next_token_logprobs(prompt), expected)

    sampled = EnsemblePolicy([a, b]).generate(prompt, max_new_tokens=4, do_sample=True,
                                              generator=torch.Generator().manual_seed(0), eos_token_id=2)
    assert sampled.shape[1] <= prompt.shape[1] + 4
    with pytest.raises(ValueError, match="vocabulary"):
        EnsemblePolicy([a, tiny_model(0, vocab_size=80)])


# ------------------------------------------------------------------------------------------------------------
# scripts/merge.py
# ------------------------------------------------------------------------------------------------------------


def _script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("merge_script", REPO / "scripts" / "merge.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_main_end_to_end(tiny):
    """YAML + CLI override through TrlParser -> main() -> a folder AutoModelForCausalLM loads, equal to the
    in-memory DARE-TIES merge with the same seed; an unknown YAML key is an error."""
    script = _script()
    paths = tiny["paths"]
    config = tiny["root"] / "dare.yaml"
    config.write_text(yaml.safe_dump({
        "base_model": str(paths["base"]), "models": [str(paths["ft1"]), str(paths["ft2"])],
        "method": "dare_ties", "density": 0.5, "seed": 3, "output_dir": str(tiny["root"] / "wrong")}))
    out = tiny["root"] / "script_out"
    (args,) = script.make_parser().parse_args_and_config(["--config", str(config), "--output_dir", str(out)])
    script.main(args)
    expected = merge_state_dicts([tiny["sd"]["ft1"], tiny["sd"]["ft2"]], "dare_ties", base=tiny["sd"]["base"],
                                 density=0.5, seed=3)
    loaded = _load(out).state_dict()
    for name in expected:
        torch.testing.assert_close(loaded[name], expected[name], rtol=0, atol=0)
    assert not (tiny["root"] / "wrong").exists()

    bad = tiny["root"] / "bad.yaml"
    bad.write_text(config.read_text() + "densty: 0.3\n")
    with pytest.raises(ValueError, match="densty"):
        script.make_parser().parse_args_and_config(["--config", str(bad)])


@pytest.mark.parametrize("config", sorted((REPO / "config" / "merge").glob("*.yaml")), ids=lambda p: p.name)
def test_config_files_parse(config):
    """Every config/merge/*.yaml parses with the script's parser and starts with the command that runs it."""
    assert config.read_text().splitlines()[0] == f"# python scripts/merge.py --config config/merge/{config.name}"
    (args,) = _script().make_parser().parse_args_and_config(["--config", str(config)])
    assert args.models and args.output_dir


# ------------------------------------------------------------------------------------------------------------
# Differential tests against mergekit 0.1.5 (test-only dependency)
# ------------------------------------------------------------------------------------------------------------

MERGEKIT_CASES = [
    ("linear", "linear", {"weights": [0.3, 0.7]}, {"weight": {"a": 0.3, "b": 0.7}}),
    ("task_arithmetic", "task_arithmetic", {"weights": [0.6, 0.9], "lambda_": 0.7},
     {"weight": {"a": 0.6, "b": 0.9}, "lambda": 0.7}),
    ("ties", "ties", {"weights": [1.0, 0.5], "density": 0.4},
     {"weight": {"a": 1.0, "b": 0.5}, "density": 0.4}),
    ("dare_linear", "dare_linear", {"weights": [0.5, 0.5], "density": 1.0},
     {"weight": {"a": 0.5, "b": 0.5}, "density": 1.0}),
    ("dare_ties", "dare_ties", {"density": 1.0}, {"weight": 1.0, "density": 1.0, "normalize": True}),
    ("slerp", "slerp", {"t": 0.3}, {"t": 0.3}),
]


@pytest.mark.parametrize("ours,theirs,our_params,their_params", MERGEKIT_CASES, ids=[c[0] for c in MERGEKIT_CASES])
def test_against_mergekit_state_dicts(tiny, ours, theirs, our_params, their_params):
    """Whole tiny state dicts: our merge_state_dicts vs mergekit.merge_methods.api.merge_state_dicts."""
    pytest.importorskip("mergekit")
    from mergekit.merge_methods.api import merge_state_dicts as mk_merge

    sd = tiny["sd"]
    if ours == "slerp":
        expected = mk_merge({"a": sd["ft1"], "b": sd["ft2"]}, theirs, base="a", parameters=their_params)
        got = merge_state_dicts([sd["ft1"], sd["ft2"]], "slerp", **our_params)
    elif ours == "linear":
        expected = mk_merge({"a": sd["ft1"], "b": sd["ft2"]}, theirs, parameters=their_params)
        got = merge_state_dicts([sd["ft1"], sd["ft2"]], "linear", **our_params)
    else:
        expected = mk_merge({"base": sd["base"], "a": sd["ft1"], "b": sd["ft2"]}, theirs, base="base",
                            parameters=their_params)
        got = merge_state_dicts([sd["ft1"], sd["ft2"]], ours, base=sd["base"], **our_params)
    assert list(got) == list(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("combine,rescale", [("linear", "l1"), ("ties", "l1"), ("linear", "none")])
def test_dare_against_mergekit_fixed_seed(combine, rescale):
    """Same seed, same Bernoulli draws (one per model, in order): DARE with mergekit's L1 rescaling (and without
    rescaling) matches mergekit's dare_linear / dare_ties (normalize: true) tensor for tensor."""
    pytest.importorskip("mergekit")
    from mergekit.merge_methods.api import merge_tensors

    g = torch.Generator().manual_seed(0)
    base = torch.randn(32, 24, generator=g)
    tensors = [base + 0.1 * torch.randn(32, 24, generator=g) for _ in range(3)]
    params = {"weight": [0.2, 0.5, 0.3], "density": 0.3, "lambda": 0.9, "rescale": rescale != "none"}
    if combine == "ties":
        params["normalize"] = True
    torch.manual_seed(1234)
    expected = merge_tensors([base, *tensors], f"dare_{combine}", parameters=params, base_index=0)
    got = dare(base, tensors, 0.3, [0.2, 0.5, 0.3], lambda_=0.9, combine=combine,
               generator=torch.Generator().manual_seed(1234), rescale=rescale)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_ties_against_mergekit_run_merge(tiny, tmp_path):
    """File to file: mergekit's run_merge on the saved tiny models vs our merge_models (TIES, density 0.5)."""
    pytest.importorskip("mergekit")
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    paths = tiny["paths"]
    config = MergeConfiguration.model_validate({
        "merge_method": "ties", "base_model": str(paths["base"]), "dtype": "float32",
        "models": [{"model": str(paths["ft1"]), "parameters": {"weight": 1.0, "density": 0.5}},
                   {"model": str(paths["ft2"]), "parameters": {"weight": 1.0, "density": 0.5}}]})
    run_merge(config, str(tmp_path / "mergekit"), MergeOptions(copy_tokenizer=False, write_model_card=False,
                                                                 quiet=True))
    ours = merge_models([paths["ft1"], paths["ft2"]], tmp_path / "ours", "ties", base_model=paths["base"],
                        density=0.5)
    theirs = SafetensorsCheckpoint(tmp_path / "mergekit")
    mine = SafetensorsCheckpoint(ours)
    assert set(theirs) == set(mine)
    for name in mine:
        torch.testing.assert_close(mine[name], theirs[name], rtol=1e-6, atol=1e-7, msg=name)


def test_greedy_soup_from_the_command_line(tmp_path, tiny_model_dir, tokenizer):
    """--method greedy_soup scores soups by held-out accuracy. Random tiny models all score 0, so with the
    paper's '>=' rule both candidates join and the soup is their plain average, written as a loadable model."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    folders = []
    for seed in (1, 2):
        model = perturbed(base, seed, std=0.01)
        model.save_pretrained(tmp_path / f"ft{seed}")
        tokenizer.save_pretrained(tmp_path / f"ft{seed}")
        folders.append(str(tmp_path / f"ft{seed}"))
    script = _script()
    (args,) = script.make_parser().parse_args_and_config(
        ["--models", *folders, "--method", "greedy_soup", "--eval_prompts", "2", "--output_dir",
         str(tmp_path / "soup")])
    script.main(args)
    record = json.loads((tmp_path / "soup" / "merge_record.json").read_text())
    assert record["method"] == "greedy_soup" and sorted(record["ingredients"]) == [0, 1]
    assert record["individual_scores"] == [0.0, 0.0] and [t["accepted"] for t in record["trials"]] == [True, True]
    soup = AutoModelForCausalLM.from_pretrained(tmp_path / "soup").state_dict()
    a = AutoModelForCausalLM.from_pretrained(folders[0]).state_dict()
    b = AutoModelForCausalLM.from_pretrained(folders[1]).state_dict()
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight"):
        torch.testing.assert_close(soup[name], (a[name] + b[name]) / 2)
