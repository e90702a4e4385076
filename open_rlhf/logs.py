"""Logging, configured once per process by the entry points (the stage runner, the pipeline, the benchmarks).

The project's loggers (``open_rlhf.*``) print at INFO on the main process and at WARNING on the others, unless
``--log_level`` / ``--log_level_replica`` say otherwise; transformers and datasets follow
`transformers.TrainingArguments.get_process_log_level` (so ``--log_level info`` makes them verbose too). This
is alignment-handbook's pattern (``get_process_log_level`` in its ``run_*.py``). Library code only calls
``logging.getLogger(__name__)`` and never configures handlers.

This module is a leaf: it imports nothing from the project.
"""

from __future__ import annotations

import logging
import sys

PROJECT_LOGGER = "open_rlhf"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_configured = False


def setup_logging(training_args=None, main_process: bool | None = None) -> int:
    """Configure the project's, transformers' and datasets' loggers for this process (idempotent).

    Args:
        training_args (`transformers.TrainingArguments`, *optional*): gives the per-process level
            (``log_level`` on the main process, ``log_level_replica`` elsewhere).
        main_process (`bool`, *optional*): whether this is the main process; default from ``training_args``
            (``should_log``) or, without them, the ``RANK`` environment variable.

    Returns:
        `int`: the level set on the project's loggers.
    """
    global _configured
    import os

    if main_process is None:
        main_process = (training_args.should_log if training_args is not None
                        else os.environ.get("RANK", "0") == "0")
    level = logging.INFO if main_process else logging.WARNING
    library_level = None
    if training_args is not None:
        chosen = training_args.get_process_log_level()
        explicit = training_args.log_level if main_process else training_args.log_level_replica
        if explicit not in (None, "passive"):
            level = library_level = chosen
    project = logging.getLogger(PROJECT_LOGGER)
    project.setLevel(level)
    if not _configured:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        project.addHandler(handler)
        project.propagate = False  # one line per record even when the root logger also has a handler
        _configured = True
    if library_level is not None:
        import datasets
        import transformers

        transformers.utils.logging.set_verbosity(library_level)
        datasets.utils.logging.set_verbosity(library_level)
    return level
