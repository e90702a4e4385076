"""The errors a user can cause (bad data, a bad config, an output folder that holds a finished run, a bad reward
spec, a missing model), all `UserError`s.

The stage runner (`open_rlhf.cli`) and the pipeline print a `UserError` as one message and exit with status 2;
``OPEN_RLHF_DEBUG=1`` shows the traceback as well. Any other exception is a bug or an environment failure and
keeps its traceback. Each class also derives from the built-in exception a caller would expect (`ValueError`,
`FileExistsError`, `FileNotFoundError`), so ``except ValueError`` keeps working.

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
    """Whether ``OPEN_RLHF_DEBUG`` asks for tracebacks of user errors (any value but '', '0', 'false')."""
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


def parse_config(parser, argv: list[str] | None):
    """``parser.parse_args_and_config(args=argv)``, with an unknown key or a bad value as a `ConfigError`.

    Raises:
        ConfigError: for an unknown YAML key, a missing ``--config`` file, or a value a config rejects.
    """
    try:
        return parser.parse_args_and_config(args=argv)
    except UserError:
        raise
    except FileNotFoundError as error:
        raise ConfigError(f"config file not found: {error.filename or error}. Fix: check the --config path.") from error
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{error} (check --config and the command-line flags; `--help` lists them)") from error
