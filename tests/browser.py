"""Debian's chromium, headless, driven by Playwright (the `playwright` package from PyPI; it never downloads a
browser here: it launches /usr/bin/chromium, installed by `make setup`), with a fake microphone.

Chromium's fake capture device plays a WAV file (`--use-file-for-fake-audio-capture`); the file loops unless
its name ends with `%noloop`, which every test here uses, so a sentence is heard once. Past the end of the
file the device keeps repeating its last block: a test file ends with silence."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from playwright.async_api import Browser as AsyncBrowser
from playwright.async_api import async_playwright
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",  # the microphone prompt answers yes
    "--use-fake-device-for-media-stream",
)


def launch_args(fake_audio: Path | None) -> list[str]:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: `make apt` installs Debian's chromium"
    args = list(FLAGS)
    if fake_audio is not None:
        args.append(f"--use-file-for-fake-audio-capture={fake_audio}%noloop")
    return args


@contextmanager
def chromium(fake_audio: Path | None = None) -> Iterator[Browser]:
    """Headless chromium whose microphone plays `fake_audio` once (a 16-bit WAV), or a beep without it."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=launch_args(fake_audio), headless=True)
        try:
            yield browser
        finally:
            browser.close()


@asynccontextmanager
async def async_chromium(fake_audio: Path | None = None) -> AsyncIterator[AsyncBrowser]:
    """`chromium` for async tests (a gateway in the test's own event loop)."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=launch_args(fake_audio), headless=True)
        try:
            yield browser
        finally:
            await browser.close()


def console_problems(page: Page) -> list[str]:
    """Collects the page's uncaught errors and console errors (a CSP violation is one) as they happen."""
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    return problems
