"""The browser page at `GET /` against the whole stack (JWT on, as `make run`): headless chromium with a fake
microphone playing an espeak-ng sentence, the token from the URL fragment, live partials then a final on
the page, Stop, the record link; a connection cut mid-sentence and resumed by the page; outages it cannot
resume from at once (a black hole, longer than the resume window, for good); and a refused token shown on
the page (docs/web.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page

from devtools.stack import Stack
from tests.browser import chromium, console_problems
from tests.corpus import EN_SENTENCES, SpeechSpec, Utterance, build
from tests.e2e.conftest import resumes
from tests.faultproxy import fault_proxy
from tests.poll import seconds, wait_for
from tests.records import decoded_s, fetch
from tests.wer import wer

pytestmark = pytest.mark.e2e
SENTENCE = EN_SENTENCES[5]  # "Can you send me the report before lunch?"
ENDED = "() => document.getElementById('status').textContent === 'Ended (flush).'"
# Every element the page changes while the partial text is replaced in place, seen from inside the page.
WATCH_PARTIALS = """() => {
  window.partialTexts = [];
  const partial = document.getElementById("partial");
  new MutationObserver(() => { if (partial.textContent) window.partialTexts.push(partial.textContent); })
    .observe(partial, { childList: true, characterData: true, subtree: true });
}"""
WATCH_STATUS = """() => {
  window.statusTexts = [];
  const status = document.getElementById("status");
  new MutationObserver(() => window.statusTexts.push(status.textContent))
    .observe(status, { childList: true, characterData: true, subtree: true });
}"""
# The audio the page captured: every chunk the capture worklet posts to it, counted before the page sees it.
COUNT_CAPTURED = """(() => {
  window.capturedBytes = 0;
  const onmessage = Object.getOwnPropertyDescriptor(MessagePort.prototype, "onmessage");
  Object.defineProperty(MessagePort.prototype, "onmessage", {
    configurable: true,
    get() { return onmessage.get.call(this); },
    set(handler) {
      onmessage.set.call(this, (e) => {
        if (e.data && e.data.type === "audio") window.capturedBytes += e.data.pcm.byteLength;
        handler(e);
      });
    },
  });
})();"""
STATUS_SEEN = "prefix => window.statusTexts.some(t => t.startsWith(prefix))"


@pytest.fixture(scope="module")
def web_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # A resume window a test can outlast: the page's second reconnection comes 11.5 s after a drop when the
    # first was not answered (10 s), the fifth 15.5 s after it.
    env = {"LOG_LEVEL": "WARNING", "ASR_ENGINE": "whisper", "ASR_MODEL": "tiny.en", "RESUME_WINDOW_S": "13"}
    with Stack(("vad", "asr", "compress"), env=env, workdir=tmp_path_factory.mktemp("records")) as stack:
        yield stack


def ms(n: float) -> float:
    """A Playwright timeout (milliseconds) of `n` time units."""
    return seconds(n) * 1000


def final_texts(page: Page) -> list[str]:
    """The finals on the page, without their time spans."""
    return [str(t) for t in page.eval_on_selector_all("#finals .final", "ps => ps.map(p => p.lastChild.textContent)")]


def test_the_page_transcribes_the_microphone(web_stack: Stack, tmp_path: Path) -> None:
    sentence = build(SpeechSpec("web-page", (Utterance(SENTENCE, "en", "en-us"),), lead_in_s=0.5, tail_s=3.0))
    token = web_stack.token("web-page")
    with chromium(fake_audio=sentence.path) as browser:
        page = browser.new_page(viewport={"width": 860, "height": 400})
        problems = console_problems(page)
        page.goto(f"{web_stack.http_base}/#token={token}")
        assert page.input_value("#token") == token
        assert page.url == f"{web_stack.http_base}/"  # the token left the address bar
        page.evaluate(WATCH_PARTIALS)
        page.select_option("#lang", "en")
        page.click("#start")
        page.wait_for_selector("#finals .final", timeout=ms(30))
        assert "language en (chosen)" in page.text_content("#status")
        assert page.is_disabled("#start") and page.is_enabled("#stop")
        page.click("#stop")
        page.wait_for_selector("#record-link", state="visible", timeout=ms(20))
        page.wait_for_function(ENDED, timeout=ms(10))
        page.screenshot(path=tmp_path / "web_page.png")
        finals = final_texts(page)
        partials = page.evaluate("window.partialTexts")
        record = page.get_attribute("#record-link", "href")
        assert page.is_enabled("#start") and page.is_disabled("#stop")
        assert page.is_hidden("#error"), page.text_content("#error")
        assert page.eval_on_selector_all(".partial", "ps => ps.length") == 1 and not page.text_content("#partial")
    # One sentence, once (the fake microphone does not loop), on the page as the gateway transcribed it.
    assert len(finals) == 1 and wer([SENTENCE], finals) <= 0.25, finals
    assert partials, "the sentence lasts about 3 s: the page showed partials before its final"
    assert record is not None and record.startswith("http://127.0.0.1:") and "sig=" in record
    assert problems == []  # no script error, no Content-Security-Policy violation


@pytest.mark.parametrize(
    ("cut_at_s", "stop_while_down"),
    [
        (2.0, False),  # inside the sentence: it starts at 0.5 s and lasts about 3 s
        (4.5, True),  # after it; the first reconnection refused, Stop pressed before the second
    ],
    ids=["mid-sentence", "stop-while-down"],
)
def test_the_page_resumes_after_a_dropped_connection(web_stack: Stack, cut_at_s: float, stop_while_down: bool) -> None:
    """The page and its socket through a TCP relay (tests/faultproxy.py) that cuts the connection (an RST both
    ways, no close frame): the page reconnects by itself, resumes the session, and shows one transcript; the
    gateway records the audio once, none lost, none twice. Stop while the connection is down: the `flush`
    goes once it is back."""
    sentence = build(SpeechSpec("web-resume", (Utterance(SENTENCE, "en", "en-us"),), lead_in_s=0.5, tail_s=3.0))
    token = web_stack.token("web-resume")
    before = resumes(web_stack)
    with fault_proxy(web_stack.http_base.removeprefix("http://")) as proxy, chromium(sentence.path) as browser:
        page = browser.new_page()
        problems = console_problems(page)
        page.add_init_script(COUNT_CAPTURED)
        page.goto(f"http://{proxy.addr}/#token={token}")  # the page opens its socket on its own origin: the relay
        page.evaluate(WATCH_STATUS)
        page.select_option("#lang", "en")
        loaded = proxy.proxy.upstream_bytes
        page.click("#start")
        wait_for(lambda: proxy.proxy.upstream_bytes - loaded >= cut_at_s * 32000, 20, "the audio up to the cut")
        if stop_while_down:
            proxy.set(refuse=True)  # reconnections cut at once with an RST
        assert proxy.reset() >= 1
        if stop_while_down:
            page.wait_for_function(STATUS_SEEN, arg="Connection lost: reconnecting (attempt 2 ", timeout=ms(10))
            page.click("#stop")
            proxy.clear()
        page.wait_for_function(STATUS_SEEN, arg="Reconnected", timeout=ms(30), polling=50)
        if not stop_while_down:
            page.wait_for_selector("#finals .final", timeout=ms(30))
            page.click("#stop")
        page.wait_for_selector("#record-link", state="visible", timeout=ms(20))
        page.wait_for_function(ENDED, timeout=ms(10))
        statuses = page.evaluate("window.statusTexts")
        captured_s = page.evaluate("window.capturedBytes") / 32000
        finals = final_texts(page)
        record = page.get_attribute("#record-link", "href")
        assert page.is_hidden("#error"), page.text_content("#error")
        assert record is not None
        status, body = fetch(record)
    assert proxy.proxy.connections >= 2 and proxy.proxy.resets >= 1 and (proxy.proxy.refused >= 1) == stop_while_down
    assert any(t.startswith("Connection lost: reconnecting (attempt 1 of 5)") for t in statuses), statuses
    assert wer([SENTENCE], [" ".join(finals)]) <= 0.25, finals
    assert resumes(web_stack) == before + 1
    # One timeline: the recording holds every byte the microphone gave the page, once.
    assert status == 200 and decoded_s(body) == pytest.approx(captured_s, abs=0.05), (decoded_s(body), captured_s)
    # Chromium logs each connection refused at the handshake as a console error; nothing else is one.
    assert [p for p in problems if not (stop_while_down and "WebSocket connection to" in p)] == []


@pytest.mark.parametrize(
    "outage",
    ["black-holed", "too-long", "never-back"],
)
def test_the_page_after_a_drop_it_cannot_resume_at_once(web_stack: Stack, outage: str) -> None:
    """After the cut, reconnections meet a network that never answers (`black-holed`: the first attempt is
    given up after 10 s, the second resumes), an outage longer than the gateway's resume window
    (`too-long`: the fifth attempt reaches the gateway, which refuses with `resume_expired`), or no
    gateway at all (`never-back`: five attempts, then the page says so). Either way the page ends the
    session plainly and Start works again."""
    sentence = build(SpeechSpec("web-outage", (Utterance(SENTENCE, "en", "en-us"),), lead_in_s=0.5, tail_s=3.0))
    token = web_stack.token("web-outage")
    with fault_proxy(web_stack.http_base.removeprefix("http://")) as proxy, chromium(sentence.path) as browser:
        page = browser.new_page()
        page.goto(f"http://{proxy.addr}/#token={token}")
        page.evaluate(WATCH_STATUS)
        page.select_option("#lang", "en")
        page.click("#start")
        page.wait_for_function(STATUS_SEEN, arg="Listening (flow ", timeout=ms(20))
        proxy.set(**({"blackhole": True} if outage == "black-holed" else {"refuse": True}))
        assert proxy.reset() >= 1
        if outage == "black-holed":
            page.wait_for_function(STATUS_SEEN, arg="Connection lost: reconnecting (attempt 2 ", timeout=ms(20))
            proxy.clear()
            page.wait_for_function(STATUS_SEEN, arg="Reconnected", timeout=ms(20), polling=50)
            page.click("#stop")
            page.wait_for_function(ENDED, timeout=ms(30))
            assert page.is_hidden("#error"), page.text_content("#error")
            assert page.is_visible("#record-link")
            return
        if outage == "too-long":
            page.wait_for_function(STATUS_SEEN, arg="Connection lost: reconnecting (attempt 5 ", timeout=ms(20))
            proxy.clear()
        page.wait_for_selector("#error", state="visible", timeout=ms(30))
        page.wait_for_function("() => !document.getElementById('start').disabled", timeout=ms(5))
        error = page.text_content("#error") or ""
        status = page.text_content("#status")
    if outage == "too-long":
        assert error.startswith("Error resume_expired: ") and "Press Start for a new one" in error, error
    else:
        assert error.startswith("The connection was lost and could not be resumed (5 attempts"), error
    assert status == "Stopped."


@pytest.mark.parametrize(
    ("fragment", "code", "advice"),
    [
        ("#token=not-a-jwt", "auth_invalid", "The token was not accepted"),
        ("", "auth_required", "This gateway needs a token"),
    ],
)
def test_a_refused_token_is_shown_plainly(web_stack: Stack, fragment: str, code: str, advice: str) -> None:
    with chromium() as browser:
        page = browser.new_page()
        page.goto(f"{web_stack.http_base}/{fragment}")
        page.click("#start")
        page.wait_for_selector("#error", state="visible", timeout=ms(10))
        error = page.text_content("#error") or ""
        page.wait_for_function("() => !document.getElementById('start').disabled", timeout=ms(5))
        assert error.startswith(f"Error {code}: ") and advice in error, error
        assert page.is_hidden("#record") and page.text_content("#finals") == ""
