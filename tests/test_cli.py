"""User errors end with their message, not a traceback: the real commands (``python scripts/train_<stage>.py``,
``open-rlhf <stage>``, ``python scripts/run_pipeline.py``) in subprocesses, as a user runs them. Every error
happens before any training, so each command takes only its start-up time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from open_rlhf import cli, data, models, outputs, rewards, stages
from open_rlhf.errors import (
    ConfigError,
    DataFormatError,
    ModelNotFoundError,
    OutputDirError,
    RewardSpecError,
    StageFailedError,
    UserError,
    parse_config,
    user_errors,
)

REPO = Path(__file__).resolve().parents[1]
CONSOLE_SCRIPT = Path(sys.executable).with_name("open-rlhf")
FAST = ["--max_steps", "1", "--eval_size", "0", "--report_to", "none"]  # nothing trains: the errors come first


def run_command(command: list[str], **env) -> subprocess.CompletedProcess:
    """Run a command in the repository as a user would (offline), capturing its output as text."""
    return subprocess.run(command, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1", **env}, capture_output=True,
                          text=True, timeout=240)


def assert_user_error(proc: subprocess.CompletedProcess, pattern: str) -> str:
    """Exit status 2, and stderr ends with exactly one ``error: ...`` line that matches ``pattern``; no traceback."""
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], proc.stderr[-3000:]
    assert re.search(pattern, lines[-1]), lines[-1]
    return lines[-1]


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> dict[str, Path]:
    """The user's mistakes, as files: bad JSON on line 2, a field missing on line 2, a finished output folder,
    a config with a misspelt key, a config that is not valid YAML."""
    root = tmp_path_factory.mktemp("bad")
    paths = {"bad_json": root / "bad_json.jsonl", "missing_field": root / "missing_field.jsonl",
             "finished": root / "finished", "unknown_key": root / "unknown_key.yaml",
             "bad_yaml": root / "bad_yaml.yaml"}
    paths["bad_json"].write_text('{"prompt": "1+1=", "completion": "2"}\n{"prompt": "2+2=", "completion": \n')
    paths["missing_field"].write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "chosen": "c"}\n')
    paths["finished"].mkdir()
    (paths["finished"] / outputs.COMPLETE_MARKER).write_text("{}")
    paths["unknown_key"].write_text("max_steps: 1\nlerning_rate: 1.0e-5\n")
    paths["bad_yaml"].write_text("max_steps: [1\n")
    return paths


# (stage, flags with {name} for bad_inputs paths and {tiny} for the tiny model, what the message must say)
CASES = {
    "bad_json_line": ("sft", ["--dataset_name", "{bad_json}"],
                      r"^error: bad JSON on line 2 of .*bad_json\.jsonl: "),
    "missing_field": ("dpo", ["--dataset_name", "{missing_field}"],
                      r"^error: line 2 of .*missing_field\.jsonl: record has missing field 'rejected'"),
    "finished_output_dir": ("sft", ["--output_dir", "{finished}"],
                            r"^error: .*finished already holds a finished run \(training_complete\.json exists\)"),
    "bad_reward_spec": ("grpo", ["--reward", "math,foo"],
                        r"^error: reward spec 'math,foo', term 2 'foo': unknown reward name 'foo'"),
    "unknown_config_key": ("sft", ["--config", "{unknown_key}"],
                           r"^error: unknown key in config file .*unknown_key\.yaml: 'lerning_rate' "
                           r"\(did you mean 'learning_rate'\?\)"),
    "invalid_yaml": ("sft", ["--config", "{bad_yaml}"],
                     r"^error: config file .*bad_yaml\.yaml is not valid YAML \(line 2, column 1\)"),
    "missing_model": ("sft", ["--model_name_or_path", "./no/such/model"],
                      r"^error: model folder \./no/such/model does not exist\."),
}


def stage_args(case: str, bad_inputs, tiny_model_dir, tmp_path) -> tuple[str, list[str]]:
    stage, flags, _ = CASES[case]
    flags = [flag.format(tiny=tiny_model_dir, **bad_inputs) for flag in flags]
    base = ["--model_name_or_path", str(tiny_model_dir), "--output_dir", str(tmp_path / "out"), *FAST]
    return stage, base + flags  # later flags win: a case's own --model_name_or_path / --output_dir


@pytest.mark.parametrize("case", list(CASES))
def test_stage_script_user_error_is_one_message_and_exit_2(case, bad_inputs, tiny_model_dir, tmp_path):
    stage, args = stage_args(case, bad_inputs, tiny_model_dir, tmp_path)
    proc = run_command([sys.executable, f"scripts/train_{stage}.py", *args])
    assert_user_error(proc, CASES[case][2])
    assert not (tmp_path / "out" / outputs.COMPLETE_MARKER).exists()  # it stopped before training
    assert not list((tmp_path / "out").glob("checkpoint-*"))


def test_debug_env_shows_the_traceback(bad_inputs, tiny_model_dir, tmp_path):
    """``OPEN_RLHF_DEBUG=1``: the same error with its traceback (and the exception's class)."""
    stage, args = stage_args("bad_json_line", bad_inputs, tiny_model_dir, tmp_path)
    proc = run_command([sys.executable, f"scripts/train_{stage}.py", *args], OPEN_RLHF_DEBUG="1")
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert re.search(r"open_rlhf\.errors\.DataFormatError: bad JSON on line 2 of ", proc.stderr), proc.stderr[-2000:]


def test_console_script_reports_the_same_error(bad_inputs, tiny_model_dir, tmp_path):
    """``open-rlhf grpo ...`` (the installed console script) ends like ``scripts/train_grpo.py ...``."""
    assert CONSOLE_SCRIPT.is_file(), f"{CONSOLE_SCRIPT}: the package is not installed in this environment"
    stage, args = stage_args("bad_reward_spec", bad_inputs, tiny_model_dir, tmp_path)
    proc = run_command([str(CONSOLE_SCRIPT), stage, *args])
    assert_user_error(proc, CASES["bad_reward_spec"][2])


def test_pipeline_reports_a_failed_stage_in_one_line(bad_inputs, tiny_model_dir, tmp_path):
    """A stage that fails on a user error: the pipeline exits 2 with ``error: stage 'sft' failed: <the stage's
    own message, with file and line> (full output: <log>; ...)`` on one line, and no traceback of its own."""
    runs = tmp_path / "runs"
    proc = run_command([sys.executable, "scripts/run_pipeline.py", "--model_name_or_path", str(tiny_model_dir),
                        "--sft_dataset", str(bad_inputs["bad_json"]), "--runs_dir", str(runs), "--evaluate", "false"])
    log = runs / "default" / "sft.log"
    line = assert_user_error(proc, r"^error: stage 'sft' failed: bad JSON on line 2 of .*bad_json\.jsonl: ")
    assert f"(full output: {log};" in line
    assert log.is_file() and re.search(r"^error: bad JSON on line 2 of ", log.read_text(), re.M)
    assert "=== stage sft: " in proc.stdout and "=== stage reward" not in proc.stdout  # it stopped there
    assert not (runs / "default" / "sft" / outputs.COMPLETE_MARKER).exists()


# Each user error above is a `UserError` where it is raised (not an exception translated on the way out):


def test_each_user_error_is_raised_as_a_user_error_class(bad_inputs, tiny_model_dir):
    with pytest.raises(DataFormatError, match="bad JSON on line 2 of "):
        data.load_splits(str(bad_inputs["bad_json"]), "sft", eval_size=0)
    with pytest.raises(DataFormatError, match="line 2 of .*missing field 'rejected'"):
        data.load_splits(str(bad_inputs["missing_field"]), "preference", eval_size=0)
    with pytest.raises(OutputDirError, match="already holds a finished run"):
        outputs.prepare_output_dir(bad_inputs["finished"])
    with pytest.raises(RewardSpecError, match="unknown reward name 'foo'"):
        rewards.build_reward_functions("math,foo")
    for key in ("unknown_key", "bad_yaml"):
        with pytest.raises(ConfigError):
            parse_config(stages.make_parser("sft"), ["--config", str(bad_inputs[key])])
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        models.resolve_model_path("./no/such/model")
    assert issubclass(StageFailedError, UserError)


def test_config_file_problems_are_config_errors(tmp_path):
    """A missing --config path, an empty file, a YAML list, several unknown keys: one clear `ConfigError` each."""
    parser = stages.make_parser("sft")
    cases = {"": r"is empty", "- a\n- b\n": r"must be a YAML mapping .*not a list",
             "lerning_rate: 1\nmax_stepz: 2\n": r"unknown keys in config file .*'lerning_rate' .*'max_stepz' "
                                               r"\(did you mean 'max_steps'\?\)"}
    for number, (text, pattern) in enumerate(cases.items()):
        path = tmp_path / f"{number}.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=pattern):
            parse_config(parser, ["--config", str(path)])
    with pytest.raises(ConfigError, match="config file not found"):
        parse_config(parser, ["--config", str(tmp_path / "nope.yaml")])
    with pytest.raises(ConfigError, match="--config needs the path"):
        parse_config(parser, ["--max_steps", "1", "--config"])
    parsed = parse_config(parser, ["--config", str(REPO / "config/sft/default.yaml"), "--max_steps", "3"])
    assert parsed[1].max_steps == 3  # a good preset, a flag over it


def test_user_errors_exit_2_and_unexpected_errors_keep_their_traceback(capsys, monkeypatch):
    monkeypatch.delenv("OPEN_RLHF_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info, user_errors():
        raise DataFormatError("bad JSON on line 2 of x.jsonl")
    assert exit_info.value.code == 2 and capsys.readouterr().err == "error: bad JSON on line 2 of x.jsonl\n"
    with pytest.raises(SystemExit) as exit_info, user_errors():
        raise StageFailedError("stage 'sft' crashed (exit 1): RuntimeError: boom", returncode=1)
    assert exit_info.value.code == 1  # a crashed stage: its traceback is in its output
    with pytest.raises(KeyError), user_errors():  # a bug: not caught, so Python prints the traceback
        raise KeyError("unexpected")
    monkeypatch.setenv("OPEN_RLHF_DEBUG", "1")
    with pytest.raises(DataFormatError), user_errors():
        raise DataFormatError("shown with its traceback")


def test_console_script_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    usage = capsys.readouterr().out
    assert exit_info.value.code == 0 and all(f"\n  {name} " in usage for name in [*stages.STAGES, "pipeline"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main([])
    assert exit_info.value.code == 2 and "usage: open-rlhf" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sfft"])
    assert exit_info.value.code == 2 and capsys.readouterr().err.startswith("error: unknown stage or command 'sfft'")
