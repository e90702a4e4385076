"""The web demo as a user meets it: the launched server (web_demo/app.py) driven through gradio_client, a real
headless Chromium, a load test, and a SIGKILL between votes. Marked ``web`` (``make test-web``; CI runs it)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from open_rlhf import arena, data, outputs
from tests.conftest import save_tiny_model

pytestmark = pytest.mark.web
REPO = Path(__file__).resolve().parents[1]
APP = REPO / "web_demo" / "app.py"
sys.path.insert(0, str(REPO / "web_demo"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python web_demo/app.py ...`` in a subprocess on a free loopback port; its output goes to a log file."""

    def __init__(self, tmp: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = tmp / f"server-{self.port}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([sys.executable, str(APP), "--port", str(self.port), *args], cwd=tmp,
                                            stdout=log, stderr=subprocess.STDOUT, env=env)
        self.wait_ready()

    def wait_ready(self, timeout: float = 180) -> None:
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the demo exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "gradio_api/info", timeout=2):
                    return
            except urllib.error.HTTPError:  # it answers (401 behind --auth): it is up
                return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"the demo did not start in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def client(self, **kwargs):
        from gradio_client import Client

        return Client(self.url, verbose=False, **kwargs)

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def finished_model(folder: Path, tokenizer, seed: int, reward: bool = False) -> Path:
    save_tiny_model(folder, tokenizer, seed=seed, reward=reward)
    (folder / outputs.COMPLETE_MARKER).write_text("{}")
    return folder


def write_report(run: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [1.0, 0.7, 0.5])
    fig.savefig(run / "training_curves.png")
    plt.close(fig)
    (run / "report.md").write_text("# Run demo-run\n\nA report.\n\n![training curves](training_curves.png)\n")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tokenizer) -> Path:
    """A working folder with two finished tiny policies, a tiny reward model and a report under runs/."""
    work = tmp_path_factory.mktemp("web")
    finished_model(work / "runs" / "tiny" / "policy-a", tokenizer, seed=11)
    finished_model(work / "runs" / "tiny" / "policy-b", tokenizer, seed=12)
    finished_model(work / "runs" / "tiny" / "reward", tokenizer, seed=13, reward=True)
    write_report(work / "runs" / "demo-run")
    return work


@pytest.fixture(scope="module")
def server(workdir):
    srv = Server(workdir, "--model", "runs/tiny/policy-a", "--model", "runs/tiny/policy-b",
                 "--reward_model", "runs/tiny/reward", "--bootstrap_rounds", "20", "--seed", "0")
    yield srv
    srv.stop()


def vote_lines(folder: Path) -> list[str]:
    return [line for f in sorted(folder.glob("votes-*.jsonl")) for line in f.read_text().splitlines()]


def test_chat_api_streams_the_reply(server):
    client = server.client()
    job = client.submit("Hello there", "runs/tiny/policy-a", "", 0.0, 0.9, 24, api_name="/chat")
    reply = job.result(timeout=120)
    partials = job.outputs()
    assert reply and partials[-1] == reply
    assert len(partials) >= 2 and all(reply.startswith(p) for p in partials)  # streamed, growing
    assert client.predict("Hello there", "runs/tiny/policy-a", "", 0.0, 0.9, 24, api_name="/chat") == reply  # greedy


def test_chat_api_refuses_a_prompt_over_the_limit(server):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="characters long; this server accepts at most 4000"):
        server.client().predict("x" * 4001, "", "", 0.0, 0.9, 8, api_name="/chat")
    with pytest.raises(AppError, match=r"unknown policy '/tmp'; this server offers: runs/tiny/policy-a, "):
        server.client().predict("hi", "/tmp", "", 0.0, 0.9, 8, api_name="/chat")  # no loading of arbitrary paths


def test_models_lists_every_policy_and_the_default(server):
    names = server.client().predict(api_name="/models")
    assert names[:2] == ["runs/tiny/policy-a", "runs/tiny/policy-b"] and names[-1] == "default"
    assert "runs/tiny/reward" not in names  # a reward model is no policy


def test_arena_vote_writes_exactly_one_valid_line(server, workdir):
    feedback = workdir / "feedback"
    before = vote_lines(feedback)
    client = server.client()
    answer_a, answer_b, status = client.predict("Name a colour.", "", 0.9, 0.9, 16, api_name="/arena")
    assert "revealed after your vote" in status
    state_reveal = client.predict("a_better", api_name="/vote")
    lines = vote_lines(feedback)
    assert len(lines) == len(before) + 1
    record = json.loads(lines[-1])
    assert record["vote"] == "a_better" and record["chosen"][-1]["content"] == answer_a
    assert record["rejected"][-1]["content"] == answer_b
    assert {record["model_a"], record["model_b"]} == {"runs/tiny/policy-a", "runs/tiny/policy-b"}
    assert record["prompt"] == [{"role": "user", "content": "Name a colour."}]
    assert record["generation"]["max_new_tokens"] == 16 and record["timestamp"].endswith("Z")
    assert record["model_a"] in state_reveal and record["model_b"] in state_reveal  # revealed only now
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="No round to vote on"):
        client.predict("b_better", api_name="/vote")  # one vote per round
    assert len(vote_lines(feedback)) == len(before) + 1
    pairs = data.load_preference_dataset(str(feedback))
    assert pairs[len(pairs) - 1]["chosen"] == [{"role": "assistant", "content": answer_a}]


def test_votes_train_dpo_through_the_feedback_job(server, workdir):
    client = server.client()
    for vote in ("b_better", "tie", "a_better"):
        for _ in range(3):  # tiny random models can give two equal answers: ask again
            client.predict("Say something.", "", 1.0, 1.0, 12, api_name="/arena")
            try:
                client.predict(vote, api_name="/vote")
                break
            except Exception as error:
                assert "identical" in str(error)
    status = client.predict("dpo", "runs/tiny/policy-a", 2, 1e-5, 0.1, api_name="/train")
    assert status.startswith("started: dpo on ")
    deadline = time.monotonic() + 300
    while "running" in (state := client.predict(api_name="/job_status")) and time.monotonic() < deadline:
        time.sleep(1)
    assert state.startswith("finished"), (state, (workdir / "server.log"))
    out_dir = Path(state.split("finished: ", 1)[1].split(" (", 1)[0])
    assert outputs.is_complete(out_dir) and out_dir.parent == (workdir / "runs").resolve()
    history = outputs.read_log_history(out_dir)
    assert [h["step"] for h in history if "loss" in h] == [1, 2]  # trained 2 steps on the votes
    picker = [Path(workdir, name).resolve() for name in client.predict(api_name="/models") if name != "default"]
    assert out_dir in picker  # the new policy is in the model picker


def test_load_16_concurrent_chat_sessions(server):
    from load_test import run_load_test, summary

    results = run_load_test(server.url, sessions=16, max_new_tokens=16, timeout=240)
    print(summary(results))
    assert [r.error for r in results] == [None] * 16
    assert all(r.total_s >= r.first_output_s > 0 for r in results)


def test_browser_chat_arena_feedback_runs(server, tmp_path):
    pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed (requirements-test.txt)")
    from browser_check import check_demo, find_chromium

    if find_chromium() is None:
        pytest.skip("no Chromium on this machine: install Debian's `chromium` package (.ci/run does)")
    out = Path(os.environ.get("OPEN_RLHF_SCREENSHOTS", tmp_path / "screenshots"))
    seen = check_demo(server.url, out, message="Hello", arena_prompt="Pick a number.", train_steps=2)
    assert len(seen.reply_states) >= 2, seen.reply_states  # the reply was seen growing: streamed
    assert "Model A:" in seen.reveal and "runs/tiny/policy-" in seen.reveal
    assert "a_better" in seen.votes_table
    assert seen.report_images and all(width > 0 for width in seen.report_images)  # the plot loaded
    assert seen.job_status.startswith("finished: ")  # DPO trained on the votes from the Feedback tab's button
    trained = seen.job_status.split("finished: ", 1)[1].split(" (", 1)[0]
    assert any(Path(trained).name in choice for choice in seen.picker), (trained, seen.picker)  # in the picker
    for path in seen.screenshots.values():
        assert path.stat().st_size > 10_000


def test_sigkill_between_votes_loses_no_acknowledged_vote(tmp_path, workdir):
    feedback = tmp_path / "feedback"
    srv = Server(tmp_path, "--model", str(workdir / "runs" / "tiny" / "policy-a"), "--feedback_dir", str(feedback),
                 "--runs_dir", str(tmp_path / "runs"), "--auth", "rater:secret")
    acknowledged = []
    try:
        from gradio_client import Client

        with pytest.raises(Exception):  # noqa: B017 - whatever gradio_client raises, no access without the password
            Client(srv.url, verbose=False).predict("hi", "", "", 0.0, 0.9, 4, api_name="/chat")
        client = srv.client(auth=("rater", "secret"))
        for i in range(6):
            a, b, _ = client.predict(f"Question {i}?", "", 1.0, 1.0, 8, api_name="/arena")  # one model: two samples
            if a.strip() == b.strip():
                continue
            client.predict("a_better" if i % 2 else "b_better", api_name="/vote")
            acknowledged.append((a, b))
        client.predict("Last question?", "", 1.0, 1.0, 8, api_name="/arena")  # a round in flight, not voted
    finally:
        srv.stop(signal.SIGKILL)
    assert srv.process.returncode == -signal.SIGKILL
    votes = arena.read_votes(feedback)
    assert len(votes) == len(acknowledged) >= 3
    # a kill in the middle of a write leaves a partial line: it is skipped, and the next vote starts a new line
    path = sorted(feedback.glob("votes-*.jsonl"))[-1]
    with open(path, "a") as f:
        f.write('{"prompt": [{"role": "user", "content": "torn')
    assert len(data.load_preference_dataset(str(feedback))) == len(acknowledged)
    srv = Server(tmp_path, "--model", str(workdir / "runs" / "tiny" / "policy-a"), "--feedback_dir", str(feedback),
                 "--runs_dir", str(tmp_path / "runs"))
    try:
        client = srv.client()
        for _ in range(3):
            a, b, _ = client.predict("After the restart?", "", 1.0, 1.0, 8, api_name="/arena")
            if a.strip() != b.strip():
                client.predict("tie", api_name="/vote")
                break
    finally:
        srv.stop()
    votes = arena.read_votes(feedback)
    assert [v["vote"] for v in votes][-1] == "tie" and len(votes) == len(acknowledged) + 1
    assert len(data.load_preference_dataset(str(feedback))) == len(acknowledged)  # a tie is no pair


def test_bad_auth_and_host_warning(tmp_path):
    proc = subprocess.run([sys.executable, str(APP), "--auth", "nopassword"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "error: --auth must be user:password" in proc.stderr


# ---------------------------------------------------------------------------------------------------------------
# The tabs' handlers in-process (no server): best-of-N, a crashing generation, the download, a stopped job
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo(workdir):
    import app

    args = app.make_parser().parse_args(["--model", str(workdir / "runs/tiny/policy-a"), "--runs_dir",
                                         str(workdir / "runs"), "--feedback_dir", str(workdir / "feedback-inproc"),
                                         "--reward_model", str(workdir / "runs/tiny/reward")])
    return app.Demo(args)


def test_chat_turn_best_of_n_shows_the_reward(demo, workdir):
    history = [{"role": "user", "content": [{"type": "text", "text": "Hi!"}]}]  # Gradio 6's message shape
    *_, (final, stats) = demo.chat_turn(history, demo.policies()[0], "Be brief.", 1.0, 1.0, 8, 3,
                                        str(workdir / "runs/tiny/reward"))
    assert final[-1]["role"] == "assistant" and "best of 3 by" in stats and "reward **" in stats
    scores = [float(s) for s in stats.split("(all: ")[1].split(")")[0].split(", ")]
    assert len(scores) == 3 and f"**{max(scores):.3f}**" in stats
    *_, (final, stats) = demo.chat_turn(history, demo.policies()[0], "", 1.0, 1.0, 8, 3, None)
    assert "best-of-N needs a reward model" in final[-1]["content"]  # said in the chat, not raised


def test_a_crashing_generation_is_shown_in_the_chat(demo):
    loaded = demo.pool.policy(demo.policies()[0])
    original = loaded.model.forward

    def explode(*args, **kwargs):
        raise RuntimeError("the kernel crashed")

    loaded.model.forward = explode
    try:
        *_, (final, stats) = demo.chat_turn([{"role": "user", "content": "Hi"}], demo.policies()[0], "", 0.0, 1.0,
                                            8, 1, None)
    finally:
        loaded.model.forward = original
    assert final[-1]["content"].startswith("Error: generation failed: RuntimeError") and "the kernel crashed" in \
        final[-1]["content"]
    *_, (final, _) = demo.chat_turn([{"role": "user", "content": "Hi"}], demo.policies()[0], "", 0.0, 1.0, 8, 1, None)
    assert not final[-1]["content"].startswith("Error")  # the next turn works


def test_download_is_a_copy_of_every_vote(demo):
    import gradio as gr

    with pytest.raises(gr.Error, match="No votes yet"):
        demo.download_votes()
    prompt = [{"role": "user", "content": "Q?"}]
    for vote in ("a_better", "tie"):
        demo.votes.append(arena.vote_record(prompt, "yes", "no", "m1", "m2", vote, {"temperature": 0.7}))
    copy = Path(demo.download_votes())
    assert [json.loads(line) for line in copy.read_text().splitlines()] == arena.read_votes(demo.votes.folder)
    table = demo.votes_table()
    assert list(table["vote"]) == ["a_better", "tie"] and list(table["prompt"]) == ["Q?", "Q?"]


def test_a_stopped_job_keeps_its_folder_and_says_so(demo, workdir):
    from open_rlhf import jobs

    job = jobs.TrainingJob.start("dpo", str(workdir / "runs/tiny/policy-a"), str(demo.votes.folder),
                                 runs_dir=workdir / "runs-jobs", max_steps=10_000, batch_size=1)
    deadline = time.monotonic() + 180
    while job.poll().step < 1 and job.poll().state == "running" and time.monotonic() < deadline:
        time.sleep(0.5)
    running = job.poll()
    assert running.state == "running" and running.step >= 1 and running.losses, running.log_tail
    assert running.describe().startswith("running: step ")
    job.stop()
    stopped = job.poll()
    assert stopped.state == "stopped" and job.output_dir.is_dir() and not outputs.is_complete(job.output_dir)
    assert "is kept" in stopped.describe()


def test_binding_all_interfaces_warns(tmp_path, workdir):
    srv = Server(tmp_path, "--model", str(workdir / "runs/tiny/policy-a"), "--host", "0.0.0.0",
                 "--runs_dir", str(tmp_path / "runs"))
    srv.stop()
    assert "WARNING: binding 0.0.0.0: the demo is reachable from other machines by anyone (no --auth)" in \
        srv.log.read_text()
