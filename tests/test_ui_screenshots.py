"""
Screenshots of the web interface over the real embedded model and the shipped adapters (docs/ui.md shows them).

Regenerate the documentation's images with:
    ADAPTRIX_UI_DOCS_SCREENSHOTS=docs/img python -m pytest tests/test_ui_screenshots.py
Without that variable the test is skipped: decoding real answers takes minutes on a busy CPU, and
tests/test_ui_browser.py already screenshots every panel (over the tiny model) on every run.
"""

from __future__ import annotations

import os
import runpy

from pathlib import Path
from types import SimpleNamespace

import pytest


# helpers shared by the web interface's tests (test folders are not importable under --import-mode=importlib)
support = SimpleNamespace(**runpy.run_path(str(Path(__file__).with_name("test_ui_support.py"))))
support.require_playwright()

from playwright.sync_api import expect  # noqa: E402  (after the skip above)


REPO = Path(__file__).resolve().parent.parent
DOCS_ENV = "ADAPTRIX_UI_DOCS_SCREENSHOTS"


@pytest.fixture(scope="session")
def browser_type_launch_args():
    return support.chromium_launch_args()


@pytest.fixture(name="server", scope="module")
def _server(embedded_lm, tmp_path_factory):
    """The embedded SmolLM2-135M-Instruct with the shipped adapters, served on loopback."""
    import torch

    from adaptrix_core.config import load_config
    from adaptrix_core.engine import AdaptrixEngine
    from adaptrix_core.library import Library

    model, tokenizer = embedded_lm
    library = Library(tmp_path_factory.mktemp("empty-library"), shipped_dir=REPO / "adapters")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    engine = AdaptrixEngine.from_model(model, tokenizer, library=library, config=load_config(), name="SmolLM2-135M-Instruct")
    try:
        with support.thread_server(engine, max_tokens_limit=256) as url:
            yield url
    finally:
        engine.close()
        torch.set_num_threads(threads)


def _use_every_panel(page, shots: Path) -> dict[str, Path]:
    """Load and pin an adapter, chat, compare, compose, route and watch the stats; one screenshot per panel."""
    written = {}
    page.locator('article[data-adapter="json"]').get_by_role("button", name="Pin json", exact=True).click()
    page.locator('article[data-adapter="json"] .badge.pinned').wait_for()
    page.locator('article[data-adapter="pirate"]').get_by_role("button", name="Load pirate", exact=True).click()
    page.locator('article[data-adapter="pirate"] .badge.resident').wait_for()
    written["library"] = support.screenshot(page, shots / "ui-library.png")

    support.visit(page, "playground")
    page.select_option("#pg-model", "pirate")
    support.set_sampling(page, "pg", max_tokens="48")
    page.fill("#chat-input", "What should I do on a rainy Sunday?")
    page.press("#chat-input", "Enter")
    page.wait_for_selector(".msg.assistant .meta .used")
    written["playground"] = support.screenshot(page, shots / "ui-playground.png")

    support.visit(page, "compare")
    page.check('#compare-models input[value="pirate"]')
    page.uncheck('#compare-models input[value="arithmetic"]')
    page.check('#compare-models input[value="french"]')
    support.set_sampling(page, "cmp", max_tokens="40")
    page.fill("#compare-prompt", "Translate into French: Where is the train station?")
    page.click("#compare-run")
    expect(page.locator("#compare-results .meta .used")).to_have_count(3, timeout=300_000)
    written["compare"] = support.screenshot(page, shots / "ui-compare.png")

    support.visit(page, "compose")
    page.fill("#compose-w-pirate", "0.6")
    page.fill("#compose-w-french", "0.4")
    support.set_sampling(page, "cmpz", max_tokens="40")
    page.fill("#compose-prompt", "Say good morning to the crew.")
    page.click("#compose-run")
    page.wait_for_selector("#compose-answer .meta .used")
    written["compose"] = support.screenshot(page, shots / "ui-compose.png")

    support.visit(page, "route")
    page.fill("#route-query", "Arr, how should I cook rice on the ship?")
    page.press("#route-query", "Enter")
    page.wait_for_selector("#route-result table")
    written["route"] = support.screenshot(page, shots / "ui-route.png")

    support.visit(page, "stats")
    page.wait_for_selector('.stat[data-stat="tokens"] .value:not(:text("–"))')
    written["stats"] = support.screenshot(page, shots / "ui-stats.png")
    return written


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get(DOCS_ENV),
    reason=f"regenerates docs/img (minutes of real-model decoding): run with {DOCS_ENV}=docs/img; "
    "tests/test_ui_browser.py screenshots every panel on every run",
)
def test_screenshots_over_the_embedded_model(browser, server, tmp_path_factory):
    """Every panel in use over SmolLM2 and the shipped adapters, at 1280x800 and (library, playground) phone width."""
    shots = support.screenshot_dir(tmp_path_factory, DOCS_ENV)
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(300_000)  # answers from the real model on a busy CPU
    try:
        watch = support.open_ui(page, server)
        written = _use_every_panel(page, shots)
    finally:
        context.close()
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = phone.new_page()
    page.set_default_timeout(300_000)
    try:
        phone_watch = support.open_ui(page, server, "playground")
        page.select_option("#pg-model", "french")
        support.set_sampling(page, "pg", max_tokens="32")
        page.fill("#chat-input", "Translate into French: Where is the train station?")
        page.press("#chat-input", "Enter")
        page.wait_for_selector(".msg.assistant .meta .used")
        written["playground-phone"] = support.screenshot(page, shots / "ui-playground-phone.png")
        support.visit(page, "library")
        written["library-phone"] = support.screenshot(page, shots / "ui-library-phone.png")
    finally:
        phone.close()

    widths = {name: support.png_size(path)[0] for name, path in written.items()}
    assert {**dict.fromkeys(support.PANELS, 1280), "playground-phone": 390, "library-phone": 390} == widths
    assert [] == watch.problems + phone_watch.problems
