"""The free-disk estimate against hand-computed values, and the check's message and overrides."""

from __future__ import annotations

import json
import struct

import pytest

from open_rlhf import disk


def test_stage_estimate_by_hand():
    """SFT of the default model: P = 134,515,008 parameters, fp32 (4 bytes), AdamW (2 states), save_total_limit 1
    -> 2 checkpoints coexist while rotating. Final model 4P = 538,060,032; a checkpoint is 4P * (1 + 2) =
    1,614,180,096; total 538,060,032 + 2 * 1,614,180,096 + 500,000,000 = 4,266,420,224 bytes."""
    assert disk.estimate_stage_bytes(134_515_008, checkpoints_on_disk=2) == 4_266_420_224
    # PPO: policy + value model (2P), no checkpoints: 8P + margin = 1,076,120,064 + 500,000,000
    assert disk.estimate_stage_bytes(134_515_008, trained_models=2, checkpoints_on_disk=0) == 1_576_120_064
    # 1000 parameters, bf16 weights and states, 3 checkpoints, no margin: 2000 + 2000 * 3 * 3 = 20,000
    assert disk.estimate_stage_bytes(1000, bytes_per_parameter=2, checkpoints_on_disk=3, margin_bytes=0) == 20_000


def test_pipeline_estimate_by_hand():
    """make pipeline: SFT, RM (1 model, 2 checkpoints each), PPO (2 models, 2 checkpoints). After each stage: its
    final model + 1 checkpoint: 4P * 4 = 2,152,240,128 twice, 8P * 4 = 4,304,480,256; plus PPO's extra checkpoint
    8P * 3 = 3,228,360,192 while it rotates; plus 500,000,000: 12,337,320,704 bytes (12.3 GB; measured 12 GB)."""
    assert disk.estimate_pipeline_bytes(134_515_008, [(1, 2), (1, 2), (2, 2)]) == 12_337_320_704
    assert disk.estimate_pipeline_bytes(10, [(1, 0)], margin_bytes=0) == 40  # no saves: the final model only


@pytest.mark.parametrize("strategy, limit, save_steps, max_steps, expected", [
    ("no", 1, 10, 100, 0),
    ("steps", 1, 15, 30, 2),     # SFT preset: saves at 15 and 30, the limit 1 + the one being written
    ("steps", 1, 10, 5, 0),      # fewer steps than save_steps: never saves
    ("steps", 3, 10, 20, 2),     # only 2 saves happen
    ("steps", None, 0.25, 100, 4),  # a fraction of the run: 4 saves, no limit
    ("epoch", 2, 500, -1, 3),
])
def test_checkpoints_on_disk(strategy, limit, save_steps, max_steps, expected):
    assert disk.checkpoints_on_disk(strategy, limit, save_steps, max_steps) == expected


def test_count_parameters_reads_safetensors_headers(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert disk.count_parameters(tiny_model_dir) == sum(p.numel() for p in model.parameters())  # tied: once
    header = json.dumps({"a": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}, "__metadata__": {}})
    (tmp_path / "x.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode() + bytes(48))
    assert disk.count_parameters(tmp_path) == 12
    assert disk.count_parameters("HuggingFaceTB/SmolLM2-135M-Instruct") is None  # a hub id: unknown


def test_check_names_folder_free_needed_and_override(tmp_path, monkeypatch):
    monkeypatch.delenv(disk.SKIP_ENV, raising=False)
    monkeypatch.setattr(disk, "free_bytes", lambda folder: 2_000_000_000)
    disk.check_free_disk(tmp_path / "new" / "sft", 1_999_000_000, "the sft stage")  # fits
    with pytest.raises(disk.DiskSpaceError) as err:
        disk.check_free_disk(tmp_path / "new" / "sft", 4_266_420_224, "the sft stage")
    message = str(err.value)
    assert str(tmp_path / "new" / "sft") in message and "2.0 GB free" in message and "4.3 GB" in message
    assert f"{disk.SKIP_ENV}=1" in message
    monkeypatch.setenv(disk.SKIP_ENV, "1")
    disk.check_free_disk(tmp_path, 10**15, "x")  # skipped


def test_free_bytes_of_a_folder_not_created_yet(tmp_path):
    assert disk.free_bytes(tmp_path / "a" / "b") == disk.free_bytes(tmp_path) > 0


def test_a_stage_fails_before_training_when_the_disk_is_short(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from open_rlhf.cli import stage_main

    monkeypatch.delenv(disk.SKIP_ENV, raising=False)
    monkeypatch.setattr(disk, "free_bytes", lambda folder: 1000)
    with pytest.raises(SystemExit) as exit_info:
        stage_main("sft", ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "sft"),
                           "--max_steps", "1", "--report_to", "none"])
    assert exit_info.value.code == 2
    err = capsys.readouterr()
    assert "not enough free disk for the sft stage" in err.out + err.err
    assert not (tmp_path / "sft" / "checkpoint-1").exists()


def test_pipeline_checks_the_disk_for_its_unfinished_stages(tmp_path, tiny_model_dir, monkeypatch):
    """SFT + RM + PPO presets on the tiny model: the same sum as `estimate_pipeline_bytes` over (1, 2), (1, 2),
    (2, 2); a finished stage no longer counts; --skip_disk_check skips."""
    from open_rlhf import outputs, pipeline

    monkeypatch.delenv(disk.SKIP_ENV, raising=False)
    asked = []
    monkeypatch.setattr(disk, "check_free_disk", lambda folder, needed, what, override=None: asked.append(
        (folder, needed, what, override)))
    args = pipeline.PipelineArguments(runs_dir=str(tmp_path), run_name="r", model_name_or_path=str(tiny_model_dir))
    params = disk.count_parameters(tiny_model_dir)
    pipeline.check_disk(args)
    assert asked[-1] == (args.run_dir, disk.estimate_pipeline_bytes(params, [(1, 2), (1, 2), (2, 2)]),
                         "the pipeline's 3 remaining stage(s)", "pass --skip_disk_check")
    (args.run_dir / "sft").mkdir(parents=True)
    (args.run_dir / "sft" / outputs.COMPLETE_MARKER).write_text("{}")
    pipeline.check_disk(args)
    assert asked[-1][1] == disk.estimate_pipeline_bytes(params, [(1, 2), (2, 2)])
    args.skip_disk_check = True
    pipeline.check_disk(args)
    assert len(asked) == 2


def test_report_links_the_event_folders(tmp_path):
    from open_rlhf import pipeline, report

    args = pipeline.PipelineArguments(runs_dir=str(tmp_path), run_name="r", report_to="tensorboard,trackio")
    events = args.run_dir / "sft" / "runs" / "May01_host"
    events.mkdir(parents=True)
    (events / "events.out.tfevents.1.host").write_bytes(b"")
    lines = report.tracking_section(args, ["sft", "ppo"])
    assert "- sft: TensorBoard events in [sft/runs/May01_host](sft/runs/May01_host)" in lines
    assert any("trackio show --project open-rlhf-r" in line for line in lines)
    assert report.tracking_section(pipeline.PipelineArguments(runs_dir=str(tmp_path / "x")), ["sft"]) == []
