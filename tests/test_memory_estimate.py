"""`open_rlhf.memory_estimate` against hand-computed values, every accelerate / hardware preset, and one measured step."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from open_rlhf import memory_estimate as me
from open_rlhf.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
HARDWARE = sorted((REPO / "config/hardware").glob("*.yaml"))
ACCELERATE = sorted((REPO / "config/accelerate").glob("*.yaml"))
GB = 1e9


def llama2_7b(**overrides) -> me.HardwarePreset:
    preset = me.HardwarePreset(
        device="cuda", device_memory_gb=80, num_devices=8, accelerate_config=None, model="Llama-2-7B",
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
        intermediate_size=11008, tie_word_embeddings=False, precision="bf16_mixed", finetune="full",
        per_device_batch_size=1, sequence_length=2048, gradient_checkpointing=False, flash_attention=False)
    return dataclasses.replace(preset, **overrides)


def test_parameter_counts_of_known_models():
    """The published sizes: Llama-2-7B 6,738,415,616; Llama-2-70B 68,976,648,192 (GQA, 8 KV heads); Llama-3-8B
    8,030,261,248 (vocabulary 128,256, intermediate 14,336, 8 KV heads)."""
    assert me.parameter_counts(llama2_7b())["total"] == 6_738_415_616
    p70 = llama2_7b(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                    intermediate_size=28672)
    assert me.parameter_counts(p70)["total"] == 68_976_648_192
    p8 = llama2_7b(vocab_size=128256, intermediate_size=14336, num_key_value_heads=8)
    assert me.parameter_counts(p8)["total"] == 8_030_261_248


def test_full_fine_tune_is_16_bytes_per_parameter_divided_by_the_sharding():
    """7B params x (2 bf16 params + 2 bf16 grads + 12 fp32 master/m/v) = 112 GB; ZeRO-3 over 8: 14 GB.
    Llama-2-7B: 6,738,415,616 x 16 = 107.81 GB, / 8 = 13.48 GB; ZeRO-2 keeps the 13.48 GB of bf16 parameters
    whole and shards the rest: 13.48 + 94.34 / 8 = 25.27 GB."""
    per_param = me.bytes_per_trainable_param("bf16_mixed")
    assert per_param == {"parameters": 2, "gradients": 2, "optimizer": 12}
    assert sum(me.bytes_per_trainable_param("fp32").values()) == 16
    assert 7e9 * sum(per_param.values()) / GB == 112 and 7e9 * 16 / 8 / GB == 14
    p = 6_738_415_616
    assert me.estimate(llama2_7b()).states == pytest.approx(p * 16)  # DDP: nothing sharded
    for sharding in ("zero3", "fsdp"):
        assert me.estimate(llama2_7b(sharding=sharding)).states / GB == pytest.approx(p * 16 / 8 / GB)
        assert me.estimate(llama2_7b(sharding=sharding)).states / GB == pytest.approx(13.48, abs=0.01)
    zero2 = me.estimate(llama2_7b(sharding="zero2"))
    assert zero2.parameters == p * 2 and zero2.gradients + zero2.optimizer == pytest.approx(p * 14 / 8)
    assert zero2.states / GB == pytest.approx(25.27, abs=0.01)


def test_gathered_layers_only_under_full_sharding():
    """Two bf16 decoder layers of Llama-2-7B: 2 x 202,383,360 x 2 bytes = 809,533,440."""
    assert me.estimate(llama2_7b(sharding="fsdp")).gathered_layers == 809_533_440
    assert me.estimate(llama2_7b(sharding="zero2")).gathered_layers == 0


def test_lora_trains_only_the_adapters():
    """r 16 on q, k, v, o (4096 -> 4096: 16 x 8192 = 131,072 each), gate, up (16 x 15,104 = 241,664 each) and
    down (241,664): 1,048,576 per layer x 32 = 39,976,960 (PEFT reports 39,976,960 for this setup). Grads 2 bytes,
    AdamW 12 bytes per adapter parameter; the frozen base 2 bytes per parameter."""
    p = llama2_7b(finetune="lora", lora_r=16, num_devices=1)
    counts = me.parameter_counts(p)
    assert counts["lora"] == 39_976_960
    est = me.estimate(p)
    assert est.gradients == 39_976_960 * 2 and est.optimizer == 39_976_960 * 12
    assert est.parameters == (6_738_415_616 + 39_976_960) * 2


def test_qlora_base_weights_cost_half_a_byte_plus_constants():
    """NF4: 4 bits + one 8-bit absmax per 64 weights + one fp32 constant per 256 blocks (double quantisation) =
    0.5 + 1/64 + 4/16384 bytes = 0.127 bits of constants; without it 0.5 + 4/64 (0.5 bits). Llama-2-7B's linear
    weights (6,476,005,376) are quantised, embeddings / LM head / norms (262,410,240) stay bf16."""
    assert me.quantized_bytes_per_param(True) == pytest.approx(0.5 + 1 / 64 + 4 / 16384)
    assert (me.quantized_bytes_per_param(True) - 0.5) * 8 == pytest.approx(0.127, abs=1e-3)
    assert me.quantized_bytes_per_param(False) == 0.5625
    p = llama2_7b(finetune="qlora", lora_r=16, num_devices=1)
    counts = me.parameter_counts(p)
    assert counts["linear"] == 6_476_005_376 and counts["other"] == 262_410_240
    expected = 6_476_005_376 * me.quantized_bytes_per_param(True) + (262_410_240 + 39_976_960) * 2
    assert me.estimate(p).parameters == pytest.approx(expected)


def test_activations_follow_korthikanti_eq_1():
    """s 2048, b 1, h 4096, a 32: s*b*h = 8,388,608; 34 + 5*32*2048/4096 = 114 -> 956,301,312 bytes per layer
    (34 x 8,388,608 = 285,212,672 with fused attention). 32 layers: 30.6 GB. Gradient checkpointing: 2*s*b*h per
    layer (16,777,216 x 32 = 536,870,912) plus one layer recomputed (956,301,312)."""
    assert me.activation_bytes_per_layer(2048, 1, 4096, 32, flash_attention=False) == 956_301_312
    assert me.activation_bytes_per_layer(2048, 1, 4096, 32, flash_attention=True) == 285_212_672
    assert me.estimate(llama2_7b()).activations == 956_301_312 * 32
    assert me.estimate(llama2_7b(gradient_checkpointing=True)).activations == 536_870_912 + 956_301_312
    assert me.estimate(llama2_7b(precision="fp32")).activations == 2 * 956_301_312 * 32
    assert me.estimate(llama2_7b()).logits == 8 * 2048 * 32000


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_presets_parse_with_accelerates_loader(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    text = path.read_text()
    assert text.startswith("# accelerate launch --config_file config/accelerate/" + path.name)
    if config.num_machines > 1:  # multi-node: every placeholder is there and explained
        assert config.main_process_ip and config.main_process_port and config.machine_rank == 0
        for key in ("num_machines", "num_processes", "machine_rank", "main_process_ip", "main_process_port"):
            assert f"#   {key}" in text, key


def test_every_kind_of_sharding_has_a_single_and_a_multi_node_preset():
    kinds = {(me.sharding_of(str(p)), "multinode" in p.name) for p in ACCELERATE if "cpu" not in p.name}
    assert kinds == {(k, multi) for k in ("none", "zero2", "zero3", "fsdp") for multi in (False, True)}
    assert "fsdp_version: 2" in (REPO / "config/accelerate/fsdp.yaml").read_text()


@pytest.mark.parametrize("path", HARDWARE, ids=lambda p: p.name)
def test_hardware_presets_parse_and_fit_their_device(path):
    preset = me.load_hardware_preset(path)
    est = me.estimate(preset)
    assert me.fits(preset, est), me.format_table(preset, est)
    assert f"fits: {est.total / me.GiB:.2f} GiB" in me.format_table(preset, est)


def test_the_four_hardware_setups_are_there():
    presets = {p.stem: me.load_hardware_preset(p) for p in HARDWARE}
    assert presets["cpu_laptop"].device == "cpu" and presets["cpu_laptop"].sharding == "none"
    assert presets["gpu_24gb"].device_memory_gb == 24
    assert (presets["gpu_8x80gb_7b"].num_devices, presets["gpu_8x80gb_7b"].sharding) == (8, "fsdp")
    assert presets["qlora_70b"].finetune == "qlora" and presets["qlora_70b"].num_hidden_layers == 80


def test_a_preset_that_does_not_fit_says_so(tmp_path):
    """Full fine-tuning of Llama-2-7B on one 24 GB GPU: 107.8 GB of states alone."""
    preset = dataclasses.replace(me.load_hardware_preset(REPO / "config/hardware/gpu_24gb.yaml"), finetune="full")
    assert not me.fits(preset)
    assert "DOES NOT FIT" in me.format_table(preset, me.estimate(preset))


def test_bad_presets_name_the_problem(tmp_path):
    text = (REPO / "config/hardware/gpu_24gb.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text + "lora_alpha: 32\n")
    with pytest.raises(ConfigError, match="unknown key.*lora_alpha"):
        me.load_hardware_preset(bad)
    bad.write_text(text.replace("precision: bf16_mixed", "precision: fp8"))
    with pytest.raises(ConfigError, match="precision: 'fp8'"):
        me.load_hardware_preset(bad)
    bad.write_text(text.replace("accelerate_config: null", "accelerate_config: config/accelerate/nope.yaml"))
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        me.load_hardware_preset(bad)


def test_estimate_against_a_measured_cpu_step():
    """One fp32 AdamW step of a small random Llama (H 256, 4 layers, the SmolLM2 vocabulary, batch 2 x 128) on
    the CPU: the estimate is within a factor 1.5 of the measured peak (parameters, gradients and AdamW states are
    exact; activations are the GPT formula on a Llama block, and the allocator adds its own slack). The default
    model's shape (cpu_laptop, batch 2 x 256) measured 2,470 MB against 2,818 MB estimated (ratio 1.14)."""
    laptop = me.load_hardware_preset(REPO / "config/hardware/cpu_laptop.yaml")
    small = dataclasses.replace(laptop, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                num_key_value_heads=2, intermediate_size=688, per_device_batch_size=2,
                                sequence_length=128)
    result = me.measure_training_step(small)
    assert result["measured_mb"] > 0
    assert 1 / 1.5 < result["ratio"] < 1.5, result
