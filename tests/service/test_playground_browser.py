"""The temperature playground in a real headless browser, against a real server on the bundled model.

Debian's Chromium, driven by selenium through Debian's chromedriver (both from
scripts/system-deps.sh; selenium is told the driver's path, so Selenium Manager
never runs and nothing is downloaded). Each test loads the page afresh from a
server on checkpoints/introllm-countdown-tiny and checks what a user sees
against what `/v1/generate` returns for the same request:

- a seeded run shows one coloured token per completion token, each carrying
  the tau, gate decision and log-probability the API returns, with whitespace
  made visible; hovering and the arrow keys show a token's tau as a number;
- a link with the controls in its query string reproduces a comparison run
  (learned tau next to a fixed tau, same prompt and seed), and the page says
  where the two runs part; a screenshot of it is written to the file named by
  `INTROLLM_PLAYGROUND_SCREENSHOT` (default: a temporary file; the README's
  docs/playground.png is made this way);
- a refused request (422) is shown with the server's message; on a server
  with an API key (the tiny test checkpoint), the page asks for the key, shows
  the 401, runs once it is given, and shows a 429 (engine full) and a 503
  (draining) with their Retry-After;
- the page requests nothing from another origin (Chrome's network log and the
  Resource Timing API list every URL), its console stays free of errors
  (scripts, CSP violations), and its Content-Security-Policy is enforced;
- with Samples (n) above 1, one request's n choices are shown side by side,
  each pane showing what its choice in the API's answer holds;
- `/docs` (Swagger UI from the package, service/api/docs_page.py) renders every
  operation with no other origin reachable at all (the browser resolves no
  host but the server's), requesting nothing elsewhere, console clean.

Chromium missing is a failure, not a skip: CI installs it (`make test` runs
scripts/system-deps.sh). What it does not check: the look of the page (the
screenshot is for people), other browsers, timing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest

from service.settings import DEFAULT_CHECKPOINT
from tests.service.support import (
    LiveServer,
    decode_paused,
    settings_for,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PROMPT = "3 5 7 2>24\n"
SEED = 7
MAX_NEW_TOKENS = 48
FIXED_TAU = 1.0
WAIT_S = 120  # generous: the machine may be shared; nothing here asserts a duration


@pytest.fixture(scope="module")
def bundled() -> Iterator[LiveServer]:
    live = start_server(settings_for(DEFAULT_CHECKPOINT))
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: run scripts/system-deps.sh (Debian's chromium and "
                    "chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI and this machine run as root, where Chromium's sandbox refuses to start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1250",
        "--force-device-scale-factor=1",
        "--no-first-run",
        "--disable-background-networking",  # no update checks or other traffic of the browser's own
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        # No host but the test server's resolves: a page that needs another origin (a CDN) breaks here.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


# ---------------------------------------------------------------- helpers


def open_page(driver, server: LiveServer, query: dict | None = None) -> None:
    """Load the page at `/` (redirected to /playground/) and wait until it has read /info."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("performance")  # drop the previous page's entries
    driver.get_log("browser")
    driver.get(f"{server.url}/" + (f"playground/?{urlencode(query)}" if query else ""))
    WebDriverWait(driver, WAIT_S).until(lambda d: d.execute_script("return document.body.dataset.ready === 'true'"))


def set_value(driver, element_id: str, value: str) -> None:
    element = driver.find_element("id", element_id)
    element.clear()
    if value:
        element.send_keys(value)


def wait_finished(driver, panes: int) -> list[dict]:
    """Wait until `panes` runs are on screen and none streams any more; return what they show."""
    from selenium.webdriver.support.ui import WebDriverWait

    def finished(d):
        runs = shown_runs(d)
        return runs if len(runs) == panes and all(r["state"] != "streaming" for r in runs) else False

    return WebDriverWait(driver, WAIT_S).until(finished)


def shown_runs(driver) -> list[dict]:
    """Each pane's mode, state, tokens (the values the page shows) and summary, read from the DOM."""
    return driver.execute_script("""
        return [...document.querySelectorAll('#runs .run')].map(run => ({
            mode: run.dataset.mode,
            state: run.dataset.state,
            tokens: [...run.querySelectorAll('.tok')].map(t => ({
                tau: t.dataset.tau, updated: t.dataset.updated, logprob: t.dataset.logprob,
                glyph: t.querySelector('.glyph').textContent, label: t.getAttribute('aria-label'),
                colour: getComputedStyle(t).backgroundColor, marked: t.classList.contains('updated'),
            })),
            gateDots: run.querySelectorAll('.chart circle.gate').length,
            summary: Object.fromEntries([...run.querySelectorAll('dd')].map(d => [d.dataset.key, d.textContent])),
        }));
    """)


def api_generate(server: LiveServer, **fields) -> dict:
    body = {"prompt": PROMPT, "seed": SEED, "max_new_tokens": MAX_NEW_TOKENS,
            "return_temperatures": True, "return_logprobs": True, **fields}
    with server.client() as client:
        response = client.post("/v1/generate", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def visible(text: str) -> str:
    """A token's text as the page draws it (app.js visibleParts)."""
    if text == "":
        return "∅"
    return text.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍")


def assert_shows(pane: dict, expected: dict, *, batched: bool = False) -> None:
    """The pane shows the API's tokens: count, text, tau, gate and log-prob, in order.

    Tau is compared exactly, unless the page's requests ran `batched` together
    (a comparison) while the API's reference ran alone: float32 sums then
    differ in their last bits (the tokens, drawn from the same counter-based
    noise, still agree, which the text check asserts).
    """
    tokens = expected["tokens"]
    assert pane["state"] == "done"
    assert len(pane["tokens"]) == expected["usage"]["completion_tokens"] == len(tokens)
    assert pane["summary"]["tokens"] == str(len(tokens))
    assert [t["glyph"] for t in pane["tokens"]] == [visible(t["text"]) for t in tokens]
    taus = [t["temperature"] for t in tokens]
    assert [float(t["tau"]) for t in pane["tokens"]] == (pytest.approx(taus, rel=1e-5) if batched else taus)
    assert [t["updated"] == "true" for t in pane["tokens"]] == [t["temperature_updated"] for t in tokens]
    assert [t["marked"] for t in pane["tokens"]] == [t["temperature_updated"] for t in tokens]  # gate firings
    assert pane["gateDots"] == sum(t["temperature_updated"] for t in tokens)  # and on the chart
    assert [float(t["logprob"]) for t in pane["tokens"]] == pytest.approx([t["logprob"] for t in tokens], abs=1e-5)
    for shown in pane["tokens"]:
        assert f"tau {float(shown['tau']):.3f}" in shown["label"]  # the number, not only the colour
    assert pane["summary"]["mean-tau"] == f"{expected['temperature']['mean']:.3f}"
    assert pane["summary"]["updates"] == str(expected["temperature"]["updates"])
    assert pane["summary"]["finish-reason"] == expected["finish_reason"]
    assert pane["summary"]["ttft"].endswith(" ms") and float(pane["summary"]["tokens-per-s"]) > 0


def requested_urls(driver) -> list[str]:
    """Every URL the page asked for since the last call: Chrome's network log and the Resource Timing API."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    urls += driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    return urls


def assert_same_origin_only(driver, server: LiveServer, recorded: str = "/v1/generate") -> None:
    urls = requested_urls(driver)
    origin = urlsplit(server.url)
    assert any(u.endswith(recorded) for u in urls), urls  # the log did record the page's requests
    foreign = [u for u in urls if (urlsplit(u).scheme, urlsplit(u).netloc) != (origin.scheme, origin.netloc)]
    assert foreign == []


def console_errors(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


# ---------------------------------------------------------------- tests


def test_a_seeded_run_shows_each_token_coloured_with_the_tau_the_api_returns(browser, bundled):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.select import Select

    open_page(browser, bundled)
    assert browser.current_url == f"{bundled.url}/playground/"
    assert browser.find_element("id", "prompt").get_property("value") == PROMPT  # prefilled with an example
    Select(browser.find_element("id", "mode")).select_by_value("learned")
    set_value(browser, "seed", str(SEED))
    set_value(browser, "max-new-tokens", str(MAX_NEW_TOKENS))
    # Ctrl+Enter in the prompt box runs.
    browser.find_element("id", "prompt").send_keys(Keys.CONTROL, Keys.ENTER)
    [pane] = wait_finished(browser, 1)

    expected = api_generate(bundled, temperature_mode="learned")
    assert pane["mode"] == "learned"
    assert_shows(pane, expected)
    assert len({t["colour"] for t in pane["tokens"]}) > 1  # coloured by tau, which varies under learned tau
    legend = browser.find_element("id", "legend-scale").text
    assert "0.10" in legend and "2.00" in legend  # the checkpoint's tau range
    # The controls are in the URL, seed included.
    query = dict(part.split("=", 1) for part in urlsplit(browser.current_url).query.split("&"))
    assert (query["seed"], query["max_new_tokens"], query["mode"]) == (str(SEED), str(MAX_NEW_TOKENS), "learned")

    # Hover shows a token's tau; the arrow keys move to the next token and show its tau.
    tokens = browser.find_elements("css selector", "#runs .tok")
    ActionChains(browser).move_to_element(tokens[0]).perform()
    tooltip = browser.find_element("id", "tooltip")
    assert tooltip.is_displayed()
    assert f"tau {expected['tokens'][0]['temperature']:.3f}" in tooltip.text
    browser.execute_script("arguments[0].focus()", tokens[0])
    ActionChains(browser).send_keys(Keys.ARROW_RIGHT).perform()
    assert browser.switch_to.active_element == tokens[1]
    second = expected["tokens"][1]
    assert f"tau {second['temperature']:.3f}" in browser.find_element("id", "inspector").text

    assert_same_origin_only(browser, bundled)
    assert console_errors(browser) == []


def test_a_link_reproduces_a_comparison_of_learned_and_fixed_tau(browser, bundled, tmp_path):
    query = {"prompt": PROMPT, "seed": SEED, "max_new_tokens": MAX_NEW_TOKENS, "temperature": FIXED_TAU,
             "compare": 1}
    open_page(browser, bundled, query)  # the page runs a link's settings on load
    learned_pane, fixed_pane = wait_finished(browser, 2)

    learned = api_generate(bundled, temperature_mode="learned")
    fixed = api_generate(bundled, temperature_mode="fixed", temperature=FIXED_TAU)
    assert (learned_pane["mode"], fixed_pane["mode"]) == ("learned", "fixed")
    assert_shows(learned_pane, learned, batched=True)
    assert_shows(fixed_pane, fixed, batched=True)
    assert {float(t["tau"]) for t in fixed_pane["tokens"]} == {FIXED_TAU}

    # Where the two parted: the first token whose id differs, or where the shorter one ended.
    a, b = ([t["id"] for t in run["tokens"]] for run in (learned, fixed))
    common = min(len(a), len(b))
    parting = next((i for i in range(common) if a[i] != b[i]), None if len(a) == len(b) else common)
    note = browser.find_element("id", "parting").text
    if parting is None:
        assert "same" in note
    else:
        assert f"part at token {parting + 1}" in note
        marked = browser.find_elements("css selector", "#runs .tok.parts")
        assert len(marked) == 2

    # A screenshot with a token's tooltip open, for people (docs/playground.png is one).
    from selenium.webdriver.common.action_chains import ActionChains

    tokens = browser.find_elements("css selector", "#runs .run")[0].find_elements("css selector", ".tok")
    ActionChains(browser).move_to_element(tokens[min(12, len(tokens) - 1)]).perform()
    screenshot = Path(os.environ.get("INTROLLM_PLAYGROUND_SCREENSHOT") or tmp_path / "playground.png")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert_same_origin_only(browser, bundled)
    assert console_errors(browser) == []


def test_a_refused_request_shows_the_servers_422_message(browser, bundled):
    open_page(browser, bundled)
    set_value(browser, "tau-min", "1.5")
    set_value(browser, "tau-max", "0.5")
    browser.find_element("id", "run").click()
    [pane] = wait_finished(browser, 1)

    assert pane["state"] == "error"
    error = browser.find_element("id", "error")
    assert error.is_displayed()
    assert "422" in error.text
    assert "tau_min (1.5) must not exceed tau_max (0.5)" in error.text  # the server's own words
    assert error.get_attribute("role") == "alert"


def test_with_a_key_a_full_engine_and_a_drain_the_page_shows_401_429_and_503(browser, checkpoint_dir):
    key = "playground-key-1"
    live = start_server(settings_for(checkpoint_dir, api_key=key, max_running_requests=1, max_waiting_requests=0))
    try:
        open_page(browser, live)
        key_box = browser.find_element("id", "key-box")
        assert key_box.is_displayed()  # /info says auth is on: the page asks for a key
        assert browser.switch_to.active_element == browser.find_element("id", "api-key")

        def run_and_read_error() -> str:
            browser.find_element("id", "run").click()
            [pane] = wait_finished(browser, 1)
            assert pane["state"] == "error"
            return browser.find_element("id", "error").text

        assert "API key (401)" in run_and_read_error()

        browser.find_element("id", "api-key").send_keys(key)
        browser.find_element("id", "run").click()
        assert wait_finished(browser, 1)[0]["state"] == "done"
        assert browser.execute_script("return sessionStorage.length") == 1  # kept for this tab only
        assert browser.execute_script("return localStorage.length") == 0

        # The one running slot held by another client, no waiting room: 429.
        body = {"prompt": "1 2>3\n", "max_new_tokens": 200, "ignore_eos": True, "stream": True}
        with decode_paused(live.scheduler.engine), live.client(headers={"Authorization": f"Bearer {key}"}) as other:
            with other.stream("POST", "/v1/generate", json=body) as running:
                lines = running.iter_lines()
                assert next(line for line in lines if line.startswith("data:"))
                busy = run_and_read_error()
        live.wait_idle()
        assert "busy (429)" in busy and "Retry after 1 s." in busy

        live.scheduler.begin_drain(1.0)
        unavailable = run_and_read_error()
        assert "not available right now (503)" in unavailable and "draining" in unavailable
        assert "Retry after 1 s." in unavailable
    finally:
        stop_server(live)


def test_the_content_security_policy_blocks_other_origins(browser, bundled):
    open_page(browser, bundled)
    # A fetch to another origin, as injected code would try: the browser refuses it under connect-src.
    violated = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        document.addEventListener('securitypolicyviolation', e => done(e.effectiveDirective), {once: true});
        fetch('http://192.0.2.1/x').catch(() => {});
    """)
    assert violated == "connect-src"


def test_the_api_docs_render_swagger_ui_from_this_server_with_no_other_origin_reachable(browser, bundled):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get_log("performance")
    browser.get_log("browser")
    browser.get(f"{bundled.url}/docs")
    paths = WebDriverWait(browser, WAIT_S).until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('.opblock-summary-path')].map(e => e.textContent.replace(/\\u200b/g, ''))"
    ))
    assert {"/v1/generate", "/v1/completions", "/v1/chat/completions", "/info"} <= set(paths), paths
    assert_same_origin_only(browser, bundled, recorded="/openapi.json")
    scripts = browser.execute_script("return [...document.scripts].map(s => s.src)")
    assert scripts == [f"{bundled.url}/docs/swagger-ui-bundle.js", f"{bundled.url}/docs/init.js"]
    assert console_errors(browser) == []


def test_n_samples_are_shown_side_by_side_each_as_its_choice_in_the_api(browser, bundled):
    # A hot fixed tau, so that three samples of the trained model differ.
    open_page(browser, bundled, {"prompt": PROMPT, "mode": "fixed", "temperature": 2.0, "seed": SEED,
                                 "max_new_tokens": MAX_NEW_TOKENS, "n": 3})
    panes = wait_finished(browser, 3)
    expected = api_generate(bundled, temperature_mode="fixed", temperature=2.0, n=3)
    for pane, choice in zip(panes, expected["choices"], strict=True):
        assert_shows(pane, {"tokens": choice["tokens"], "usage": {"completion_tokens": len(choice["tokens"])},
                            "temperature": choice["temperature"], "finish_reason": choice["finish_reason"]})
    assert len({tuple(t["glyph"] for t in pane["tokens"]) for pane in panes}) > 1  # three samples, not one thrice
    lefts = browser.execute_script("return [...document.querySelectorAll('#runs .run')].map(r => r.offsetLeft)")
    assert len(set(lefts)) > 1  # side by side, not stacked
    assert_same_origin_only(browser, bundled)
    assert console_errors(browser) == []
