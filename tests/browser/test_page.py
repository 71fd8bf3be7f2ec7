"""The playground page in a real browser (Chromium through Playwright) against a live server
of the tiny model: each view does its job, the page logs no errors, its first view is
interactive within a second, it works with the keyboard and with API keys required. Each
test writes its view's screenshot to docs/screenshots/."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers.browser import Watched, screenshot, watched_page
from helpers.server import LiveServer, running, tiny_settings
from playwright.sync_api import Browser, Page, expect

from glassbox.auth import KeyService

ANSWER_TOKENS = ".msg.assistant span.tok"
IDLE = "!document.getElementById('chat-send').disabled"


def open_view(page: Page, server: LiveServer, view: str = "chat") -> None:
    page.goto(f"{server.base_url}/#{view}")
    page.wait_for_function("!document.getElementById('chat-input').disabled")


def chat_settings(page: Page, max_tokens: int = 12, seed: int = 5) -> None:
    page.fill("#chat-max-tokens", str(max_tokens))
    page.fill("#chat-seed", str(seed))


def wait_for_answer(page: Page) -> None:
    page.wait_for_function(f"document.querySelectorAll('{ANSWER_TOKENS}').length > 0 && {IDLE}")


def count_token_batches(page: Page) -> None:
    """From now on, record the number of answer tokens at every change of the transcript."""
    page.evaluate(
        """() => {
        window.tokenCounts = [];
        new MutationObserver(() => window.tokenCounts.push(
            document.querySelectorAll('.msg.assistant span.tok').length
        )).observe(document.getElementById('chat-log'), {childList: true, subtree: true});
    }"""
    )


def test_chat_streams_an_answer_with_each_tokens_alternatives(
    watched: Watched, slow_server: LiveServer
) -> None:
    """On the server whose engine steps take 20 ms more, so that the tokens come apart."""
    page = watched.page
    open_view(page, slow_server)
    chat_settings(page, max_tokens=16)
    count_token_batches(page)
    with page.expect_response(lambda r: r.url.endswith("/v1/chat/completions")) as answered:
        page.fill("#chat-input", "Tell me about your day.")
        page.click("#chat-send")
    wait_for_answer(page)
    expect(page.locator("#chat-error")).to_be_empty()
    assert answered.value.headers["content-type"].startswith("text/event-stream")
    counts = sorted(set(page.evaluate("window.tokenCounts")) - {0})
    assert len(counts) >= 3, f"the answer did not come token by token: {counts}"

    # coloured by logprob; a token's alternatives on hover
    token = page.locator(ANSWER_TOKENS).nth(1)
    assert token.evaluate("e => e.style.backgroundColor") != ""
    token.hover()
    tooltip = page.locator("#tooltip")
    expect(tooltip).to_be_visible()
    expect(tooltip).to_contain_text("logprob")
    expect(tooltip).to_contain_text("Top alternatives")
    expect(tooltip.locator("tr")).to_have_count(5)  # the page asks for 5 alternatives


@pytest.mark.slow  # the first feature request builds the dictionaries (features_built)
def test_chat_colours_tokens_by_a_feature_from_the_readout(
    watched: Watched, features_built: LiveServer
) -> None:
    page = watched.page
    open_view(page, features_built)
    # the page asks for the feature readout once the header says the features are ready
    expect(page.locator("#health-text")).to_contain_text("features ready")
    chat_settings(page, max_tokens=16)
    page.fill("#chat-input", "Tell me about your day.")
    page.click("#chat-send")
    wait_for_answer(page)
    expect(page.locator("#chat-error")).to_be_empty()

    page.locator(ANSWER_TOKENS).nth(1).hover()
    tooltip = page.locator("#tooltip")
    expect(tooltip).to_contain_text("Top features")  # streamed with the tokens (readout)

    features = page.locator("#chat-colour option[value^='feature:']")
    assert features.count() >= 1
    page.select_option("#chat-colour", features.first.get_attribute("value"))
    colours = page.locator(ANSWER_TOKENS).evaluate_all(
        "spans => spans.map(s => s.style.backgroundColor)"
    )
    assert any("111, 66, 193" in c for c in colours), colours
    page.locator(ANSWER_TOKENS).nth(2).hover()
    screenshot(page, "chat")


def test_first_view_is_interactive_within_a_second(
    watched: Watched, tiny_server: LiveServer
) -> None:
    page = watched.page
    # A fresh browser context (nothing cached) against a server that has answered before:
    # the first request a server ever serves pays its own warm-up, not the page's.
    assert httpx.get(f"{tiny_server.base_url}/").status_code == 200
    open_view(page, tiny_server)
    interactive_ms = page.evaluate(
        "performance.getEntriesByName('glassbox:interactive')[0].startTime"
    )
    assert interactive_ms < 1000, (
        f"the chat input was enabled {interactive_ms:.0f} ms after navigation"
    )
    # and the header reports the server's health
    expect(page.locator("#health-text")).to_contain_text(tiny_server.settings.served_model_name)
    expect(page.locator("#m-kv")).to_contain_text("/")


def test_keyboard_tab_to_the_input_type_and_enter_sends(
    watched: Watched, tiny_server: LiveServer
) -> None:
    page = watched.page
    open_view(page, tiny_server)
    # a short answer, set without moving the focus: the tab order starts at the page's top
    page.evaluate("document.getElementById('chat-max-tokens').value = '6'")
    for _ in range(6):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "chat-input":
            break
    assert page.evaluate("document.activeElement.id") == "chat-input"
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none", "the focused input shows no focus style"
    page.keyboard.type("Hello from the keyboard")
    page.keyboard.press("Enter")
    wait_for_answer(page)
    expect(page.locator(".msg.user .body")).to_have_text("Hello from the keyboard")
    assert page.evaluate("document.activeElement.id") == "chat-input"  # ready for the next one

    # the tabs: arrow keys move between the views
    page.focus("#tab-chat")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#view-steer")).to_be_visible()
    assert page.evaluate("document.activeElement.id") == "tab-steer"


@pytest.mark.slow  # the first feature request builds the dictionaries (features_built)
def test_steer_search_slider_and_compare_for_the_same_seed(
    watched: Watched, features_built: LiveServer
) -> None:
    page = watched.page
    tiny_server = features_built
    open_view(page, tiny_server, "steer")
    namespace = f"page-{uuid.uuid4().hex[:8]}"
    page.fill("#steer-namespace", namespace)
    page.fill("#steer-query", "talk like a pirate")
    page.press("#steer-query", "Enter")
    first = page.locator("#steer-results li.hit").first
    expect(first).to_be_visible()
    label = first.locator(".label").inner_text()
    first.get_by_role("button").click()

    slider = page.locator("#steer-edits input[type=range]")
    slider.fill("1.5")
    expect(page.locator("#steer-edits output")).to_have_text("1.50")
    page.click("#steer-json >> xpath=..")  # open the Ember JSON
    ember = page.locator("#steer-json")
    expect(ember).to_contain_text('"value": 1.5')
    expect(ember).to_contain_text(label)

    page.fill("#steer-seed", "7")
    page.fill("#steer-max-tokens", "24")
    page.click("#steer-compare")
    verdict = page.locator("#steer-verdict")
    expect(verdict).not_to_be_empty(timeout=60_000)
    plain = page.locator("#steer-plain").inner_text()
    steered = page.locator("#steer-steered").inner_text()
    assert plain and steered and plain != steered
    expect(verdict).to_contain_text("the steered answer differs")

    page.click("#steer-save-form button[type=submit]")
    expect(page.locator("#steer-saved")).to_contain_text(f"Saved as {namespace}/default")
    stored = httpx.get(f"{tiny_server.base_url}/variants/{namespace}/default").json()
    [edit] = stored["variant"]["edits"]
    assert (edit["feature_label"], edit["value"]) == (label, 1.5)
    expect(page.locator("#steer-error")).to_be_empty()
    screenshot(page, "steer")


def test_states_tree_after_a_fork_and_a_continuation(
    watched: Watched, tiny_server: LiveServer
) -> None:
    page = watched.page
    open_view(page, tiny_server, "states")
    page.fill("#state-text", "The quick brown fox jumps over the lazy dog.")
    page.click("#state-create-form button[type=submit]")
    page.wait_for_function("document.querySelectorAll('#state-tokens span.tok').length > 4")
    root = page.locator("#state-current-id").inner_text()

    page.locator("#state-tokens span.tok").nth(4).click()  # keep the first 5 tokens
    expect(page.locator("#state-index")).to_have_value("5")
    page.click("#state-fork")
    expect(page.locator("#state-current-id")).not_to_have_text(root)
    fork = page.locator("#state-current-id").inner_text()
    nested = page.locator(f"li:has(> button[data-state='{root}']) button[data-state='{fork}']")
    expect(nested).to_have_attribute("aria-current", "true")
    expect(page.locator("#state-tokens span.tok")).to_have_count(5)

    page.fill("#state-max-tokens", "6")
    page.fill("#state-seed", "3")
    page.click("#state-continue-form button[type=submit]")
    expect(page.locator("#state-current-id")).not_to_have_text(fork)
    child = page.locator("#state-current-id").inner_text()
    expect(page.locator("#state-continued")).not_to_be_empty()
    grandchild = page.locator(
        f"li:has(> button[data-state='{root}']) li:has(> button[data-state='{fork}']) "
        f"button[data-state='{child}']"
    )
    expect(grandchild).to_be_visible()

    page.select_option("#state-diff-a", root)
    page.select_option("#state-diff-b", child)
    page.click("#state-diff-form button[type=submit]")
    expect(page.locator("#state-diff")).to_contain_text("5 tokens in common")

    page.fill("#state-layer", "1")
    page.fill("#state-head", "0")
    page.click("#state-attention-form button[type=submit]")
    expect(page.locator("#state-attention-note")).to_contain_text("layer 1, head 0")
    expect(page.locator("#state-error")).to_be_empty()

    # an API error is shown as the API words it
    watched.allow(r"status of 400")  # the browser logs the refused request itself
    page.fill("#state-layer", "999")
    page.click("#state-attention-form button[type=submit]")
    expect(page.locator("#state-error")).to_contain_text("layer")
    page.fill("#state-layer", "1")
    page.click("#state-attention-form button[type=submit]")
    expect(page.locator("#state-error")).to_be_empty()
    screenshot(page, "states")


@pytest.mark.slow  # the first feature request builds the dictionaries (features_built)
def test_inspect_heatmap_and_top_features_by_each_aggregation(
    watched: Watched, features_built: LiveServer
) -> None:
    page = watched.page
    tiny_server = features_built
    open_view(page, tiny_server, "inspect")
    page.fill("#inspect-top-k", "8")
    page.click("#inspect-form button[type=submit]")
    rows = page.locator("#inspect-heatmap table.heatmap tbody tr")
    expect(rows.first).to_be_visible()
    assert rows.count() > 10  # the templated conversation, token by token
    expect(page.locator("#inspect-heatmap thead th.feature")).to_have_count(8)
    aggregations = page.locator("#inspect-aggregations figure")
    expect(aggregations).to_have_count(4)
    for k, name in enumerate(["frequency", "mean", "max", "sum"]):
        expect(aggregations.nth(k).locator("figcaption")).to_have_text(f"by {name}")
        expect(aggregations.nth(k).locator("li")).to_have_count(8)
    screenshot(page, "inspect")


def test_sessions_list_and_history(watched: Watched, tiny_server: LiveServer) -> None:
    page = watched.page
    open_view(page, tiny_server, "sessions")
    user = f"page-{uuid.uuid4().hex[:6]}"
    page.fill("#session-user", user)
    page.fill("#session-first", "Hello there")
    page.click("#session-start-form button[type=submit]")
    history = page.locator("#session-history .msg")
    expect(history).to_have_count(2)
    expect(page.locator("#sessions-list")).to_contain_text(user)
    page.fill("#session-input", "And again")
    page.press("#session-input", "Enter")
    expect(history).to_have_count(4)
    expect(page.locator("#sessions-list")).to_contain_text(f"{user} · 4 messages")
    screenshot(page, "sessions")


@pytest.fixture(scope="module")
def keys_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    settings = tiny_settings(tiny_model_dir, tmp_path_factory.mktemp("cache"))
    with running(settings.model_copy(update={"api_keys": "required"})) as live:
        yield live


def test_with_api_keys_required_the_page_asks_for_a_key_then_works(
    watched: Watched, keys_server: LiveServer
) -> None:
    watched.allow(r"status of 401")  # the browser logs the 401 that makes the page ask
    page = watched.page
    keys: KeyService = keys_server.app.state.keys
    key = keys.create("browser").key
    open_view(page, keys_server)
    chat_settings(page, max_tokens=6)
    page.fill("#chat-input", "Hi")
    page.press("#chat-input", "Enter")
    dialog = page.locator("#key-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#key-reason")).not_to_be_empty()  # the API's words for the 401
    expect(page.locator("#key-input")).to_be_focused()
    page.fill("#key-input", key)
    screenshot(page, "api-key")
    page.press("#key-input", "Enter")
    wait_for_answer(page)
    expect(dialog).to_be_hidden()
    expect(page.locator("#chat-error")).to_be_empty()
    assert page.evaluate("sessionStorage.getItem('glassbox.apiKey')") == key
    assert page.evaluate("localStorage.length") == 0
    # the next request sends the key without asking
    page.fill("#chat-input", "Again")
    page.press("#chat-input", "Enter")
    page.wait_for_function(f"document.querySelectorAll('.msg.assistant').length == 2 && {IDLE}")
    expect(dialog).to_be_hidden()


def test_every_view_fits_an_800_pixel_window(browser: Browser, tiny_server: LiveServer) -> None:
    with watched_page(browser, width=800, height=700) as narrow:
        page = narrow.page
        open_view(page, tiny_server)
        for view in ["chat", "steer", "inspect", "states", "sessions"]:
            page.click(f"#tab-{view}")
            expect(page.locator(f"#view-{view}")).to_be_visible()
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"the {view} view is {overflow} px wider than the window"
        assert narrow.errors == []
