"""eval/run_eval.py: lm-eval through our wrapper gives lm-eval's own numbers; shipped local tasks; bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from open_rlhf import harness
from open_rlhf.run_eval import main
from tests.conftest import save_tiny_model

harness.set_offline()


@pytest.fixture(scope="module")
def local_task(tmp_path_factory, shared_data_dir) -> Path:
    """A user's own 10-document multiple-choice task (the first 10 ARC-Easy questions) as a plain lm-eval YAML."""
    folder = tmp_path_factory.mktemp("my_tasks")
    lines = (shared_data_dir / "arc" / "arc_easy.jsonl").read_text().splitlines()[:10]
    (folder / "docs.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "my_task.yaml").write_text(
        "task: my_task\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {folder / 'docs.jsonl'}\noutput_type: multiple_choice\ntest_split: test\n"
        'doc_to_text: "{{query}}\\nAnswer:"\ndoc_to_target: gold\ndoc_to_choice: "{{choices}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n")
    return folder


def test_own_task_equals_lm_eval_simple_evaluate(tiny_model_dir, local_task, tmp_path):
    """The same YAML, model and flags through run_eval.py and through lm_eval.simple_evaluate directly: the same
    metrics to the last digit, and the same per-document log-likelihoods."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = main(["--model", str(tiny_model_dir), "--tasks", "my_task", "--include_path", str(local_task),
                "--batch_size", "4", "--log_samples", "--output_dir", str(tmp_path / "ours")])
    ours = json.loads((out / harness.result_folder_name(str(tiny_model_dir)) / "results.json").read_text())
    direct = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(tiny_model_dir)}, tasks=["my_task"],
                                     task_manager=TaskManager(include_path=str(local_task)), batch_size=4,
                                     device="cpu")
    assert ours["results"]["my_task"] == json.loads(harness.results_json(direct))["results"]["my_task"]
    assert ours["n-samples"]["my_task"]["effective"] == 10
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {(r["metric"], r["value"]) for r in rows} == {
        ("acc", str(direct["results"]["my_task"]["acc,none"])),
        ("acc_norm", str(direct["results"]["my_task"]["acc_norm,none"]))}
    assert (out / "results.png").stat().st_size > 1000
    assert "± " in (out / "results.md").read_text()


def test_shipped_tasks_read_every_local_document(tiny_model_dir, tokenizer, shared_data_dir, tmp_path):
    """arc_easy / hellaswag / gsm8k with --data_dir are the local copies with the full official split sizes
    (2,376 / 10,042 / 1,319 documents, ../shared/data/README.md); two models give one table with a row each."""
    other = save_tiny_model(tmp_path / "other", tokenizer, seed=3)
    out = main(["--model", str(tiny_model_dir), "--model", str(other), "--tasks", "arc_easy,hellaswag,gsm8k",
                "--data_dir", str(shared_data_dir), "--limit", "2", "--num_fewshot", "0",
                "--gen_kwargs", "max_gen_toks=4", "--output_dir", str(tmp_path / "out")])
    results = json.loads((out / harness.result_folder_name(str(tiny_model_dir)) / "results.json").read_text())
    assert {task: n["original"] for task, n in results["n-samples"].items()} == {
        "arc_easy_local": 2376, "hellaswag_local": 10042, "gsm8k_local": 1319}
    assert set(results["results"]["gsm8k_local"]) >= {"exact_match,strict-match", "exact_match,flexible-extract"}
    table = (out / "results.md").read_text().splitlines()
    assert len(table) == 4 and table[2].startswith(f"| `{tiny_model_dir}`") and table[3].startswith(f"| `{other}`")
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["model"] for r in rows} == {str(tiny_model_dir), str(other)}


def test_peft_adapter_folder_loads_with_its_base(tiny_model_dir, tmp_path):
    """A LoRA stage's output (adapter_config.json, no config.json) is evaluated as base + adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, target_modules=["q_proj"]))
    model.save_pretrained(tmp_path / "adapter")
    spec = harness.resolve_model(str(tmp_path / "adapter"))
    assert spec.model_args == {"pretrained": str(tiny_model_dir), "peft": str(tmp_path / "adapter")}
    assert harness.load_lm(spec, batch_size=1).model.__class__.__name__.startswith("Peft")


@pytest.mark.parametrize("argv, message", [
    (["--model", "runs/does-not-exist/ppo", "--tasks", "my_task"], "does not exist"),
    (["--tasks", "arc_eazy"], "unknown task 'arc_eazy'"),
    (["--tasks", "arc_easy", "--data_dir", "{empty}"], "arc/arc_easy.jsonl"),
    (["--tasks", "my_task", "--limit", "0"], "--limit must be > 0"),
    (["--tasks", "my_task", "--limit", "-3"], "--limit must be > 0"),
    (["--tasks", "my_task", "--output_dir", "{taken}"], "already exists and is not empty"),
    ([], "nothing to evaluate"),
])
def test_bad_input_one_clear_message(argv, message, local_task, tmp_path, capsys):
    """Each bad input exits 2 with one ``error:`` line, before any model loads, and overwrites nothing."""
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "results.md").write_text("earlier results")
    (tmp_path / "empty").mkdir()
    argv = [a.format(empty=tmp_path / "empty", taken=taken) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--include_path", str(local_task)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert (taken / "results.md").read_text() == "earlier results"
