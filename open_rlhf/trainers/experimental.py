"""The project's only door to `trl.experimental`: ORPO and CPO trainers and configs, imported on first use.

`trl.experimental` (TRL 1.16) carries no stability promise: any of it may move or vanish in a minor release. So
nothing here imports it at module level; each accessor imports on call and turns a failure into an `ImportError`
that names the pinned TRL version and the way out. TRL's "you are importing from trl.experimental" warning is
silenced here, since this guard is the project's answer to it.

    from open_rlhf.trainers.experimental import orpo_classes, orpo_config_class
    _, ORPOTrainer = orpo_classes()
    ORPOConfig = orpo_config_class()        # TRL's ORPOConfig + device and bf16 from the hardware

`ORPOConfig` and `CPOConfig` are also importable by name from this module (resolved lazily, so that a
`training_args.bin` saved by the Trainer unpickles).
"""

from __future__ import annotations

import functools
import importlib
import warnings
from dataclasses import dataclass

from open_rlhf.config import HardwareDefaultsMixin

TRL_PINNED_VERSION = "1.16.0"  # keep equal to the trl pin in requirements.txt (tests/test_simpo.py checks it)


def _import_experimental(submodule: str, names: tuple[str, ...]) -> tuple[type, ...]:
    """Import ``names`` from ``trl.experimental.<submodule>``.

    Raises:
        ImportError: when the installed TRL has no such module or name (moved or removed in another release).
    """
    import trl

    path = f"trl.experimental.{submodule}"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*trl\.experimental")
            module = importlib.import_module(path)
        return tuple(getattr(module, name) for name in names)
    except (ImportError, AttributeError) as e:
        raise ImportError(
            f"Cannot import {', '.join(names)} from {path} with the installed trl {trl.__version__} ({e}). "
            f"open_rlhf pins trl=={TRL_PINNED_VERSION} (requirements.txt), and trl.experimental may change or be "
            f"removed in any minor release. Install the pin (pip install trl=={TRL_PINNED_VERSION}), or, if you "
            "upgraded TRL on purpose, point open_rlhf/trainers/experimental.py at the new location."
        ) from e


def orpo_classes() -> tuple[type, type]:
    """TRL's ``(ORPOConfig, ORPOTrainer)`` from `trl.experimental.orpo` (Hong et al. 2024,
    https://huggingface.co/papers/2403.07691). In `ORPOConfig`, ``beta`` is the paper's lambda (weight of the
    odds-ratio term added to the NLL of the chosen completion), default 0.1.

    Raises:
        ImportError: when the installed TRL has no `trl.experimental.orpo` (see `TRL_PINNED_VERSION`).
    """
    return _import_experimental("orpo", ("ORPOConfig", "ORPOTrainer"))


def cpo_classes() -> tuple[type, type]:
    """TRL's ``(CPOConfig, CPOTrainer)`` from `trl.experimental.cpo` (Xu et al. 2024,
    https://huggingface.co/papers/2401.08417). ``loss_type="simpo"`` with ``cpo_alpha=0`` is SimPO; our own
    `open_rlhf.trainers.simpo` is the supported SimPO, this one is kept as a cross-check.

    Raises:
        ImportError: when the installed TRL has no `trl.experimental.cpo` (see `TRL_PINNED_VERSION`).
    """
    return _import_experimental("cpo", ("CPOConfig", "CPOTrainer"))


def _with_hardware_defaults(base: type) -> type:
    # A real (module-level, named) dataclass: TrlParser needs a dataclass type, and the Trainer pickles its args
    # into training_args.bin, which needs the class reachable as open_rlhf.trainers.experimental.<name>
    cls = type(base.__name__, (HardwareDefaultsMixin, base), {
        "__module__": __name__,
        "__qualname__": base.__name__,
        "__doc__": f"TRL's `{base.__name__}`; device and precision from the hardware "
                   "(see `open_rlhf.config.HardwareDefaultsMixin`).",
    })
    return dataclass(cls)


@functools.cache
def orpo_config_class() -> type:
    """TRL's `ORPOConfig` with `HardwareDefaultsMixin`: the CPU on a machine without GPU/XPU/MPS, bf16 where native.

    A dataclass, so it goes into ``TrlParser((ScriptArguments, orpo_config_class(), ModelConfig))``; the same class
    object on every call, also importable as ``open_rlhf.trainers.experimental.ORPOConfig``.

    Raises:
        ImportError: when the installed TRL has no `trl.experimental.orpo` (see `TRL_PINNED_VERSION`).
    """
    return _with_hardware_defaults(orpo_classes()[0])


@functools.cache
def cpo_config_class() -> type:
    """TRL's `CPOConfig` with `HardwareDefaultsMixin` (see `orpo_config_class`).

    Raises:
        ImportError: when the installed TRL has no `trl.experimental.cpo` (see `TRL_PINNED_VERSION`).
    """
    return _with_hardware_defaults(cpo_classes()[0])


def __getattr__(name: str):
    # Lazy module attributes (PEP 562): importing this module never imports trl.experimental
    if name == "ORPOConfig":
        return orpo_config_class()
    if name == "CPOConfig":
        return cpo_config_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
