"""The errors a user can cause (bad data, a bad config, an output folder that holds a finished run, a bad reward
spec, a missing model), all `UserError`s.

The stage runner (`open_rlhf.cli`) and the pipeline print a `UserError` as one message and exit with status 2;
``OPEN_RLHF_DEBUG=1`` shows the traceback as well. Any other exception is a bug or an environment failure and
keeps its traceback. `parse_config` parses a command line, reporting a bad ``--config`` file (missing, not
valid YAML, an unknown key) or a rejected value as a `ConfigError`. Each class also derives from the built-in
exception a caller would expect (`ValueError`, `FileExistsError`, `FileNotFoundError`), so ``except ValueError``
keeps working.

This module is a leaf: it imports nothing from the project.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

DEBUG_ENV = "OPEN_RLHF_DEBUG"
EXIT_USER_ERROR = 2  # like argparse: the command line (or what it points at) is wrong


class UserError(Exception):
    """Something the user gave is wrong; the message says what, where, and how to fix it."""


class DataFormatError(UserError, ValueError):
    """A data source that cannot be read or converted; the message names the file, line, field and fix."""


class DataNotFoundError(UserError, FileNotFoundError):
    """A data file or folder that does not exist."""


class ConfigError(UserError, ValueError):
    """A configuration value that is invalid or unsupported (the message names the field)."""


class RewardSpecError(UserError, ValueError):
    """A reward spec string that does not parse, or names an unknown reward."""


class ModelNotFoundError(UserError, FileNotFoundError):
    """A model path that does not exist or holds no loadable model (and is not a reachable hub id)."""


class OutputDirError(UserError, FileExistsError):
    """An output folder that already holds a finished run; nothing is overwritten."""


class StageFailedError(UserError):
    """A pipeline stage (a child process) failed; the message carries the stage's own last error line.

    Attributes:
        returncode (`int`): the stage's exit status (2: a user error in the stage; anything else: a crash).
    """

    def __init__(self, message: str, returncode: int):
        super().__init__(message)
        self.returncode = returncode


def debug_enabled() -> bool:
    """Whether ``OPEN_RLHF_DEBUG`` asks for tracebacks of user errors (any value but '', '0', 'false', 'no')."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a `UserError` into ``error: <message>`` on stderr and exit status 2 (traceback with ``OPEN_RLHF_DEBUG``).

    A `StageFailedError` from the pipeline exits 2 when the stage's own error was a user error, 1 when the stage
    crashed (its traceback is already in its output and its log).
    """
    try:
        yield
    except UserError as error:
        if debug_enabled():
            raise
        sys.stdout.flush()
        print(f"error: {error}", file=sys.stderr, flush=True)
        code = EXIT_USER_ERROR
        if isinstance(error, StageFailedError) and error.returncode != EXIT_USER_ERROR:
            code = 1
        raise SystemExit(code) from None


def _config_path(argv: list[str]) -> str | None:
    """The path after ``--config`` in ``argv`` (as `trl.TrlParser` finds it), or None without ``--config``.

    Raises:
        ConfigError: when ``--config`` is the last argument (no path follows it).
    """
    if "--config" not in argv:
        return None
    index = argv.index("--config")
    if index + 1 >= len(argv):
        raise ConfigError("--config needs the path of a YAML file, e.g. --config config/sft/default.yaml.")
    return argv[index + 1]


def _parser_keys(parser) -> set[str]:
    """The keys a config YAML may set: the ``dest`` of every action of ``parser`` and its subparsers."""
    import argparse

    keys = {"env"}  # TRL: environment variables to set
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                keys |= _parser_keys(subparser)
        else:
            keys.add(action.dest)
    return keys


def check_config_file(parser, path: str) -> dict:
    """Read a ``--config`` YAML file and check it the way `trl.TrlParser` will use it, with messages for a user.

    Args:
        parser (`trl.TrlParser`): the parser the file's keys must belong to.
        path (`str`): the YAML file.

    Returns:
        `dict`: the file's mapping of keys to values.

    Raises:
        ConfigError: when the file does not exist or cannot be read, is not valid YAML (the message names the
            line and column), is not a mapping of keys to values, or has keys that are not flags of ``parser``
            (the message lists them, with the closest known key where there is one).
    """
    import difflib

    import yaml

    try:
        with open(path, encoding="utf-8") as file:
            config = yaml.safe_load(file)
    except FileNotFoundError as error:
        raise ConfigError(f"config file not found: {path}. Fix: check the --config path.") from error
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {path}: {error}. Fix: give a readable YAML file.") from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).strip().splitlines()[-1]
        context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
        if context and context_mark is not None:
            problem += f" ({context} at line {context_mark.line + 1}, column {context_mark.column + 1})"
        raise ConfigError(f"config file {path} is not valid YAML{where}: {problem}. Fix: correct the YAML "
                          "syntax there (one `key: value` per line).") from error
    if config is None:
        raise ConfigError(f"config file {path} is empty. Fix: give it `key: value` lines, or drop --config.")
    if not isinstance(config, dict):
        raise ConfigError(f"config file {path} must be a YAML mapping of flag names to values (`key: value` "
                          f"lines), not a {type(config).__name__}.")
    known = _parser_keys(parser)
    unknown = [key for key in config if key not in known]
    if unknown:
        names = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            names.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} in config file {path}: "
                          f"{', '.join(names)}. Fix: correct or remove {'them' if len(unknown) > 1 else 'it'}; "
                          "`--help` lists the flags, and every flag is a valid key.")
    return config


def parse_config(parser, argv: list[str] | None):
    """``parser.parse_args_and_config(args=argv)``, with a bad ``--config`` file or a bad value as a `ConfigError`.

    The ``--config`` file is checked first (`check_config_file`), so that its problems are reported with the
    file, line and key rather than as TRL's messages. Command-line mistakes (an unknown flag, a value of the
    wrong type) stay argparse's own: usage, the error, exit status 2.

    Args:
        parser (`trl.TrlParser`): the command's parser.
        argv (`list[str]`, *optional*): the arguments; default ``sys.argv[1:]``.

    Returns:
        `tuple`: one parsed dataclass per dataclass of ``parser``.

    Raises:
        ConfigError: for a missing, unreadable or invalid ``--config`` file, an unknown key in it, or a value
            that a config's validation rejects.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    path = _config_path(argv)
    if path is not None:
        check_config_file(parser, path)
    try:
        return parser.parse_args_and_config(args=argv)
    except UserError:
        raise
    except FileNotFoundError as error:
        raise ConfigError(f"config file not found: {error.filename or error}. Fix: check the --config path.") from error
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{error} (check --config and the command-line flags; `--help` lists them)") from error
