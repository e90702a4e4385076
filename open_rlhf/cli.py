"""The command line: ``open-rlhf <stage> [--config YAML] [flags]`` (like TRL's ``trl sft|dpo|...``), the
``scripts/train_<stage>.py`` shims, and how every entry point reports a user error.

    open-rlhf --help                                  # the stages
    open-rlhf sft --config config/sft/default.yaml
    open-rlhf dpo --config config/dpo/default.yaml --model_name_or_path runs/default/sft
    open-rlhf pipeline --config config/pipeline/default.yaml
    accelerate launch --config_file config/accelerate/multi_gpu.yaml -m open_rlhf.cli grpo --config ...

User errors (bad data, a finished output folder, a bad reward spec, an unknown config key, a missing model
path: `open_rlhf.errors.UserError`) print one line ``error: <message>`` and exit with status 2; set
``OPEN_RLHF_DEBUG=1`` (or pass ``open-rlhf --debug <stage>``) to see the traceback too. Any other exception
is unexpected and keeps its traceback.
"""

from __future__ import annotations

import os
import sys

from open_rlhf.errors import DEBUG_ENV, EXIT_USER_ERROR, parse_config, user_errors

# Commands besides the stages: a summary for --help, and the module and function of their main
_COMMANDS = {
    "pipeline": ("SFT -> (reward model ->) <method>, evaluation and report (scripts/run_pipeline.py)",
                 "open_rlhf.pipeline", "pipeline_main"),
    "compare": ("every method from one SFT policy, compared (scripts/compare_methods.py)",
                "open_rlhf.compare", "compare_main"),
}


def stage_main(name: str, argv: list[str] | None = None) -> None:
    """Parse ``argv`` with stage ``name``'s parser and run the stage (`open_rlhf.stages.run_stage`).

    Args:
        name (`str`): a key of `open_rlhf.stages.STAGES`.
        argv (`list[str]`, *optional*): the stage's flags; default ``sys.argv[1:]``.

    Raises:
        SystemExit: with status 2 after printing ``error: <message>`` for a user error (`open_rlhf.errors.UserError`,
            traceback too with ``OPEN_RLHF_DEBUG=1``), or argparse's for a bad flag; any other exception
            propagates with its traceback.
    """
    from open_rlhf import stages

    with user_errors():
        parsed = parse_config(stages.make_parser(name), argv)
        stages.run_stage(name, *parsed)


def _usage() -> str:
    from open_rlhf.stages import STAGES

    width = max(map(len, [*STAGES, *_COMMANDS]))
    lines = ["usage: open-rlhf [--debug] <stage> [--config YAML] [flags]", "", "stages:"]
    lines += [f"  {name:<{width}}  {spec.summary}" for name, spec in STAGES.items()]
    lines += ["", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (summary, _, _) in _COMMANDS.items()]
    lines += ["", "`open-rlhf <stage> --help` lists a stage's flags. --debug (or OPEN_RLHF_DEBUG=1) shows tracebacks",
              "of user errors, which otherwise print one line and exit with status 2."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """The ``open-rlhf`` console script: ``open-rlhf [--debug] <stage or command> [flags]``.

    Args:
        argv (`list[str]`, *optional*): the arguments; default ``sys.argv[1:]``. ``--debug`` first sets
            ``OPEN_RLHF_DEBUG=1``.

    Raises:
        SystemExit: 0 after ``--help``; 2 without a command, for an unknown one, or for a user error of the
            stage or command (see `stage_main`).
    """
    from open_rlhf.stages import STAGES

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--debug"]:
        os.environ[DEBUG_ENV] = "1"
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        raise SystemExit(0 if argv else EXIT_USER_ERROR)
    command, rest = argv[0], argv[1:]
    if command in STAGES:
        stage_main(command, rest)
    elif command in _COMMANDS:
        import importlib

        _, module, function = _COMMANDS[command]
        getattr(importlib.import_module(module), function)(rest)
    else:
        print(f"error: unknown stage or command {command!r}.\n\n{_usage()}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
