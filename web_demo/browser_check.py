"""Drive a running demo in a real headless Chromium (Playwright for Python) and screenshot each tab.

    python web_demo/app.py &
    python web_demo/browser_check.py --url http://127.0.0.1:7860/ --out web_demo/screenshots

Uses the system's Chromium (Debian's ``chromium`` package, ``/usr/bin/chromium``): Playwright's own browser download
is not needed. The check: the Chat tab streams a reply to a message (the reply's text is seen growing), the Arena
answers one prompt with two anonymous models, a vote reveals them, the Feedback tab lists the vote, and the Runs tab
shows a report with its images loaded. The test suite (``tests/test_web_demo.py``) runs `check_demo`; the README's
screenshots come from this script on the default model.
"""

import argparse
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

# Chromium as root in a container needs --no-sandbox; the rest keeps it from calling Google's services (there may
# be no network at all).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def find_chromium() -> str | None:
    """The system Chromium: ``$CHROMIUM``, else ``chromium`` / ``chromium-browser`` / ``google-chrome`` on PATH."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class BrowserCheck:
    """What the browser saw: the reply's text as it grew, the arena's reveal, the screenshots taken."""

    reply_states: list[str] = field(default_factory=list)
    reveal: str = ""
    votes_table: str = ""
    report_images: list[int] = field(default_factory=list)  # naturalWidth of each image of the report
    job_status: str = ""  # the Feedback tab's job line after training (with train_steps)
    picker: list[str] = field(default_factory=list)  # the Chat tab's model choices after training
    screenshots: dict[str, Path] = field(default_factory=dict)


# Record every text the last bot message shows, so that streaming is observed, not inferred.
_WATCH_REPLY = """
() => {
  window.__replyStates = [];
  const record = () => {
    const bots = document.querySelectorAll('#chatbot .message.bot, #chatbot [data-testid="bot"]');
    if (!bots.length) return;
    const text = bots[bots.length - 1].innerText.trim();
    const states = window.__replyStates;
    if (text && states[states.length - 1] !== text) states.push(text);
  };
  new MutationObserver(record).observe(document.body, {subtree: true, childList: true, characterData: true});
}
"""


def check_demo(url: str, out_dir: str | Path, message: str = "What is the capital of France?",
               arena_prompt: str = "Name a fruit that is yellow.", timeout_ms: int = 120_000,
               chromium: str | None = None, train_steps: int = 0, job_timeout_ms: int = 900_000) -> BrowserCheck:
    """Run the browser check against the demo at ``url``; screenshots go to ``out_dir/<tab>.png``.

    With ``train_steps``, the Feedback tab then trains a DPO policy on the votes for that many steps (its button),
    waits for the job to finish, and reads the Chat tab's model picker, where the new policy must appear
    (``feedback-trained.png``, ``picker.png``).

    Raises:
        RuntimeError: when no Chromium is found.
        playwright.sync_api.TimeoutError: when the page does not do what it should within ``timeout_ms``.
    """
    from playwright.sync_api import expect, sync_playwright

    chromium = chromium or find_chromium()
    if chromium is None:
        raise RuntimeError("no Chromium found: install Debian's `chromium` package or set $CHROMIUM")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seen = BrowserCheck()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(timeout_ms)
            page.goto(url)
            # Chat: send a message, watch the reply stream in
            box = page.locator("#chat-input textarea")
            box.wait_for()
            page.evaluate(_WATCH_REPLY)
            box.fill(message)
            box.press("Enter")
            stats = page.locator("#chat-stats")
            expect(stats).to_contain_text("tokens in", timeout=timeout_ms)
            page.wait_for_function("() => !document.querySelector('#chatbot .pending, #chatbot .generating')")
            expect(stats).not_to_contain_text("stopped")
            page.wait_for_timeout(300)
            seen.reply_states = page.evaluate("() => window.__replyStates")
            seen.screenshots["chat"] = out / "chat.png"
            page.screenshot(path=seen.screenshots["chat"], full_page=True)
            # Arena: one prompt, two anonymous answers, a vote that reveals the models
            page.get_by_role("tab", name="Arena").click()
            page.locator("#arena-input textarea").fill(arena_prompt)
            page.locator("#arena-send").click()
            vote = page.locator("#vote-a_better")
            expect(vote).to_be_enabled(timeout=timeout_ms)
            vote.click()
            status = page.locator("#arena-status")
            expect(status).to_contain_text("Model A:", timeout=timeout_ms)
            seen.reveal = status.inner_text()
            expect(page.locator("#leaderboard")).to_contain_text("rating")
            seen.screenshots["arena"] = out / "arena.png"
            page.screenshot(path=seen.screenshots["arena"], full_page=True)
            # Feedback: the vote is in the table
            page.get_by_role("tab", name="Feedback").click()
            page.get_by_role("button", name="↻ Reload votes").click()
            table = page.locator("#votes-table")
            expect(table).to_contain_text("a_better", timeout=timeout_ms)
            seen.votes_table = table.inner_text()
            seen.screenshots["feedback"] = out / "feedback.png"
            page.screenshot(path=seen.screenshots["feedback"], full_page=True)
            # Runs: a report with its plots
            page.get_by_role("tab", name="Runs").click()
            view = page.locator("#report-view")
            view.wait_for()
            images = view.locator("img")
            if images.count():
                images.first.wait_for()
                page.wait_for_function("() => [...document.querySelectorAll('#report-view img')].every(i => i.complete)")
                seen.report_images = images.evaluate_all("els => els.map(e => e.naturalWidth)")
            seen.screenshots["runs"] = out / "runs.png"
            page.screenshot(path=seen.screenshots["runs"], full_page=True)
            if train_steps:
                _train_from_votes(page, seen, out, train_steps, job_timeout_ms)
        finally:
            browser.close()
    return seen


def _train_from_votes(page, seen: BrowserCheck, out: Path, steps: int, timeout_ms: int) -> None:
    """Feedback tab: train DPO on the votes; then the Chat tab's picker must list the new policy."""
    from playwright.sync_api import expect

    page.get_by_role("tab", name="Feedback").click()
    # by id: get_by_label("Steps") also matches a chat reply whose text contains "steps" (CI failure, stop 28)
    steps_box = page.locator("#job-steps input")
    steps_box.fill(str(steps))
    page.locator("#job-start").click()
    status = page.locator("#job-status")
    expect(status).to_contain_text("running", timeout=60_000)
    expect(status).to_contain_text("finished", timeout=timeout_ms)
    seen.job_status = status.inner_text()
    page.wait_for_timeout(1500)  # one more tick of the job timer: the loss curve's last point
    seen.screenshots["feedback-trained"] = out / "feedback-trained.png"
    page.screenshot(path=seen.screenshots["feedback-trained"], full_page=True)
    page.get_by_role("tab", name="Chat").click()
    page.get_by_role("button", name="↻ Refresh models").click()
    page.wait_for_timeout(500)
    page.locator("#chat-model input").click()
    options = page.get_by_role("option")
    options.first.wait_for()
    seen.picker = [text.strip() for text in options.all_inner_texts()]
    seen.screenshots["picker"] = out / "picker.png"
    page.screenshot(path=seen.screenshots["picker"])
    page.keyboard.press("Escape")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:7860/")
    p.add_argument("--out", default="web_demo/screenshots", help="folder for <tab>.png")
    p.add_argument("--message", default="What is the capital of France?")
    p.add_argument("--arena_prompt", default="Name a fruit that is yellow.")
    p.add_argument("--train_steps", type=int, default=0, help="then train DPO on the votes (Feedback tab) this long")
    args = p.parse_args(argv)
    seen = check_demo(args.url, args.out, args.message, args.arena_prompt, train_steps=args.train_steps)
    print(f"reply seen in {len(seen.reply_states)} states; last: {seen.reply_states[-1:]}")
    print(f"arena: {seen.reveal!r}")
    print(f"report images (natural widths): {seen.report_images}")
    if args.train_steps:
        print(f"job: {seen.job_status!r}\nmodel picker: {seen.picker}")
    for name, path in seen.screenshots.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
