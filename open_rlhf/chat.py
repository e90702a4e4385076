"""Chat inference for the web demo: the models a user can pick, streamed replies, best-of-N with a reward model.

- `discover_models` finds every finished policy and reward model under ``runs/`` (a stage's output folder with its
  completion marker, or a merged model folder), `latest_pipeline_policy` the newest pipeline's final policy.
- `ModelPool` loads each model on first use (safetensors only, no remote code) and keeps the last few in memory.
- `stream_reply` streams one reply with transformers' `TextIteratorStreamer`, applying the model's chat template to
  the whole conversation, and reports the time to first token and tokens/s; setting its ``stop_event`` cancels it.
- `best_of_n` samples N replies in one batch and returns the one a reward model scores highest (best-of-N sampling,
  as in Nakano et al. 2021, WebGPT, and Stiennon et al. 2020, Sec. 4), through `open_rlhf.inference.strategies`.

Nothing here imports gradio: the UI is ``web_demo/app.py``.
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from open_rlhf import models, outputs
from open_rlhf.errors import ConfigError, UserError
from open_rlhf.hardware import default_device
from open_rlhf.inference.sampling import decoding_kwargs

logger = logging.getLogger(__name__)

DEFAULT_MAX_PROMPT_CHARS = 4000
DEFAULT_MAX_PROMPT_TOKENS = 1024
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")


class PromptTooLongError(UserError, ValueError):
    """A conversation over the server's prompt limits (characters or tokens)."""


@dataclass
class GenerationSettings:
    """Decoding settings of one reply (saved with every vote).

    Attributes:
        max_new_tokens (`int`): at most this many tokens are generated.
        temperature (`float`): sampling temperature; 0 means greedy decoding.
        top_p (`float`): nucleus sampling mass (Holtzman et al. 2020); 1 turns it off.
        best_of_n (`int`): 1 streams one sample; N > 1 samples N and returns the highest-scoring (needs a reward model).
    """

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    best_of_n: int = 1

    def __post_init__(self):
        if not 1 <= int(self.max_new_tokens) <= 4096:
            raise ValueError(f"max_new_tokens must be in [1, 4096], got {self.max_new_tokens}")
        if not 0 <= float(self.temperature) <= 5:
            raise ValueError(f"temperature must be in [0, 5], got {self.temperature}")
        if not 0 < float(self.top_p) <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 1 <= int(self.best_of_n) <= 16:
            raise ValueError(f"best_of_n must be in [1, 16], got {self.best_of_n}")
        self.max_new_tokens, self.best_of_n = int(self.max_new_tokens), int(self.best_of_n)
        self.temperature, self.top_p = float(self.temperature), float(self.top_p)

    def generate_kwargs(self) -> dict:
        """`model.generate` keyword arguments for these settings (`open_rlhf.inference.sampling.decoding_kwargs`)."""
        return {**decoding_kwargs(self.temperature, self.top_p), "max_new_tokens": self.max_new_tokens}

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class LoadedModel:
    """A policy ready to chat: where it came from, the model (eval mode) and its tokenizer (with a chat template)."""

    path: str
    model: torch.nn.Module
    tokenizer: object

    @property
    def stop_ids(self) -> list[int]:
        return models.stop_token_ids(self.tokenizer, self.model.generation_config)


@dataclass
class StreamUpdate:
    """The state of a reply while it streams.

    Attributes:
        text (`str`): the reply so far (special tokens removed).
        new_tokens (`int`): tokens generated so far.
        first_token_s (`float`, *optional*): seconds from the request to the first generated token.
        elapsed_s (`float`): seconds since the request.
        finished (`bool`): the last update of the reply.
        stopped (`bool`): the reply was cancelled through ``stop_event``.
    """

    text: str
    new_tokens: int
    first_token_s: float | None
    elapsed_s: float
    finished: bool = False
    stopped: bool = False

    @property
    def tokens_per_second(self) -> float | None:
        """Decoding speed after the first token (tokens / s), None before the second token."""
        if self.first_token_s is None or self.new_tokens < 2 or self.elapsed_s <= self.first_token_s:
            return None
        return (self.new_tokens - 1) / (self.elapsed_s - self.first_token_s)


# ------------------------------------------------------------------------------------------------------------
# Which models there are
# ------------------------------------------------------------------------------------------------------------

def model_kind(folder: str | Path) -> str | None:
    """``"policy"`` (a causal LM or a PEFT adapter), ``"reward"`` (a one-output sequence classifier) or None for a
    folder that holds no finished model (no config, no weights at its top level: e.g. a stage still training, whose
    weights live in ``checkpoint-N/`` until the final model is published)."""
    folder = Path(folder)
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        return None
    if (folder / "adapter_config.json").is_file():
        return "policy"
    try:
        architectures = json.loads((folder / "config.json").read_text()).get("architectures") or []
    except (OSError, json.JSONDecodeError):
        return None
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "reward"
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "policy"
    return None


def discover_models(runs_dir: str | Path = "runs", max_depth: int = 3) -> dict[str, dict[str, str]]:
    """Every finished model under ``runs_dir``, by kind.

    A folder counts when it holds a final model at its top level (`model_kind`): a stage's output behind its
    completion marker, or a merged model. Checkpoints (``checkpoint-N``) and temporary folders are skipped.

    Args:
        runs_dir: the runs folder (missing: no models).
        max_depth (`int`): how deep below ``runs_dir`` to look (``runs/<run>/<stage>/`` is depth 2).

    Returns:
        `dict`: ``{"policy": {label: path}, "reward": {label: path}}``; a label is the folder's path as shown
        (``runs/default/ppo``), newest first.
    """
    runs = Path(runs_dir)
    found: dict[str, list[tuple[float, str]]] = {"policy": [], "reward": []}
    if runs.is_dir():
        frontier = [runs]
        for _ in range(max_depth):
            children = []
            for folder in frontier:
                for child in sorted(p for p in folder.iterdir() if p.is_dir()):
                    if child.name.startswith((".", "checkpoint-")) or ".tmp" in child.name:
                        continue
                    kind = model_kind(child)
                    if kind is not None:
                        marker = child / outputs.COMPLETE_MARKER
                        stamp = (marker if marker.is_file() else child).stat().st_mtime
                        found[kind].append((stamp, str(child)))
                    else:
                        children.append(child)
            frontier = children
    return {kind: {path: path for _, path in sorted(entries, reverse=True)} for kind, entries in found.items()}


def latest_pipeline_policy(runs_dir: str | Path = "runs") -> str | None:
    """The final policy of the most recently finished pipeline run under ``runs_dir`` (``pipeline_state.json`` with a
    ``final_policy`` that holds a finished model), or None."""
    candidates = []
    for state_file in Path(runs_dir).glob("*/pipeline_state.json"):
        try:
            final = json.loads(state_file.read_text()).get("final_policy")
        except (OSError, json.JSONDecodeError):
            continue
        if final and model_kind(final) == "policy":
            candidates.append((state_file.stat().st_mtime, final))
    return max(candidates)[1] if candidates else None


def list_reports(runs_dir: str | Path = "runs") -> list[Path]:
    """Every ``<runs_dir>/*/report.md`` (and one level deeper), newest first."""
    runs = Path(runs_dir)
    reports = [*runs.glob("*/report.md"), *runs.glob("*/*/report.md")] if runs.is_dir() else []
    return sorted(reports, key=lambda p: p.stat().st_mtime, reverse=True)


# ------------------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------------------

class ModelPool:
    """Loads policies and reward models on first use and keeps the ``capacity`` most recently used in memory.

    Thread-safe: concurrent requests for one model load it once. Models are loaded with
    `open_rlhf.models.load_inference_model` (safetensors only, adapters merged) in fp32 on the CPU, bf16 on a GPU.

    Args:
        device (`str`, *optional*): where models run; default CUDA when available, else the CPU.
        capacity (`int`): models kept loaded (policies and reward models together).
    """

    def __init__(self, device: str | None = None, capacity: int = 4):
        self.device = device or default_device()
        self.capacity = capacity
        self._loaded: collections.OrderedDict[tuple[str, str], object] = collections.OrderedDict()
        self._locks: dict[tuple[str, str], threading.Lock] = collections.defaultdict(threading.Lock)
        self._lock = threading.Lock()

    def _get(self, key: tuple[str, str], load):
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            key_lock = self._locks[key]
        with key_lock:
            with self._lock:
                if key in self._loaded:
                    return self._loaded[key]
            value = load()
            with self._lock:
                self._loaded[key] = value
                while len(self._loaded) > self.capacity:
                    self._loaded.popitem(last=False)
            return value

    def policy(self, path: str) -> LoadedModel:
        """The policy at ``path`` (a folder, ``default`` or a hub id).

        Raises:
            ModelNotFoundError: when it cannot be loaded.
            ConfigError: when its tokenizer has no chat template.
        """
        def load() -> LoadedModel:
            dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
            model, tokenizer = models.load_inference_model(path, device=self.device, dtype=dtype)
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            if not tokenizer.chat_template:
                raise ConfigError(f"the tokenizer of {path} has no chat template, so it cannot chat. Fix: "
                                         "pick an instruct model or one our SFT stage saved.")
            return LoadedModel(path, model, tokenizer)

        return self._get(("policy", path), load)

    def reward_model(self, path: str):
        """The `open_rlhf.rewards.RewardModelScorer` of the reward model at ``path``."""
        from open_rlhf.rewards import RewardModelScorer

        return self._get(("reward", path), lambda: RewardModelScorer.from_pretrained(
            path, device=self.device, model_kwargs={"use_safetensors": True}))


# ------------------------------------------------------------------------------------------------------------
# Generation
# ------------------------------------------------------------------------------------------------------------

def check_prompt(tokenizer, messages: Sequence[dict], max_chars: int = DEFAULT_MAX_PROMPT_CHARS,
                 max_tokens: int = DEFAULT_MAX_PROMPT_TOKENS) -> torch.Tensor:
    """The prompt's token ids `(1, P)` (chat template applied, generation prompt added), within the limits.

    Raises:
        PromptTooLongError: when the conversation has more than ``max_chars`` characters or ``max_tokens`` tokens;
            the message says how long it is and what to do.
        ValueError: when ``messages`` is empty or does not end with a user turn.
    """
    if not messages or messages[-1].get("role") != "user":
        raise ValueError("a chat request needs a conversation that ends with a user message")
    chars = sum(len(str(m.get("content") or "")) for m in messages)
    if chars > max_chars:
        raise PromptTooLongError(f"The conversation is {chars} characters long; this server accepts at most "
                                 f"{max_chars}. Shorten the message or clear the chat.")
    ids = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    if ids.shape[-1] > max_tokens:
        raise PromptTooLongError(f"The conversation is {ids.shape[-1]} tokens long; this server accepts at most "
                                 f"{max_tokens}. Shorten the message or clear the chat.")
    return ids


class _StopOnEvent:
    """A `StoppingCriteria` that ends generation once ``event`` is set (the user pressed Stop or left)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def _counting_streamer(tokenizer, timeout: float | None):
    from transformers import TextIteratorStreamer

    class CountingStreamer(TextIteratorStreamer):
        """`TextIteratorStreamer` that also counts generated tokens and stamps the first one."""

        def __init__(self):
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=timeout)
            self.new_tokens = 0
            self.first_token_at: float | None = None

        def put(self, value):
            if not self.next_tokens_are_prompt:
                self.new_tokens += int(value.numel())
                if self.first_token_at is None:
                    self.first_token_at = time.perf_counter()
            super().put(value)

    return CountingStreamer()


def stream_reply(loaded: LoadedModel, messages: Sequence[dict], settings: GenerationSettings,
                 stop_event: threading.Event | None = None, max_chars: int = DEFAULT_MAX_PROMPT_CHARS,
                 max_tokens: int = DEFAULT_MAX_PROMPT_TOKENS, timeout: float | None = 600.0,
                 ) -> Iterator[StreamUpdate]:
    """Stream one assistant reply to a conversation.

    Generation runs in a background thread (`model.generate` with a `TextIteratorStreamer`); this generator yields a
    `StreamUpdate` for every piece of text and a last one with ``finished=True``. Closing the generator early (the
    client went away, or Gradio cancelled the event) or setting ``stop_event`` stops generation within one token.

    Args:
        loaded: the policy (`ModelPool.policy`).
        messages: the conversation, a list of ``{"role", "content"}`` dicts ending with a user turn (a system turn
            first is optional; without one the chat template's default applies).
        settings: decoding settings.
        stop_event (`threading.Event`, *optional*): set it to cancel.
        max_chars, max_tokens: prompt limits (`check_prompt`).
        timeout (`float`, *optional*): seconds to wait for the next token before giving up.

    Raises:
        PromptTooLongError: over the prompt limits (before anything is generated).
        RuntimeError: when generation itself fails; the original error is chained.
    """
    start = time.perf_counter()
    stop_event = stop_event or threading.Event()
    tokenizer = loaded.tokenizer
    input_ids = check_prompt(tokenizer, messages, max_chars, max_tokens).to(loaded.model.device)
    streamer = _counting_streamer(tokenizer, timeout)
    failure: list[BaseException] = []

    def run():
        from transformers import StoppingCriteriaList

        try:
            with torch.inference_mode():
                loaded.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                      streamer=streamer, eos_token_id=loaded.stop_ids,
                                      pad_token_id=tokenizer.pad_token_id,
                                      stopping_criteria=StoppingCriteriaList([_StopOnEvent(stop_event)]),
                                      **settings.generate_kwargs())
        except BaseException as error:  # reported to the consumer below, never lost in the thread
            failure.append(error)
            streamer.end()

    def update(text: str, finished: bool = False) -> StreamUpdate:
        first = None if streamer.first_token_at is None else streamer.first_token_at - start
        return StreamUpdate(text, streamer.new_tokens, first, time.perf_counter() - start, finished,
                            stopped=finished and stop_event.is_set())

    thread = threading.Thread(target=run, name="open-rlhf-generate", daemon=True)
    thread.start()
    text, cancelled = "", True
    try:
        for piece in streamer:
            if piece:
                text += piece
                yield update(text)
        thread.join()
        if failure:
            raise RuntimeError(f"generation failed: {type(failure[0]).__name__}: {failure[0]}") from failure[0]
        cancelled = stop_event.is_set()
        yield update(text, finished=True)
    finally:
        stop_event.set()  # a consumer that stops early (GeneratorExit) stops the thread too
        thread.join(timeout=30)
        logger.info("reply from %s: %d tokens in %.1f s%s", loaded.path, streamer.new_tokens,
                    time.perf_counter() - start, " (cancelled)" if cancelled and not failure else "")


@dataclass
class BestOfN:
    """The result of `best_of_n`: the chosen reply, its reward, every sample's reward, timing."""

    text: str
    score: float
    scores: list[float]
    texts: list[str]
    new_tokens: int
    elapsed_s: float


def best_of_n(loaded: LoadedModel, messages: Sequence[dict], settings: GenerationSettings, scorer,
              max_chars: int = DEFAULT_MAX_PROMPT_CHARS, max_tokens: int = DEFAULT_MAX_PROMPT_TOKENS) -> BestOfN:
    """Sample ``settings.best_of_n`` replies in one batch and return the one ``scorer`` rates highest.

    Best-of-N (rejection) sampling: ``y* = argmax_{y_i ~ pi(.|x), i=1..N} r(x, y_i)`` (Nakano et al. 2021, WebGPT,
    Sec. 3; Stiennon et al. 2020, Sec. 4). With temperature 0 all N samples would be the same greedy reply, so
    sampling uses temperature 1 in that case.

    Args:
        scorer: a reward function ``scorer(prompts, completions) -> list[float]`` (`RewardModelScorer`).

    Returns:
        `BestOfN`.

    Raises:
        PromptTooLongError: over the prompt limits.
    """
    from open_rlhf.inference import strategies

    start = time.perf_counter()
    check_prompt(loaded.tokenizer, messages, max_chars, max_tokens)
    temperature, top_p = (settings.temperature, settings.top_p) if settings.temperature > 0 else (1.0, 1.0)
    (result,) = strategies.best_of_n(loaded.model, loaded.tokenizer, [list(messages)], scorer, n=settings.best_of_n,
                                     max_new_tokens=settings.max_new_tokens, temperature=temperature, top_p=top_p,
                                     batch_size=settings.best_of_n)
    return BestOfN(result.response, result.score, result.scores, result.candidates, result.num_tokens,
                   time.perf_counter() - start)


def interleave(streams: Sequence[Iterator]) -> Iterator[tuple[int, object, BaseException | None]]:
    """Consume several iterators at once (one thread each) and yield ``(index, item, None)`` as items arrive, or
    ``(index, None, error)`` when iterator ``index`` raised; ends when all have ended. The arena streams its two
    answers together this way. To stop early, stop the underlying streams (`stream_reply`'s ``stop_event``)."""
    items: queue.Queue = queue.Queue()
    done = object()

    def pump(index: int, stream: Iterator) -> None:
        try:
            for item in stream:
                items.put((index, item, None))
        except BaseException as error:
            items.put((index, None, error))
        finally:
            items.put((index, done, None))

    threads = [threading.Thread(target=pump, args=(i, s), daemon=True) for i, s in enumerate(streams)]
    for thread in threads:
        thread.start()
    running = len(threads)
    while running:
        index, item, error = items.get()
        if item is done:
            running -= 1
        else:
            yield index, item, error
