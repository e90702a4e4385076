"""The TRL contract in one place: every TRL name outside TRL's stable top-level API that open_rlhf, its scripts and
its tests rely on still exists with the parameters we use, so that a TRL upgrade fails here, loudly, first.

Covered: names from TRL's internal modules (``trl.trainer.*``, ``trl.data_utils``, ``trl.experimental.*``),
underscore names (methods our subclasses shadow, class attributes we set, instance attributes we read), and
top-level names resolved only when a code path runs (imported inside a function, or looked up by string). Not
covered: top-level names imported at module level (``trl.DPOConfig``, ``trl.ScriptArguments``...), which fail at
``import open_rlhf.config`` already. The tests that skip when ``trl.experimental`` is missing (``cpo_or_skip`` in
tests/test_simpo.py) are why the experimental classes are checked here too: this file never skips.

On a deliberate TRL upgrade: bump requirements.txt (and `open_rlhf.trainers.experimental.TRL_PINNED_VERSION`),
then fix each failure below in the file its entry names.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def resolve(module: str, attribute: str):
    """``module.attribute`` with a dotted ``attribute`` (``"DPOTrainer._compute_loss"``); AttributeError names the
    first missing part."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*trl\.experimental")  # TRL's import-time warning
        obj = importlib.import_module(module)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


# (module, attribute): what TRL must still define. The comment names the file of ours that relies on it.
TRL_NAMES = [
    # open_rlhf/trainers/simpo.py: `_reference_model_not_loaded` swaps this module global while DPOTrainer.__init__
    # runs, so that no reference model is loaded; tests/test_simpo.py counts the loads through it
    ("trl.trainer.dpo_trainer", "create_model_from_path"),
    # open_rlhf/trainers/simpo.py: SimPOTrainer shadows it (the SimPO loss instead of DPO's)
    ("trl.trainer.dpo_trainer", "DPOTrainer._compute_loss"),
    # open_rlhf/trainers/simpo.py: SimPOTrainer sets these three for the model card TRL writes with a checkpoint
    ("trl.trainer.base_trainer", "_BaseTrainer._tag_names"),
    ("trl.trainer.base_trainer", "_BaseTrainer._name"),
    ("trl.trainer.base_trainer", "_BaseTrainer._paper"),
    # open_rlhf/trainers/ppo.py: `policy_logprobs`
    ("trl.trainer.utils", "selective_log_softmax_and_entropy"),
    # open_rlhf/trainers/ppo.py: PPOTrainer.__init__ (policy, reference and value models)
    ("trl.trainer.utils", "disable_dropout_in_model"),
    # scripts/bench_sft.py: the FLOPs column
    ("trl.trainer.utils", "compute_flops_per_token"),
    # open_rlhf/data.py: `unpair` (paired preferences -> KTO's unpaired examples)
    ("trl.data_utils", "unpair_preference_dataset"),
    # open_rlhf/trainers/experimental.py: `orpo_classes` (the "orpo" stage, scripts/train_orpo.py); tests/test_simpo.py
    ("trl.experimental.orpo", "ORPOConfig"),
    ("trl.experimental.orpo", "ORPOTrainer"),
    # open_rlhf/trainers/experimental.py: `cpo_classes`; tests/test_simpo.py (the SimPO cross-checks)
    ("trl.experimental.cpo", "CPOConfig"),
    ("trl.experimental.cpo", "CPOTrainer"),
    # tests/test_simpo.py: test_simpo_loss_matches_trl_cpo_simpo calls it on a stand-in for the trainer
    ("trl.experimental.cpo", "CPOTrainer.cpo_loss"),
    # tests/test_simpo.py: test_simpo_trainer_loss_matches_trl_cpo_trainer
    ("trl.experimental.cpo", "CPOTrainer.get_batch_loss_metrics"),
    # open_rlhf/data.py: `_convert_implicit` (imported on call)
    ("trl", "maybe_extract_prompt"),
    # open_rlhf/models.py: `model_init_kwargs` (imported on call)
    ("trl", "get_quantization_config"),
    # open_rlhf/models.py: `load_policy_and_reference`; open_rlhf/stages.py: `_build_trainer` (imported on call)
    ("trl", "get_peft_config"),
    # open_rlhf/stages.py: `make_parser` (imported on call); open_rlhf/compare.py, open_rlhf/pipeline.py: parsers
    ("trl", "TrlParser"),
    ("trl", "ModelConfig"),
    # open_rlhf/stages.py: STAGES looks these up by name, `_trl("...")`, only when the stage runs
    ("trl", "SFTTrainer"),
    ("trl", "RewardTrainer"),
    ("trl", "DPOTrainer"),
    ("trl", "KTOTrainer"),
    ("trl", "GRPOTrainer"),
    ("trl", "RLOOTrainer"),
]


@pytest.mark.parametrize("module, attribute", TRL_NAMES, ids=[f"{m}:{a}" for m, a in TRL_NAMES])
def test_trl_name_exists(module, attribute):
    """TRL still defines ``module.attribute`` (see the entry's comment for who uses it)."""
    try:
        resolve(module, attribute)
    except (ImportError, AttributeError) as e:
        pytest.fail(f"{module}.{attribute} is gone from the installed trl ({e}); see the comment on its entry in "
                    "tests/test_trl_contract.py for the file of ours to update.")


# (module, callable, positional, keywords): the parameters our calls pass, by position (must lead the signature,
# in this order) and by name (must exist). The comment names the caller.
TRL_SIGNATURES = [
    # open_rlhf/trainers/simpo.py: SimPOTrainer.__init__ calls super().__init__ with all of these by name
    ("trl.trainer.dpo_trainer", "DPOTrainer.__init__", ("self",),
     ("model", "ref_model", "args", "data_collator", "train_dataset", "eval_dataset", "processing_class",
      "compute_metrics", "callbacks", "optimizers", "quantization_config", "peft_config")),
    # open_rlhf/trainers/simpo.py: shadowed by SimPOTrainer._compute_loss (same parameters, see the next test)
    ("trl.trainer.dpo_trainer", "DPOTrainer._compute_loss", ("self", "model", "inputs", "return_outputs"), ()),
    # open_rlhf/trainers/simpo.py, tests/test_simpo.py: called (and counted) as create_model_from_path(path, **kwargs)
    ("trl.trainer.dpo_trainer", "create_model_from_path", ("model_id",), ()),
    # open_rlhf/trainers/ppo.py: selective_log_softmax_and_entropy(logits, responses, temperature=...)
    ("trl.trainer.utils", "selective_log_softmax_and_entropy", ("logits", "index"), ("temperature",)),
    # open_rlhf/trainers/ppo.py
    ("trl.trainer.utils", "disable_dropout_in_model", ("model",), ()),
    # scripts/bench_sft.py: compute_flops_per_token(model.config, seq_len)
    ("trl.trainer.utils", "compute_flops_per_token", ("config", "seq_len"), ()),
    # open_rlhf/data.py
    ("trl.data_utils", "unpair_preference_dataset", ("dataset",), ()),
    ("trl", "maybe_extract_prompt", ("example",), ()),
    # open_rlhf/models.py, open_rlhf/stages.py
    ("trl", "get_quantization_config", ("model_args",), ()),
    ("trl", "get_peft_config", ("model_args",), ()),
    # tests/test_simpo.py
    ("trl.experimental.cpo", "CPOTrainer.cpo_loss", ("self", "policy_chosen_logps", "policy_rejected_logps"), ()),
    ("trl.experimental.cpo", "CPOTrainer.get_batch_loss_metrics", ("self", "model", "batch"), ()),
]


@pytest.mark.parametrize("module, attribute, positional, keywords", TRL_SIGNATURES,
                         ids=[f"{m}:{a}" for m, a, _, _ in TRL_SIGNATURES])
def test_trl_signature(module, attribute, positional, keywords):
    """The TRL callable still takes the parameters our code passes: ``positional`` first and in order, and every
    name in ``keywords``."""
    parameters = list(inspect.signature(resolve(module, attribute)).parameters)
    assert parameters[:len(positional)] == list(positional), f"{module}.{attribute}{parameters}"
    missing = [name for name in keywords if name not in parameters]
    assert not missing, f"{module}.{attribute} lost parameters {missing}; it has {parameters}"


def test_dpo_trainer_routes_compute_loss_through_the_shadowed_method():
    """SimPOTrainer._compute_loss takes exactly DPOTrainer._compute_loss's parameters, and TRL's
    ``DPOTrainer.compute_loss`` still calls ``self._compute_loss(model, inputs, return_outputs)``: otherwise our
    shadow would be dead code and SimPO would silently train TRL's DPO loss."""
    from trl import DPOTrainer

    from open_rlhf.trainers.simpo import SimPOTrainer

    assert (list(inspect.signature(SimPOTrainer._compute_loss).parameters)
            == list(inspect.signature(DPOTrainer._compute_loss).parameters))
    assert "self._compute_loss(model, inputs, return_outputs)" in inspect.getsource(DPOTrainer.compute_loss)
    assert SimPOTrainer.compute_loss is DPOTrainer.compute_loss  # we do not shadow the router itself


def test_dpo_trainer_sets_what_simpo_trainer_reads(tmp_path, tiny_model_dir, tokenizer):
    """The instance attributes DPOTrainer.__init__ sets and SimPOTrainer._compute_loss reads, and the outputs of
    the fused log-prob head it installs on the model (``model(..., fused_lm_head=True)``)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from open_rlhf.trainers.simpo import SimPOConfig, SimPOTrainer

    pair = {"prompt": [{"role": "user", "content": "What is 2 + 3?"}],
            "chosen": [{"role": "assistant", "content": "#### 5"}],
            "rejected": [{"role": "assistant", "content": "#### 6"}]}
    trainer = SimPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), processing_class=tokenizer,
                           train_dataset=Dataset.from_list([pair, pair]),
                           args=SimPOConfig(output_dir=str(tmp_path), report_to="none", bf16=False,
                                            gradient_checkpointing=False))
    attributes = ("beta", "label_smoothing", "aux_loss_enabled", "router_aux_loss_coef", "ref_model", "_metrics",
                  "_total_train_tokens", "_tp_size")
    missing = [name for name in attributes if name not in vars(trainer)]
    assert not missing, f"DPOTrainer.__init__ no longer sets {missing} (read by open_rlhf/trainers/simpo.py)"
    assert set(trainer._metrics) >= {"train", "eval"}  # SimPOTrainer appends to _metrics[mode][name]

    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(2)]))
    assert set(batch) >= {"input_ids", "attention_mask", "completion_mask"}  # read by SimPOTrainer._compute_loss
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    with torch.no_grad():
        outputs = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                                use_cache=False, fused_lm_head=True)
    for name in ("log_probs", "entropy", "mean_logits", "is_top1"):
        assert getattr(outputs, name, None) is not None, f"the fused LM head no longer returns {name}"
        assert getattr(outputs, name).shape == labels[:, 1:].shape, name  # one value per scored token, (2B, T-1)


def test_trl_configs_leave_bf16_unset():
    """TRL's configs default ``bf16`` to None (its `_BaseConfig`; transformers' own default is False).
    open_rlhf/config.py's `HardwareDefaultsMixin` reads None as "not set" and picks the precision from the hardware;
    with a False default it would silently never enable bf16."""
    import trl

    from open_rlhf.trainers import experimental

    configs = [trl.SFTConfig, trl.RewardConfig, trl.DPOConfig, trl.KTOConfig, trl.GRPOConfig, trl.RLOOConfig,
               experimental.orpo_classes()[0], experimental.cpo_classes()[0]]
    defaults = {c.__name__: next(f.default for f in dataclasses.fields(c) if f.name == "bf16") for c in configs}
    assert defaults == {c.__name__: None for c in configs}


def test_installed_trl_is_the_pinned_one():
    """The installed TRL is the version requirements.txt pins (1.16.0), the one the entries above were read from."""
    import trl

    pin = re.search(r"^trl==(\S+)", (REPO / "requirements.txt").read_text(), re.MULTILINE)
    assert pin, "requirements.txt has no trl== pin"
    assert trl.__version__ == pin.group(1) == "1.16.0"
