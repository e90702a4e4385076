"""SimPO: the loss against hand-computed values and TRL's experimental CPO, the trainer on a tiny model (no
reference model is loaded or run), SimPOConfig parsing; the guarded `trl.experimental` accessors."""

from __future__ import annotations

import math
import pickle
import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset

from open_rlhf.trainers.simpo import SimPOConfig, SimPOTrainer, simpo_loss

REPO = Path(__file__).resolve().parents[1]
TRAINER_ARGS = dict(report_to="none", gradient_checkpointing=False, bf16=False, save_strategy="no")


def cpo_or_skip():
    from open_rlhf.trainers import experimental

    try:
        return experimental.cpo_classes()
    except ImportError as e:
        pytest.skip(f"trl.experimental.cpo unavailable: {e}")


def preference_pairs() -> Dataset:
    """Four conversational pairs (our data layer's format); chosen and rejected differ in length, so length
    normalisation matters."""
    def pair(question, chosen, rejected):
        return {"prompt": [{"role": "user", "content": question}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}]}

    return Dataset.from_list([
        pair("What is 2 + 3?", "2 + 3 = 5.\n#### 5", "#### 6"),
        pair("What is 7 - 4?", "#### 3", "7 - 4 = 2, so the answer is 2.\n#### 2"),
        pair("What is 6 * 2?", "6 * 2 = 12.\n#### 12", "6 * 2 = 8.\n#### 8"),
        pair("What is 9 + 1?", "#### 10", "9 + 1 = 11, I think.\n#### 11"),
    ])


def load_tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


# ---------------------------------------------------------------------------------------------- simpo_loss


def test_simpo_loss_hand_computed():
    """beta = 2; pair 1: chosen -1.0, rejected -1.5 nats/token; pair 2: chosen -2.0, rejected -1.0.

    gamma = 0: z1 = 2 * (-1.0 + 1.5) - 0 = 1  -> loss softplus(-1) = log(1 + e^-1) = 0.3132617
               z2 = 2 * (-2.0 + 1.0) - 0 = -2 -> loss log(1 + e^2) = 2.1269280
    gamma = 1 shifts z by -1: z1 = 0 -> log 2 = 0.6931472;  z2 = -3 -> log(1 + e^3) = 3.0485874
    rewards = beta * logps: chosen (-2, -4), rejected (-3, -2), whatever gamma is.
    d loss / d chosen_logps = -beta * sigmoid(-z): at gamma = 1, pair 1: -2 * 0.5 = -1.0; pair 2:
    -2 * sigmoid(3) = -1.9052575; d / d rejected is the opposite.
    """
    rejected = torch.tensor([-1.5, -1.0])
    expected = {0.0: [math.log1p(math.exp(-1)), math.log1p(math.exp(2))],
                1.0: [math.log(2), math.log1p(math.exp(3))]}
    for gamma, losses_expected in expected.items():
        chosen = torch.tensor([-1.0, -2.0], requires_grad=True)
        losses, chosen_rewards, rejected_rewards = simpo_loss(chosen, rejected, beta=2.0, gamma=gamma)
        torch.testing.assert_close(losses, torch.tensor(losses_expected), rtol=0, atol=1e-6)
        torch.testing.assert_close(chosen_rewards, torch.tensor([-2.0, -4.0]))
        torch.testing.assert_close(rejected_rewards, torch.tensor([-3.0, -2.0]))
        assert not chosen_rewards.requires_grad
    losses.sum().backward()
    torch.testing.assert_close(chosen.grad, torch.tensor([-1.0, -2 / (1 + math.exp(-3))]), rtol=0, atol=1e-6)


def test_simpo_loss_label_smoothing():
    """eps = 0.1, beta = 2, gamma = 0, z = 2 * (-1.0 + 1.5) = 1:
    (1 - eps) * log(1 + e^-1) + eps * log(1 + e^1) = 0.9 * 0.3132617 + 0.1 * 1.3132617 = 0.4132617
    (= softplus(-z) + eps * z, since softplus(z) = z + softplus(-z)).
    """
    losses, _, _ = simpo_loss(torch.tensor([-1.0]), torch.tensor([-1.5]), beta=2.0, gamma=0.0, label_smoothing=0.1)
    torch.testing.assert_close(losses, torch.tensor([math.log1p(math.exp(-1)) + 0.1]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("chosen, rejected, kwargs, match", [
    (torch.zeros(3), torch.zeros(2), {}, "shape"),
    (torch.zeros(2, 1), torch.zeros(2, 1), {}, "shape"),
    (torch.zeros(2), torch.zeros(2), {"beta": 0.0}, "beta"),
    (torch.zeros(2), torch.zeros(2), {"label_smoothing": 0.5}, "label_smoothing"),
])
def test_simpo_loss_rejects_bad_inputs(chosen, rejected, kwargs, match):
    with pytest.raises(ValueError, match=match):
        simpo_loss(chosen, rejected, **{"beta": 2.0, "gamma": 1.0, **kwargs})


@pytest.mark.parametrize("beta, gamma, label_smoothing", [(2.0, 1.0, 0.0), (2.5, 0.3, 0.0), (10.0, 3.0, 0.2)])
def test_simpo_loss_matches_trl_cpo_simpo(beta, gamma, label_smoothing):
    """Differential: TRL's `CPOTrainer.cpo_loss` with loss_type="simpo" (cpo_alpha only adds an NLL term outside
    it) on the same length-averaged log-probs; its `simpo_gamma` is the same gamma (it divides by beta inside)."""
    _, CPOTrainer = cpo_or_skip()
    stand_in = SimpleNamespace(alpha=0.0, beta=beta, loss_type="simpo", simpo_gamma=gamma,
                               label_smoothing=label_smoothing, accelerator=SimpleNamespace(device=torch.device("cpu")))
    generator = torch.Generator().manual_seed(0)
    chosen = -3 * torch.rand(16, generator=generator)
    rejected = -3 * torch.rand(16, generator=generator)
    ours = simpo_loss(chosen, rejected, beta, gamma, label_smoothing)
    theirs = CPOTrainer.cpo_loss(stand_in, chosen, rejected)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------- SimPOTrainer


def test_simpo_trainer_trains_without_reference_model(tmp_path, tiny_model_dir, tokenizer, monkeypatch):
    """2 steps and an evaluation: loss finite, parameters changed, SimPO metrics logged; no reference model is
    loaded (no call to TRL's model loader) or run (exactly one policy forward per step or eval batch)."""
    import trl.trainer.dpo_trainer as trl_dpo_trainer

    loads = []
    load = trl_dpo_trainer.create_model_from_path
    monkeypatch.setattr(trl_dpo_trainer, "create_model_from_path", lambda *a, **k: loads.append(a) or load(*a, **k))
    model = load_tiny(tiny_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    forwards = []
    model.register_forward_hook(lambda *_: forwards.append(1))
    args = SimPOConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3,
                       logging_steps=1, **TRAINER_ARGS)
    trainer = SimPOTrainer(model=model, args=args, train_dataset=preference_pairs(),
                           eval_dataset=preference_pairs().select(range(2)), processing_class=tokenizer)
    trainer.train()

    assert trainer.ref_model is None and loads == [] and len(forwards) == 2
    metrics = trainer.evaluate()
    assert len(forwards) == 3 and math.isfinite(metrics["eval_loss"]) and "eval_rewards/margins" in metrics
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(math.isfinite(h["loss"]) for h in logs)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected"):
        assert math.isfinite(logs[0][key]), key
    # rewards are beta * average log-probs (nats/token), so bounded by beta * log(vocab) for a random model
    assert -2.0 * math.log(len(tokenizer)) - 1 < logs[0]["rewards/chosen"] < 0
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_simpo_trainer_loads_only_the_policy_from_a_path(tmp_path, tiny_model_dir, tokenizer, monkeypatch):
    """A model path: TRL's loader runs once (the policy), never for a reference model."""
    import trl.trainer.dpo_trainer as trl_dpo_trainer

    loads = []
    load = trl_dpo_trainer.create_model_from_path

    def counting_load(*args, **kwargs):
        loads.append(args)
        return load(*args, **kwargs)

    monkeypatch.setattr(trl_dpo_trainer, "create_model_from_path", counting_load)
    trainer = SimPOTrainer(model=str(tiny_model_dir), args=SimPOConfig(output_dir=str(tmp_path), **TRAINER_ARGS),
                           train_dataset=preference_pairs(), processing_class=tokenizer)
    assert trainer.ref_model is None and loads == [(str(tiny_model_dir),)]
    assert trl_dpo_trainer.create_model_from_path is counting_load  # TRL's module is restored after __init__


def test_simpo_trainer_peft_policy_keeps_no_reference_adapter(tmp_path, tiny_model_dir, tokenizer):
    """A policy already wrapped in PEFT: DPOTrainer would add a frozen "ref" copy of the adapter; SimPO drops it."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(load_tiny(tiny_model_dir), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    trainer = SimPOTrainer(model=model, args=SimPOConfig(output_dir=str(tmp_path), **TRAINER_ARGS),
                           train_dataset=preference_pairs(), processing_class=tokenizer)
    assert trainer.ref_model is None and list(trainer.model.peft_config) == ["default"]


@pytest.mark.parametrize("cpo_alpha", [0.0, 0.5])
def test_simpo_trainer_loss_matches_trl_cpo_trainer(tmp_path, tiny_model_dir, tokenizer, cpo_alpha):
    """Differential, whole loss: on one collated batch, SimPOTrainer's loss (fused log-prob head) equals TRL's
    experimental CPOTrainer's (loss_type="simpo", full logits) fed the same tokens and labels: plain SimPO
    (cpo_alpha 0) and CPO-SimPO (the chosen tokens' NLL added with weight cpo_alpha)."""
    _, CPOTrainer = cpo_or_skip()
    from open_rlhf.trainers.experimental import cpo_config_class

    model = load_tiny(tiny_model_dir)
    common = dict(beta=2.5, simpo_gamma=0.7, label_smoothing=0.1, cpo_alpha=cpo_alpha, **TRAINER_ARGS)
    ours = SimPOTrainer(model=model, args=SimPOConfig(output_dir=str(tmp_path / "simpo"), **common),
                        train_dataset=preference_pairs(), processing_class=tokenizer)
    cpo = CPOTrainer(model=model, processing_class=tokenizer, train_dataset=preference_pairs(),
                     args=cpo_config_class()(output_dir=str(tmp_path / "cpo"), loss_type="simpo", **common))
    batch = ours.data_collator([ours.train_dataset[i] for i in range(4)])  # rows: 4 chosen, then 4 rejected
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    cpo_batch = {}
    for name, rows in (("chosen", slice(0, 4)), ("rejected", slice(4, 8))):
        cpo_batch[f"{name}_input_ids"] = batch["input_ids"][rows]
        cpo_batch[f"{name}_attention_mask"] = batch["attention_mask"][rows]
        cpo_batch[f"{name}_labels"] = labels[rows]
    model.eval()
    with torch.no_grad():
        our_loss = ours.compute_loss(model, ours._prepare_inputs(batch))
        cpo_loss, cpo_metrics = cpo.get_batch_loss_metrics(model, cpo._prepare_inputs(cpo_batch))
    torch.testing.assert_close(our_loss, cpo_loss, rtol=1e-5, atol=1e-5)
    for key in ("logps/chosen", "logps/rejected", "rewards/margins"):
        assert ours._metrics["eval"][key][0] == pytest.approx(cpo_metrics[key], abs=1e-5), key
    if cpo_alpha:  # the NLL term is really in the loss (not a zero that happens to match)
        nll = ours._metrics["eval"]["nll_loss"][0]
        assert nll > 0.1 and nll == pytest.approx(cpo_metrics["nll_loss"], abs=1e-5)


def test_simpo_trainer_use_liger_kernel_keeps_the_simpo_loss(tmp_path, tiny_model_dir, tokenizer):
    """``use_liger_kernel=True`` does not swap the loss: TRL 1.16's DPOTrainer has no Liger loss path, it only lets
    transformers patch the layers (at `train`) with fused linear cross-entropy forced off so its fused log-prob head
    survives. So on one batch the loss equals the loss without the flag (SimPO's, checked against CPO above). A TRL
    that routes the flag to a Liger DPO loss fails here; SimPOConfig must then reject ``use_liger_kernel``."""
    model = load_tiny(tiny_model_dir)
    model.eval()
    losses = {}
    for liger in (False, True):
        args = SimPOConfig(output_dir=str(tmp_path / str(liger)), use_liger_kernel=liger, **TRAINER_ARGS)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*use_liger_kernel", category=FutureWarning)
            trainer = SimPOTrainer(model=model, args=args, train_dataset=preference_pairs(), processing_class=tokenizer)
        batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
        with torch.no_grad():
            losses[liger] = trainer.compute_loss(model, batch)
    assert trainer.args.liger_kernel_config == {"fused_linear_cross_entropy": False}
    torch.testing.assert_close(losses[True], losses[False], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- SimPOConfig


def test_simpo_config_parses_yaml_and_defaults(tmp_path):
    from trl import ModelConfig, TrlParser

    from open_rlhf.config import ScriptArguments

    parser = TrlParser((ScriptArguments, SimPOConfig, ModelConfig))
    config = tmp_path / "simpo.yaml"
    config.write_text("# Trainer\nbeta: 2.5\nsimpo_gamma: 1.4\nlabel_smoothing: 0.1\nreport_to: none\n")
    _, args, _ = parser.parse_args_and_config(args=["--config", str(config), "--output_dir", str(tmp_path)])
    assert (args.beta, args.simpo_gamma, args.label_smoothing) == (2.5, 1.4, 0.1)
    defaults = SimPOConfig(output_dir=str(tmp_path))
    assert (defaults.beta, defaults.simpo_gamma) == (2.0, 1.0)  # the authors' gamma / beta = 0.5 starting point


@pytest.mark.parametrize("field, value", [("precompute_ref_log_probs", True), ("sync_ref_model", True),
                                          ("loss_type", "ipo"), ("ld_alpha", 0.5), ("beta", 0.0),
                                          ("label_smoothing", 0.5)])
def test_simpo_config_rejects_options_without_effect(tmp_path, field, value):
    with pytest.raises(ValueError, match=f"SimPOConfig.{field}"):
        SimPOConfig(output_dir=str(tmp_path), **{field: value})


def test_simpo_trainer_rejects_a_dpo_config(tmp_path, tiny_model_dir, tokenizer):
    from open_rlhf.config import DPOConfig

    with pytest.raises(TypeError, match="SimPOConfig"):
        SimPOTrainer(model=load_tiny(tiny_model_dir), args=DPOConfig(output_dir=str(tmp_path)),
                     train_dataset=preference_pairs(), processing_class=tokenizer)


# ---------------------------------------------------------------------------------------------- trl.experimental


def test_experimental_pin_matches_requirements():
    from open_rlhf.trainers.experimental import TRL_PINNED_VERSION

    pin = re.search(r"^trl==(\S+)", (REPO / "requirements.txt").read_text(), re.MULTILINE)
    assert pin and pin.group(1) == TRL_PINNED_VERSION


def test_experimental_import_failure_names_the_pin():
    from open_rlhf.trainers.experimental import TRL_PINNED_VERSION, _import_experimental

    with pytest.raises(ImportError, match=re.escape(f"trl=={TRL_PINNED_VERSION}")):
        _import_experimental("no_such_trainer", ("NoSuchConfig",))


def test_orpo_config_class_cpu_fallback_parses_and_pickles(tmp_path):
    from open_rlhf.config import ScriptArguments
    from open_rlhf.hardware import accelerator_available
    from open_rlhf.trainers import experimental

    try:
        TRLORPOConfig, _ = experimental.orpo_classes()
    except ImportError as e:
        pytest.skip(f"trl.experimental.orpo unavailable: {e}")
    from trl import ModelConfig, TrlParser

    ORPOConfig = experimental.orpo_config_class()
    assert experimental.ORPOConfig is ORPOConfig and issubclass(ORPOConfig, TRLORPOConfig)
    _, args, _ = TrlParser((ScriptArguments, ORPOConfig, ModelConfig)).parse_args_and_config(
        args=["--output_dir", str(tmp_path), "--beta", "0.25", "--report_to", "none"])
    assert isinstance(args, ORPOConfig) and args.beta == 0.25  # beta = lambda of the ORPO paper
    assert args.use_cpu == (not accelerator_available())
    restored = pickle.loads(pickle.dumps(args))  # the Trainer saves its args as training_args.bin
    assert type(restored) is ORPOConfig and restored.beta == 0.25
