"""The open_rlhf web demo: chat with the trained policies, compare them in an arena whose votes become preference
data, train a reward model or DPO policy on those votes, and read the runs' reports.

    python web_demo/app.py                                   # the latest finished pipeline policy, else the default model
    python web_demo/app.py --model runs/default/ppo --model runs/default/sft --reward_model runs/default/reward
    python web_demo/app.py --host 0.0.0.0 --auth user:secret # reachable from other machines: say so explicitly

Four tabs on http://127.0.0.1:7860 (Gradio Blocks):
- Chat: streamed multi-turn replies with the model's chat template, system prompt, temperature / top-p / max new
  tokens, stop, regenerate, clear, a model picker over every ``--model`` and every finished model under ``runs/``,
  time to first token and tokens/s; with a reward model, best-of-N decoding (sample N, keep the highest reward).
- Arena: one prompt, two anonymous policies side by side (two samples of one policy when there is only one), a vote
  (A better / B better / tie / both bad) that reveals who was who, and a Bradley-Terry leaderboard of all votes.
- Feedback: the votes as a table, a download, and a background job that trains a reward model or DPO on them with
  the stage scripts (live progress and loss curve, stop); the finished model joins the model picker.
- Runs: every ``runs/*/report.md`` with its plots.

Every vote is one line of ``<feedback_dir>/votes-<UTC date>.jsonl`` in TRL's conversational preference format
(`open_rlhf.arena`), appended and fsynced before the vote is acknowledged; ``train_dpo.py --dataset_name feedback/``
reads the folder as it is. The API (``gradio_client``): ``/chat`` (a message in, the reply streamed out),
``/arena``, ``/vote``, ``/train``, ``/job_status``, ``/models``.
"""

import argparse
import collections
import json
import logging
import os
import random
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: this may run with no network at all
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python web_demo/app.py` from a plain checkout

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402

from open_rlhf import arena, chat, jobs  # noqa: E402
from open_rlhf.errors import UserError  # noqa: E402

logger = logging.getLogger("open_rlhf.web_demo")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
VOTE_LABELS = {"a_better": "A is better", "b_better": "B is better", "tie": "Tie", "both_bad": "Both are bad"}


def _text(content) -> str:
    """The text of a Gradio chat message's content (a string, or a list of ``{"type": "text", "text"}`` parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "")
    if isinstance(content, (list, tuple)):
        return "".join(_text(part) for part in content)
    return "" if content is None else str(content)


def conversation(history: list, system_prompt: str = "") -> list[dict]:
    """Gradio chat history -> the model's messages ``[{"role", "content"}]``, a system turn first if given."""
    messages = [{"role": "system", "content": system_prompt.strip()}] if system_prompt and system_prompt.strip() else []
    for message in history or []:
        role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
        content = message.get("content") if isinstance(message, dict) else getattr(message, "content", None)
        if role in ("user", "assistant"):
            messages.append({"role": role, "content": _text(content)})
    return messages


def stats_line(update: chat.StreamUpdate | None, model: str, extra: str = "") -> str:
    if update is None:
        return ""
    parts = [f"`{model}`"]
    if update.first_token_s is not None:
        parts.append(f"first token {update.first_token_s:.2f} s")
    speed = update.tokens_per_second
    if speed is not None:
        parts.append(f"{speed:.1f} tokens/s")
    parts.append(f"{update.new_tokens} tokens in {update.elapsed_s:.1f} s")
    if update.stopped:
        parts.append("stopped")
    return " · ".join(parts) + (f" · {extra}" if extra else "")


class Demo:
    """The server's state and the handlers of the four tabs (no Gradio objects: `build_ui` wires them)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.runs_dir = Path(args.runs_dir)
        self.pool = chat.ModelPool(device=args.device, capacity=args.max_loaded_models)
        self.votes = arena.VoteLog(args.feedback_dir)
        self.explicit = list(args.model or [])
        self.explicit_rewards = list(args.reward_model or [])
        self.job: jobs.TrainingJob | None = None
        self._job_lock = threading.Lock()
        self.rng = random.Random(args.seed)

    # -------------------------------------------------------------------------------------------- models
    def offered(self) -> tuple[list[str], list[str]]:
        """The pickers' choices, from one walk of ``runs/``: the policies (the ``--model``s, else the latest pipeline
        policy; then every finished policy under ``runs/``; then ``default``, the embedded default model) and the
        reward models (the ``--reward_model``s, then every finished one under ``runs/``)."""
        found = chat.discover_models(self.runs_dir)
        names = list(self.explicit)
        if not names:
            latest = chat.latest_pipeline_policy(self.runs_dir)
            if latest:
                names.append(latest)
        names += [*found["policy"], "default"]
        return self._unique(names), self._unique(self.explicit_rewards + list(found["reward"]))

    def policies(self) -> list[str]:
        return self.offered()[0]

    def reward_models(self) -> list[str]:
        return self.offered()[1]

    @staticmethod
    def _unique(names: list[str]) -> list[str]:
        seen, out = set(), []
        for name in names:
            key = "default" if name == "default" else os.path.realpath(name)
            if key not in seen:
                seen.add(key)
                out.append(name)
        return out

    def settings(self, temperature, top_p, max_new_tokens, best_of_n=1) -> chat.GenerationSettings:
        return chat.GenerationSettings(max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                                       top_p=float(top_p), best_of_n=int(best_of_n))

    def limits(self) -> dict:
        return {"max_chars": self.args.max_prompt_chars, "max_tokens": self.args.max_prompt_tokens}

    # -------------------------------------------------------------------------------------------- chat
    def reply(self, messages: list[dict], model: str, settings: chat.GenerationSettings, reward_model: str | None,
              stop_event: threading.Event) -> Iterator[tuple[str, str]]:
        """``(reply so far, stats line)`` while one reply is generated (streamed, or best-of-N at once)."""
        loaded = self.pool.policy(self.check_model(model))
        if settings.best_of_n > 1:
            if not reward_model:
                raise UserError("best-of-N needs a reward model: pick one (or start the demo with --reward_model).")
            self.check_model(reward_model, "reward model")
            yield "", f"`{model}` · sampling {settings.best_of_n} replies, scoring them with `{reward_model}` ..."
            result = chat.best_of_n(loaded, messages, settings, self.pool.reward_model(reward_model), **self.limits())
            scores = ", ".join(f"{s:.3f}" for s in result.scores)
            yield result.text, (f"`{model}` · best of {settings.best_of_n} by `{reward_model}`: reward "
                                f"**{result.score:.3f}** (all: {scores}) · {result.new_tokens} tokens in "
                                f"{result.elapsed_s:.1f} s")
            return
        update = None
        for update in chat.stream_reply(loaded, messages, settings, stop_event=stop_event, **self.limits()):
            yield update.text, stats_line(update, model)

    def chat_turn(self, history, model, system_prompt, temperature, top_p, max_new_tokens, best_of_n, reward_model):
        """Stream the assistant's reply to the last user message of ``history`` (the Chat tab)."""
        history = list(history or [])
        messages = conversation(history, system_prompt)
        history.append({"role": "assistant", "content": ""})
        stop_event = threading.Event()
        try:
            settings = self.settings(temperature, top_p, max_new_tokens, best_of_n)
            for text, stats in self.reply(messages, model, settings, reward_model, stop_event):
                history[-1] = {"role": "assistant", "content": text}
                yield history, stats
        except (UserError, ValueError) as error:  # prompt too long, bad setting, missing model: say so in the chat
            history[-1] = {"role": "assistant", "content": f"Error: {error}"}
            yield history, f"Error: {error}"
        except Exception as error:  # a crashing generation is shown in the chat; the page and server stay up
            logger.exception("generation failed")
            history[-1] = {"role": "assistant", "content": f"Error: generation failed: {type(error).__name__}: {error}"}
            yield history, "Error: generation failed (the server log has the traceback)"
        finally:
            stop_event.set()

    def api_chat(self, message: str, model: str = "", system_prompt: str = "", temperature: float = 0.7,
                 top_p: float = 0.9, max_new_tokens: int = 256) -> Iterator[str]:
        """One user message in, the assistant's reply out (streamed: every partial reply, then the full one).

        An empty ``model`` is the picker's default. Errors (prompt too long, unknown model) raise a `gradio.Error`
        that the client receives with its message.
        """
        stop_event = threading.Event()
        try:
            settings = self.settings(temperature, top_p, max_new_tokens)
            messages = conversation([{"role": "user", "content": message}], system_prompt)
            for text, _ in self.reply(messages, model or self.policies()[0], settings, None, stop_event):
                yield text
        except (UserError, ValueError) as error:
            raise gr.Error(str(error)) from error
        finally:
            stop_event.set()

    # -------------------------------------------------------------------------------------------- arena
    def arena_pair(self) -> tuple[str, str]:
        """Two different policies at random, A/B order random; one policy twice when there is only one."""
        names = self.policies()
        if self.explicit or len(names) > 2:  # the default model joins only when it is all there is, or asked for
            names = [n for n in names if n != "default" or "default" in self.explicit] or names
        if len(names) == 1:
            return names[0], names[0]
        pair = self.rng.sample(names, 2)
        return pair[0], pair[1]

    def arena_round(self, prompt, system_prompt, temperature, top_p, max_new_tokens):
        """Stream both anonymous answers to ``prompt``; the state remembers who is who until the vote."""
        if not (prompt or "").strip():
            yield None, "", "", "Error: Type a prompt first."
            return
        model_a, model_b = self.arena_pair()
        messages = conversation([{"role": "user", "content": prompt}], system_prompt)
        try:
            settings = self.settings(temperature, top_p, max_new_tokens)
            if model_a == model_b and settings.temperature == 0:
                settings = self.settings(0.7, top_p, max_new_tokens)  # two greedy samples of one model are one answer
        except ValueError as error:
            yield None, "", "", f"Error: {error}"
            return
        state = {"prompt": messages, "model_a": model_a, "model_b": model_b, "answers": ["", ""],
                 "generation": settings.as_dict(), "voted": False}
        events = [threading.Event(), threading.Event()]
        texts, errors = ["", ""], [None, None]
        try:
            streams = [chat.stream_reply(self.pool.policy(m), messages, settings, stop_event=e, **self.limits())
                       for m, e in zip((model_a, model_b), events, strict=True)]
            status = "Both models are answering ..."
            for index, update, error in chat.interleave(streams):
                if error is not None:
                    errors[index] = error
                    texts[index] = f"Error: {error}"
                else:
                    texts[index] = update.text
                yield None, texts[0], texts[1], status
        except (UserError, ValueError) as error:
            yield None, texts[0], texts[1], f"Error: {error}"
            return
        except Exception as error:
            logger.exception("arena generation failed")
            yield None, texts[0], texts[1], f"Error: generation failed: {type(error).__name__}: {error}"
            return
        finally:
            for event in events:
                event.set()
        if any(errors):
            yield None, texts[0], texts[1], "Error: A model failed to answer; no vote for this round."
            return
        state["answers"] = texts
        yield state, texts[0], texts[1], "Which answer is better? The models are revealed after your vote."

    def vote(self, vote: str, state: dict | None) -> tuple[dict | None, str, dict]:
        """Record ``vote`` on the current round (one fsynced line), then reveal the models."""
        if not state or state.get("voted"):
            return state, "Error: No round to vote on: ask a prompt first.", gr.update()
        try:
            record = arena.vote_record(state["prompt"], state["answers"][0], state["answers"][1], state["model_a"],
                                       state["model_b"], vote, state["generation"])
        except ValueError as error:
            return state, f"Error: {error}", gr.update()
        path = self.votes.append(record)
        state = {**state, "voted": True}
        reveal = (f"**You voted: {VOTE_LABELS[vote]}** (saved to `{path}`)\n\n"
                  f"Model A: `{state['model_a']}` · Model B: `{state['model_b']}`")
        if state["model_a"] == state["model_b"]:
            reveal += " (two samples of one model: a training pair, but no rating for the leaderboard)"
        return state, reveal, gr.update(interactive=False)

    def api_vote(self, vote: str, state: dict | None):
        state, reveal, _ = self.vote(vote, state)
        if reveal.startswith("Error:"):
            raise gr.Error(reveal.removeprefix("Error:").strip())
        return state, reveal

    def leaderboard(self) -> pd.DataFrame:
        rows = arena.leaderboard(arena.read_votes(self.votes.folder), bootstrap_rounds=self.args.bootstrap_rounds)
        columns = ["model", "rating", "95% CI", "votes", "wins", "losses", "ties", "elo"]
        table = [{"model": r["model"], "rating": round(r["rating"]),
                  "95% CI": "" if r["ci_low"] is None else f"{r['ci_low']:.0f} – {r['ci_high']:.0f}",
                  "votes": r["votes"], "wins": r["wins"], "losses": r["losses"], "ties": r["ties"],
                  "elo": round(r["elo"])} for r in rows]
        return pd.DataFrame(table, columns=columns)

    # -------------------------------------------------------------------------------------------- feedback
    def votes_table(self) -> pd.DataFrame:
        columns = ["time (UTC)", "vote", "model A", "model B", "prompt", "chosen", "rejected"]
        rows = []
        for v in arena.read_votes(self.votes.folder):
            last_user = next((m["content"] for m in reversed(v["prompt"]) if m["role"] == "user"), "")
            rows.append([v["timestamp"], v["vote"], v["model_a"], v["model_b"], last_user[:200],
                         _text(v["chosen"][-1]["content"])[:200], _text(v["rejected"][-1]["content"])[:200]])
        return pd.DataFrame(rows, columns=columns)

    def download_votes(self) -> str | None:
        """All votes as one JSON Lines file (a copy in a temporary folder; the originals are never touched)."""
        votes = arena.read_votes(self.votes.folder)
        if not votes:
            raise gr.Error("No votes yet: vote in the Arena first.")
        out = Path(tempfile.mkdtemp(prefix="open-rlhf-votes-")) / "votes.jsonl"
        out.write_text("".join(json.dumps(v, ensure_ascii=False) + "\n" for v in votes), encoding="utf-8")
        return str(out)

    def start_job(self, kind: str, model: str, max_steps, learning_rate, beta) -> str:
        with self._job_lock:
            if self.job is not None and self.job.poll().state == "running":
                raise gr.Error("A training job is already running: stop it or wait for it to finish.")
            votes = arena.read_votes(self.votes.folder)
            decisive = sum(v["vote"] in arena.DECISIVE_VOTES for v in votes)
            if not decisive:
                raise gr.Error("No decisive votes yet (A better / B better): vote in the Arena first.")
            kind = {"DPO policy": "dpo", "reward model": "reward"}.get(kind, kind)
            try:
                self.check_model(model)
            except UserError as error:
                raise gr.Error(str(error)) from error
            self.job = jobs.TrainingJob.start(kind, model, str(self.votes.folder), runs_dir=self.runs_dir,
                                              max_steps=int(max_steps), learning_rate=float(learning_rate),
                                              beta=float(beta), batch_size=min(4, decisive))
            return f"started: {kind} on {decisive} decisive votes from `{model}` -> `{self.job.output_dir}`"

    def job_status(self) -> str:
        if self.job is None:
            return "no job yet"
        return self.job.poll().describe()

    def job_view(self, known: list | None):
        """Status, loss curve and log of the current job; the model pickers when their choices changed since
        ``known`` (this browser session's last lists), which is how a finished model joins the pickers."""
        lists = list(self.offered())
        pickers = [gr.update(choices=lists[0]), gr.update(choices=lists[0]), gr.update(choices=lists[1])]
        if known == lists:
            pickers = [gr.update()] * 3
        if self.job is None:
            return ("No training job yet.", pd.DataFrame({"step": [], "loss": []}), "", *pickers, lists)
        status = self.job.poll()
        curve = pd.DataFrame(status.losses, columns=["step", "loss"])
        return (status.describe(), curve, status.log_tail, *pickers, lists)

    def check_model(self, model: str, kind: str = "policy") -> str:
        """``model`` if the picker offers it; anything else is refused (no loading of arbitrary server paths).

        Raises:
            UserError: naming the models there are.
        """
        offered = self.policies() if kind == "policy" else self.reward_models()
        if model not in offered:
            raise UserError(f"unknown {kind} {model!r}; this server offers: {', '.join(offered) or 'none'}")
        return model

    def stop_job(self) -> str:
        if self.job is None:
            return "no job to stop"
        self.job.stop()
        return self.job.poll().describe()

    # -------------------------------------------------------------------------------------------- runs
    def reports(self) -> list[str]:
        return [str(p) for p in chat.list_reports(self.runs_dir)]

    def render_report(self, report: str | None) -> str:
        if not report:
            return f"No reports yet: a pipeline run writes `{self.runs_dir}/<run>/report.md` (`make pipeline`)."
        path = Path(report).resolve()
        if path not in [p.resolve() for p in chat.list_reports(self.runs_dir)]:
            return "Error: not a report of this server's runs folder"
        return rewrite_images(path.read_text(encoding="utf-8"), path.parent)


def rewrite_images(markdown: str, folder: Path) -> str:
    """Point a report's relative image links (``![x](plot.png)``) at Gradio's file route, so the browser loads them
    (the runs folder is in the server's ``allowed_paths``)."""
    import re

    def link(match: re.Match) -> str:
        target = match.group(2)
        if "://" in target or target.startswith("/"):
            return match.group(0)
        return f"![{match.group(1)}](/gradio_api/file={(folder / target).resolve()})"

    return re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", link, markdown)


def build_ui(demo: Demo) -> gr.Blocks:
    """The Blocks app with the four tabs, wired to ``demo``'s handlers."""
    policies, rewards = demo.offered()
    with gr.Blocks(title="open_rlhf demo") as ui:
        gr.Markdown("# open_rlhf · chat, arena, feedback, runs")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                with gr.Row():
                    model = gr.Dropdown(policies, value=policies[0], label="Model", scale=4, elem_id="chat-model")
                    refresh = gr.Button("↻ Refresh models", scale=1)
                chatbot = gr.Chatbot(label="Conversation", height=420, elem_id="chatbot")
                message = gr.Textbox(placeholder="Ask something and press Enter", label="Message", elem_id="chat-input",
                                     max_length=demo.args.max_prompt_chars)
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="chat-send")
                    stop = gr.Button("Stop", variant="stop", elem_id="chat-stop")
                    regenerate = gr.Button("Regenerate", elem_id="chat-regenerate")
                    clear = gr.Button("Clear", elem_id="chat-clear")
                stats = gr.Markdown(elem_id="chat-stats")
                with gr.Accordion("Generation settings", open=False):
                    system_prompt = gr.Textbox(label="System prompt (empty: the chat template's default)", lines=2)
                    with gr.Row():
                        temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature (0 = greedy)")
                        top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="Top-p")
                        max_new_tokens = gr.Slider(1, 1024, value=256, step=1, label="Max new tokens")
                    with gr.Row():
                        best_of_n = gr.Slider(1, 16, value=1, step=1, label="Best-of-N (needs a reward model)")
                        reward_model = gr.Dropdown(rewards, value=rewards[0] if rewards else None, label="Reward model",
                                                   allow_custom_value=False)
                chat_inputs = [chatbot, model, system_prompt, temperature, top_p, max_new_tokens, best_of_n,
                               reward_model]

                def add_user(text, history):
                    if not (text or "").strip():
                        raise gr.Error("Type a message first.")
                    return "", list(history or []) + [{"role": "user", "content": text}]

                def drop_last_reply(history):
                    history = list(history or [])
                    while history and history[-1].get("role") == "assistant":
                        history.pop()
                    if not history:
                        raise gr.Error("Nothing to regenerate yet.")
                    return history

                submitted = message.submit(add_user, [message, chatbot], [message, chatbot], queue=False).then(
                    demo.chat_turn, chat_inputs, [chatbot, stats], api_visibility="private")
                sent = send.click(add_user, [message, chatbot], [message, chatbot], queue=False).then(
                    demo.chat_turn, chat_inputs, [chatbot, stats], api_visibility="private")
                regenerated = regenerate.click(drop_last_reply, chatbot, chatbot, queue=False).then(
                    demo.chat_turn, chat_inputs, [chatbot, stats], api_visibility="private")
                stop.click(None, cancels=[submitted, sent, regenerated])
                clear.click(lambda: ([], ""), None, [chatbot, stats], queue=False, cancels=[submitted, sent, regenerated])

            with gr.Tab("Arena", id="arena"):
                gr.Markdown("Two anonymous models answer the same prompt. Vote for the better answer; the models "
                            "are revealed after the vote, and every vote becomes a line of preference data.")
                arena_state = gr.State(None)
                arena_prompt = gr.Textbox(label="Prompt", elem_id="arena-input", max_length=demo.args.max_prompt_chars)
                arena_go = gr.Button("Ask both", variant="primary", elem_id="arena-send")
                with gr.Row():
                    answer_a = gr.Textbox(label="Model A", lines=10, interactive=False, elem_id="arena-a")
                    answer_b = gr.Textbox(label="Model B", lines=10, interactive=False, elem_id="arena-b")
                arena_status = gr.Markdown(elem_id="arena-status")
                with gr.Row():
                    vote_buttons = {v: gr.Button(label, interactive=False, elem_id=f"vote-{v}")
                                    for v, label in VOTE_LABELS.items()}
                board = gr.Dataframe(demo.leaderboard(), label="Leaderboard (Bradley-Terry, Elo scale; all votes)",
                                     interactive=False, elem_id="leaderboard")
                vote_row = list(vote_buttons.values())

                def votes_enabled(state):
                    ready = state is not None and not state.get("voted")
                    return [gr.update(interactive=ready)] * len(vote_row)

                round_inputs = [arena_prompt, system_prompt, temperature, top_p, max_new_tokens]
                asked = gr.on([arena_go.click, arena_prompt.submit], lambda: votes_enabled(None), None, vote_row,
                              queue=False)
                asked = asked.then(demo.arena_round, round_inputs, [arena_state, answer_a, answer_b, arena_status],
                                   api_visibility="private")
                asked.then(votes_enabled, arena_state, vote_row, queue=False)
                for vote, button in vote_buttons.items():
                    voted = button.click(lambda s, v=vote: demo.vote(v, s)[:2], arena_state, [arena_state, arena_status],
                                         api_visibility="private")
                    voted.then(votes_enabled, arena_state, vote_row, queue=False).then(
                        demo.leaderboard, None, board, queue=False)

            with gr.Tab("Feedback", id="feedback"):
                gr.Markdown(f"Votes are appended to `{demo.votes.folder}/votes-<date>.jsonl` (TRL preference format). "
                            "Train the next reward model or DPO policy on them with the stage scripts.")
                votes = gr.Dataframe(demo.votes_table(), label="Votes", interactive=False, wrap=True,
                                     elem_id="votes-table")
                with gr.Row():
                    reload_votes = gr.Button("↻ Reload votes")
                    download = gr.DownloadButton("Download votes (.jsonl)", elem_id="votes-download")
                with gr.Row():
                    job_kind = gr.Radio(["DPO policy", "reward model"], value="DPO policy", label="Train")
                    job_model = gr.Dropdown(policies, value=policies[0], label="Starting policy (also the DPO reference)")
                with gr.Row():
                    job_steps = gr.Number(20, label="Steps", precision=0, minimum=1, elem_id="job-steps")
                    job_lr = gr.Number(1e-5, label="Learning rate")
                    job_beta = gr.Number(0.1, label="DPO beta")
                with gr.Row():
                    train = gr.Button("Train on the votes", variant="primary", elem_id="job-start")
                    stop_train = gr.Button("Stop training", variant="stop", elem_id="job-stop")
                job_text = gr.Markdown("No training job yet.", elem_id="job-status")
                loss_plot = gr.LinePlot(pd.DataFrame({"step": [], "loss": []}), x="step", y="loss", title="Loss",
                                        elem_id="job-loss")
                job_log = gr.Textbox(label="Job output", lines=8, interactive=False, autoscroll=True)
                timer = gr.Timer(1.0)
                reload_votes.click(demo.votes_table, None, votes, queue=False)
                download.click(demo.download_votes, None, download)
                train.click(demo.start_job, [job_kind, job_model, job_steps, job_lr, job_beta], job_text,
                            api_visibility="private")
                stop_train.click(demo.stop_job, None, job_text, api_visibility="private")
                known_models = gr.State(None)
                timer.tick(demo.job_view, known_models, [job_text, loss_plot, job_log, model, job_model, reward_model,
                                                         known_models], queue=False, show_progress="hidden")

            with gr.Tab("Runs", id="runs"):
                reports = demo.reports()
                report = gr.Dropdown(reports, value=reports[0] if reports else None, label="Report", elem_id="report")
                report_view = gr.Markdown(demo.render_report(reports[0] if reports else None), elem_id="report-view")
                report.change(demo.render_report, report, report_view, queue=False)

        def refresh_models():
            names, rewards = demo.offered()
            return (gr.update(choices=names), gr.update(choices=names),
                    gr.update(choices=rewards), gr.update(choices=demo.reports()))

        refresh.click(refresh_models, None, [model, job_model, reward_model, report], queue=False)
        ui.load(refresh_models, None, [model, job_model, reward_model, report], queue=False)
        ui.load(demo.votes_table, None, votes, queue=False)

        # The scripted API (gradio_client): what the tabs do, with plain inputs and outputs
        gr.api(demo.api_chat, api_name="chat")

        api_state = gr.State(None)
        arena_api_out = [gr.Textbox(visible=False), gr.Textbox(visible=False), gr.Textbox(visible=False)]

        def arena_api_stateful(prompt, system_prompt, temperature, top_p, max_new_tokens):
            updates = collections.deque(demo.arena_round(prompt, system_prompt, temperature, top_p,
                                                         max_new_tokens), maxlen=1)
            last = updates[0] if updates else None
            if last is None or last[0] is None:
                raise gr.Error((last[3] if last else "no answer").removeprefix("Error:").strip())
            return last[0], last[1], last[2], last[3]

        hidden_inputs = [gr.Textbox(visible=False) for _ in range(2)] + [gr.Number(visible=False) for _ in range(3)]
        gr.Button(visible=False).click(arena_api_stateful, hidden_inputs, [api_state, *arena_api_out],
                                       api_name="arena")
        vote_in = gr.Textbox(visible=False)
        gr.Button(visible=False).click(demo.api_vote, [vote_in, api_state], [api_state, arena_api_out[0]],
                                       api_name="vote")
        kind_in, model_in = gr.Textbox(visible=False), gr.Textbox(visible=False)
        steps_in, lr_in, beta_in = gr.Number(visible=False), gr.Number(visible=False), gr.Number(visible=False)
        gr.Button(visible=False).click(demo.start_job, [kind_in, model_in, steps_in, lr_in, beta_in],
                                       arena_api_out[1], api_name="train")

        def job_status_api() -> str:
            """The training job's state: running / finished / stopped / failed, with step and loss."""
            return demo.job_status()

        def models_api() -> list[str]:
            """Every policy the model picker offers."""
            return demo.policies()

        gr.api(job_status_api, api_name="job_status")
        gr.api(models_api, api_name="models")
    return ui


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", action="append", help="a policy to serve (repeat; default: the latest finished pipeline "
                   "policy, else the default model); every finished model under --runs_dir is offered too")
    p.add_argument("--reward_model", action="append", help="a reward model for best-of-N (repeat)")
    p.add_argument("--runs_dir", default="runs", help="where finished runs are found and training jobs write")
    p.add_argument("--feedback_dir", default="feedback", help="where votes are appended (votes-<date>.jsonl)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind; anything but loopback prints a warning")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", help="user:password for Gradio's login page")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--max_prompt_chars", type=int, default=chat.DEFAULT_MAX_PROMPT_CHARS)
    p.add_argument("--max_prompt_tokens", type=int, default=chat.DEFAULT_MAX_PROMPT_TOKENS)
    p.add_argument("--concurrency_limit", type=int, default=2, help="generations running at once (the rest queue)")
    p.add_argument("--max_queue_size", type=int, default=64, help="requests waiting at most; more are refused")
    p.add_argument("--max_loaded_models", type=int, default=4)
    p.add_argument("--bootstrap_rounds", type=int, default=100, help="bootstrap resamples of the leaderboard's CI")
    p.add_argument("--seed", type=int, default=None, help="seed of the arena's model pairing")
    return p


def main(argv: list[str] | None = None) -> None:
    from open_rlhf.errors import user_errors

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up requests, one line each
    args = make_parser().parse_args(argv)
    with user_errors():
        auth = None
        if args.auth:
            user, sep, password = args.auth.partition(":")
            if not sep or not user or not password:
                raise UserError("--auth must be user:password (both non-empty)")
            auth = (user, password)
        if args.host not in LOOPBACK:
            print(f"WARNING: binding {args.host}: the demo is reachable from other machines"
                  f"{'' if auth else ' by anyone (no --auth)'}; it runs models and training jobs on request.",
                  file=sys.stderr, flush=True)
        for path in [*(args.model or []), *(args.reward_model or [])]:
            if path != "default" and not Path(path).expanduser().exists() and path.startswith(("/", ".", "~")):
                raise UserError(f"--model/--reward_model {path}: no such folder. Fix: pass a folder a stage wrote "
                                "(e.g. runs/default/sft), or leave it out.")
        demo = Demo(args)
        first = demo.policies()[0]
        print(f"loading {first} ...", flush=True)
        demo.pool.policy(first)  # fail now, not at the first message, when the model cannot load
        ui = build_ui(demo)
    Path(args.runs_dir).mkdir(parents=True, exist_ok=True)
    ui.queue(default_concurrency_limit=args.concurrency_limit, max_size=args.max_queue_size)
    ui.launch(server_name=args.host, server_port=args.port, auth=auth, allowed_paths=[str(Path(args.runs_dir).resolve())],
              show_error=True, footer_links=["api"], ssr_mode=False)


if __name__ == "__main__":
    main()
