"""
The web interface in a real browser: Debian's chromium driven by Playwright, against a server on loopback
serving the tiny GPT-2 and its alpha..delta adapters.

Without chromium (or Playwright) these tests skip, saying why; under CI=true they fail instead.
Every test also checks that the page logged no console error and sent no request off the server's address.
Screenshots go to $ADAPTRIX_UI_SCREENSHOTS when set, else to a temporary folder.
"""

from __future__ import annotations

import re
import runpy

from pathlib import Path
from types import SimpleNamespace

import pytest


PROMPT = "Hello there, how are you?"
KEY = "browser-test-key"


# helpers shared by the web interface's tests (test folders are not importable under --import-mode=importlib)
support = SimpleNamespace(**runpy.run_path(str(Path(__file__).with_name("test_ui_support.py"))))
support.require_playwright()

from playwright.sync_api import TimeoutError as PlaywrightTimeoutError  # noqa: E402  (after the skip above)
from playwright.sync_api import expect  # noqa: E402

PANELS = support.PANELS


@pytest.fixture(scope="session")
def browser_type_launch_args():
    return support.chromium_launch_args()


@pytest.fixture(scope="session")
def browser_context_args():
    return {"viewport": {"width": 1280, "height": 800}}


@pytest.fixture(name="engine", scope="module")
def _engine(tiny_lm_dir, tiny_lm_library_dir):
    engine = support.tiny_engine(tiny_lm_dir, tiny_lm_library_dir)
    yield engine
    engine.close()


@pytest.fixture(name="server", scope="module")
def _server(engine):
    with support.thread_server(engine, max_tokens_limit=64) as url:
        yield url


@pytest.fixture(name="shots", scope="session")
def _shots(tmp_path_factory):
    return support.screenshot_dir(tmp_path_factory)


Watch = support.Watch
open_ui = support.open_ui
set_sampling = support.set_sampling
png_size = support.png_size


def api_answer(server: str, model: str, *, max_tokens: int, content: str = PROMPT, headers=None) -> str:
    """The server's own greedy answer, for comparing with what the page shows."""
    import httpx

    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, "top_p": 0.95}
    return httpx.post(f"{server}/v1/chat/completions", json=body, timeout=120, headers=headers).json()[
        "choices"][0]["message"]["content"]


def resident(server: str) -> dict[str, dict]:
    import httpx

    return {a["name"]: a for a in httpx.get(f"{server}/v1/adapters", timeout=30).json()["data"] if a["resident"]}


def unload_all(server: str) -> None:
    import httpx

    for name in resident(server):
        httpx.delete(f"{server}/v1/adapters/{name}", timeout=30)


def test_page_loads_cleanly_from_the_servers_own_address(page, server):
    """/ redirects to /ui; every panel opens; nothing is logged as an error and nothing is fetched elsewhere."""
    watch = Watch(page, server)
    page.goto(f"{server}/")
    page.wait_for_selector("#conn.ok")
    visible = {}
    for panel in PANELS:
        page.click(f'.tabs a[data-panel="{panel}"]')
        try:  # the click changes the hash; the panel is shown by the hashchange handler, a task later
            page.wait_for_selector(f"#panel-{panel}", state="visible", timeout=5000)
            visible[panel] = True
        except PlaywrightTimeoutError:
            visible[panel] = False
    page.wait_for_selector('.stat[data-stat="requests"] .value:not(:text("–"))')

    assert f"{server}/ui#stats" == page.url
    assert dict.fromkeys(PANELS, True) == visible
    assert {"/ui", "/ui/static/app.css", "/ui/static/js/main.js", "/health", "/v1/adapters", "/ui/api/adapters",
            "/v1/stats"} <= {re.sub(r"^https?://[^/]+", "", r.url) for r in watch.requests}
    assert [] == watch.problems


def test_every_control_has_a_label(page, server):
    """Inputs, selects, textareas and buttons all have an accessible name (label, aria-label or text)."""
    watch = open_ui(page, server)
    page.wait_for_selector("#library-list .adapter")
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea, button')]
        .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                        && !el.getAttribute('aria-labelledby') && !(el.tagName === 'BUTTON' && el.textContent.trim()))
        .map((el) => el.id || el.outerHTML.slice(0, 80))""")

    assert [] == unlabelled
    assert [] == watch.problems


def test_library_lists_adapters_and_load_pin_unload_change_the_server(page, server):
    """The library shows every adapter with its details; Load, Pin and Unload change what the server reports."""
    unload_all(server)
    watch = open_ui(page, server)
    page.wait_for_selector("#library-list .adapter")
    names = page.locator("#library-list .adapter h2").all_text_contents()
    alpha = page.locator('article[data-adapter="alpha"]')
    facts = alpha.locator(".facts").text_content()

    alpha.get_by_role("button", name="Load alpha", exact=True).click()
    alpha.locator(".badge.resident").wait_for()
    after_load = set(resident(server))
    beta = page.locator('article[data-adapter="beta"]')
    beta.get_by_role("button", name="Pin beta", exact=True).click()
    beta.locator(".badge.pinned").wait_for()
    pinned = {name: a["cache"]["pinned"] for name, a in resident(server).items()}
    alpha.get_by_role("button", name="Unload alpha", exact=True).click()
    alpha.locator(".badge.idle").wait_for()
    after_unload = set(resident(server))
    unload_all(server)

    assert ["alpha", "beta", "delta", "gamma"] == names
    assert "Rank4 (alpha 8)" in facts
    assert ({"alpha"}, {"alpha": False, "beta": True}, {"beta"}) == (after_load, pinned, after_unload)
    assert [] == watch.problems


def test_playground_streams_an_adapters_answer_into_the_page(page, server):
    """A chat with alpha is streamed (SSE) into the page and equals the server's own greedy answer."""
    watch = open_ui(page, server, "playground")
    page.select_option("#pg-model", "alpha")
    set_sampling(page, "pg", max_tokens="8")
    page.fill("#chat-input", PROMPT)
    with page.expect_response(lambda r: r.url.endswith("/v1/chat/completions")) as response_info:
        page.press("#chat-input", "Enter")
    page.wait_for_selector(".msg.assistant .meta :text('tokens')")
    response = response_info.value
    shown = page.locator(".msg.assistant .text").text_content()
    meta = page.locator(".msg.assistant .meta").text_content()

    assert ("text/event-stream", True, "alpha") == (
        response.headers["content-type"].split(";")[0], response.request.post_data_json["stream"],
        response.request.post_data_json["model"],
    )
    assert api_answer(server, "alpha", max_tokens=8) == shown
    assert "+ 8 tokens" in meta
    assert "used alpha" in meta
    assert [] == watch.problems


def test_compare_shows_the_base_and_adapter_answers_side_by_side(page, server):
    """Compare sends one request per model at once and shows each model's answer in its own column."""
    watch = open_ui(page, server, "compare")
    page.check('#compare-models input[value="beta"]')
    set_sampling(page, "cmp", max_tokens="6")
    page.fill("#compare-prompt", PROMPT)
    page.click("#compare-run")
    expect(page.locator("#compare-results .meta .used")).to_have_count(3, timeout=120_000)
    shown = {
        card.get_attribute("data-model"): card.locator(".text").text_content()
        for card in page.locator("#compare-results .answer").all()
    }
    asked = sorted(r.post_data_json["model"] for r in watch.requests if r.url.endswith("/v1/chat/completions"))

    assert ["alpha", "base", "beta"] == asked
    assert {m: api_answer(server, m, max_tokens=6) for m in ("base", "alpha", "beta")} == shown
    assert [] == watch.problems


def test_compose_sliders_send_the_weighted_model_string(page, server):
    """Sliders (by pointer value and by keyboard) build `alpha:0.7+beta:0.3+gamma:0.1`, which the request sends."""
    watch = open_ui(page, server, "compose")
    page.fill("#compose-w-alpha", "0.7")
    page.fill("#compose-w-beta", "0.3")
    page.focus("#compose-w-gamma")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    shown = page.locator("#compose-model").text_content()
    set_sampling(page, "cmpz", max_tokens="6")
    page.fill("#compose-prompt", PROMPT)
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as request_info:
        page.click("#compose-run")
    page.wait_for_selector("#compose-answer .meta .used")

    assert "alpha:0.7+beta:0.3+gamma:0.1" == shown
    assert "alpha:0.7+beta:0.3+gamma:0.1" == request_info.value.post_data_json["model"]
    assert api_answer(server, shown, max_tokens=6) == page.locator("#compose-answer .text").text_content()
    assert [] == watch.problems


def test_route_panel_shows_the_candidates_by_keyboard(page, server):
    """Alt+5 opens Route with the query focused; Enter shows every candidate and the model auto would use."""
    import httpx

    query = "please use the gamma adapter"
    watch = open_ui(page, server)
    page.keyboard.press("Alt+5")
    page.wait_for_selector("#panel-route:not([hidden])")
    page.keyboard.type(query)
    page.keyboard.press("Enter")
    page.wait_for_selector("#route-result table")
    rows = [[c.strip() for c in row.locator("td").all_text_contents()] for row in page.locator("#route-result tbody tr").all()]
    expected = httpx.post(f"{server}/v1/route", json={"query": query}, timeout=30).json()

    assert [[str(i + 1), c["adapter"], f"{c['score']:.3f}", c["reason"]] for i, c in enumerate(expected["candidates"])] == [
        [r[0], r[1], r[2], r[4]] for r in rows
    ]
    assert "auto would use gamma" == page.locator("#route-result .verdict").text_content()
    assert [] == watch.problems


def test_api_key_prompt_against_a_keyed_server(page, engine):
    """A keyed server: the page asks for the key, says when one is refused, keeps it in sessionStorage only."""
    with support.thread_server(engine, api_key=KEY) as server:
        watch = Watch(page, server, allowed_statuses=(401,))
        page.goto(f"{server}/ui")
        page.wait_for_selector("#key-dialog[open]")
        page.fill("#key-input", "wrong-key")
        page.press("#key-input", "Enter")
        page.wait_for_selector("#key-error:not([hidden])")
        refused = page.locator("#key-error").text_content()
        page.fill("#key-input", KEY)
        page.click("#key-submit")
        page.wait_for_selector("#library-list .adapter")
        names = page.locator("#library-list .adapter h2").all_text_contents()
        stored = page.evaluate("() => [sessionStorage.getItem('adaptrix.apiKey'), localStorage.length]")
        cookies = page.context.cookies()
        last_auth = [r.headers.get("authorization") for r in watch.requests if r.url.endswith("/v1/adapters")][-1]

    assert "That key was refused" in refused
    assert ["alpha", "beta", "delta", "gamma"] == names
    assert ([KEY, 0], [], f"Bearer {KEY}") == (stored, cookies, last_auth)
    assert [] == watch.problems


def test_admin_key_is_asked_for_when_an_admin_call_is_refused(page, server):
    """A 403 on Load asks for the admin key and retries with it as the bearer token, keeping it for the tab."""
    unload_all(server)
    watch = open_ui(page, server, allowed_statuses=(403,))
    refused = []

    def refuse_once(route):
        if not refused:
            refused.append(route.request.url)
            route.fulfill(status=403, content_type="application/json",
                          body='{"error": {"message": "admin key required", "code": "admin_key_required"}}')
        else:
            route.continue_()

    page.route("**/v1/adapters/gamma/load", refuse_once)
    page.locator('article[data-adapter="gamma"]').get_by_role("button", name="Load gamma", exact=True).click()
    page.wait_for_selector("#key-dialog[open]")
    title = page.locator("#key-title").text_content()
    page.fill("#key-input", "admin-secret")
    with page.expect_request(lambda r: r.url.endswith("/v1/adapters/gamma/load")) as retry:
        page.click("#key-submit")
    page.locator('article[data-adapter="gamma"] .badge.resident').wait_for()
    loaded = set(resident(server))
    unload_all(server)

    assert "Admin key required" == title
    assert "Bearer admin-secret" == retry.value.headers.get("authorization")
    assert {"gamma"} == loaded
    assert ["admin-secret"] == page.evaluate("() => [sessionStorage.getItem('adaptrix.adminKey')]")
    assert [] == watch.problems


def test_a_server_without_admin_endpoints_is_not_asked_for_a_key(page, server):
    """A 403 admin_disabled (API key but no admin key) shows the server's message; no key is asked for."""
    watch = open_ui(page, server, allowed_statuses=(403,))
    message = "POST /v1/adapters/delta/load is an admin endpoint, and admin endpoints are off on this server."
    page.route("**/v1/adapters/delta/load", lambda route: route.fulfill(
        status=403, content_type="application/json",
        body='{"error": {"message": "%s", "code": "admin_disabled"}}' % message))
    page.locator('article[data-adapter="delta"]').get_by_role("button", name="Load delta", exact=True).click()
    toast = page.locator(".toast.error").first
    toast.wait_for()

    assert f"delta: {message}" == toast.text_content()
    assert False is page.locator("#key-dialog").evaluate("(d) => d.open")
    assert {} == resident(server)
    assert [] == watch.problems


def _fill_panels(page, shots: Path, suffix: str) -> dict[str, Path]:
    """Use every panel a little (so each shows real content) and screenshot it."""
    written = {}
    for panel in PANELS:
        support.visit(page, panel)
        if panel == "playground":
            set_sampling(page, "pg", max_tokens="12")
            page.select_option("#pg-model", "beta")
            page.fill("#chat-input", PROMPT)
            page.press("#chat-input", "Enter")
            page.wait_for_selector(".msg.assistant .meta .used")
        elif panel == "compare":
            set_sampling(page, "cmp", max_tokens="12")
            page.fill("#compare-prompt", PROMPT)
            page.click("#compare-run")
            expect(page.locator("#compare-results .meta .used")).to_have_count(2, timeout=120_000)
        elif panel == "compose":
            page.fill("#compose-w-alpha", "0.6")
            page.fill("#compose-w-delta", "0.4")
            set_sampling(page, "cmpz", max_tokens="12")
            page.fill("#compose-prompt", PROMPT)
            page.click("#compose-run")
            page.wait_for_selector("#compose-answer .meta .used")
        elif panel == "route":
            page.fill("#route-query", "please use the delta adapter")
            page.press("#route-query", "Enter")
            page.wait_for_selector("#route-result table")
        elif panel == "stats":
            page.wait_for_selector('.stat[data-stat="requests"] .value:not(:text("–"))')
        elif panel == "library":
            page.wait_for_selector("#library-list .adapter")
        written[panel] = support.screenshot(page, shots / f"{panel}{suffix}.png")
    return written


def test_a_screenshot_of_each_panel_at_1280x800(page, server, shots):
    """Each panel, in use, is written as a 1280-pixel-wide PNG."""
    watch = open_ui(page, server)
    written = _fill_panels(page, shots, "")

    assert dict.fromkeys(PANELS, 1280) == {panel: png_size(path)[0] for panel, path in written.items()}
    assert [] == watch.problems


def test_phone_width_has_no_sideways_scrolling(browser, server, shots):
    """At 390 px every panel fits the width (no horizontal scroll) and is screenshotted."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=1, is_mobile=True)
    page = context.new_page()
    try:
        watch = open_ui(page, server)
        written = _fill_panels(page, shots, "-phone")
        overflow = {}
        for panel in PANELS:
            support.visit(page, panel)
            overflow[panel] = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    finally:
        context.close()

    assert dict.fromkeys(PANELS, 0) == {p: max(0, o) for p, o in overflow.items()}
    assert dict.fromkeys(PANELS, 390) == {panel: png_size(path)[0] for panel, path in written.items()}
    assert [] == watch.problems


def test_library_actions_are_off_when_the_server_says_so(page, server):
    """When /v1/stats reports admin "off", Load, Pin and Unload are disabled and the summary says why."""
    import json

    import httpx

    stats = httpx.get(f"{server}/v1/stats", timeout=30).json()
    stats["server"]["admin"] = "off"
    page.route("**/v1/stats", lambda route: route.fulfill(status=200, content_type="application/json",
                                                          body=json.dumps(stats)))
    watch = open_ui(page, server)
    page.wait_for_selector("#library-list .adapter")
    disabled = page.locator("#library-list .actions button").evaluate_all("(buttons) => buttons.map((b) => b.disabled)")

    assert 12 == len(disabled)
    assert {True} == set(disabled)
    assert "no admin key (--admin-key)" in page.locator("#library-summary").text_content()
    assert [] == watch.problems
