"""The web page in a real browser: Playwright for Python driving Debian's chromium (installed by `make setup`
with apt-get; Playwright's own browser download is never used), headless, against the lab broker.

- The page is the `api_broker`'s (it trusts `X-Forwarded-For` as Azure's front end does), so each person's
  browser context adds the header the platform would — the person's scenario address — to its calls to the
  broker, and the broker sees alice at 203.0.113.10, bob at 203.0.113.11.
- People sign in through the lab issuer's authorization endpoint with MSAL.js (code + PKCE), as against
  Entra ID: the page's URL is registered as the SPA's redirect URI, and the issuer's TLS certificate is
  accepted by the browser context (`ignore_https_errors`) as a lab CA would be.
- Every request a page makes is recorded; `Browser.close_all` asserts none went anywhere but the broker and
  the sign-in authority, and that the console showed no error (a CSP violation is one).
- Screenshots of the main screens go to docs/web/ (shown in docs/web.md), made by the same run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from lab.scenario import Scenario

if TYPE_CHECKING:
    from playwright.sync_api import Browser as PwBrowser
    from playwright.sync_api import BrowserContext, Page, Playwright, Route, ViewportSize

    from jitbroker.store import GrantStore
    from lab.arm.admin import ArmAdmin
    from lab.broker import BrokerProcess
    from lab.issuer import TokenIssuer

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "docs" / "web"
STATIC = ROOT / "jitbroker" / "static"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
LAPTOP: ViewportSize = {"width": 1280, "height": 900}
PHONE: ViewportSize = {"width": 390, "height": 844}
WAIT_MS = 20_000
NAVIGATION_TRIES = 3


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass
class Person:
    """One person's browser context and page, and every request the page made."""

    name: str
    context: BrowserContext
    page: Page
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)


class Browser:
    """Opens a browser context per person, signs them in on the page, and checks where the pages went."""

    def __init__(self, browser: PwBrowser, broker_url: str, issuer: TokenIssuer, scenario: Scenario) -> None:
        self.browser = browser
        self.broker_url = broker_url
        self.issuer = issuer
        self.scenario = scenario
        self.people: list[Person] = []

    @property
    def allowed_origins(self) -> set[str]:
        return {origin(self.broker_url), origin(self.issuer.url)}

    def open(self, name: str, *, viewport: ViewportSize | None = None) -> Person:
        """A fresh browser context for `name`, on the page, not yet signed in."""
        context = self.browser.new_context(
            ignore_https_errors=True, viewport=viewport or LAPTOP, accept_downloads=True, locale="en-GB"
        )
        address = self.scenario.user(name).address or "203.0.113.99"

        def forwarded_for(route: Route) -> None:
            # What Azure's front end adds: the caller's public address (the broker trusts the right-most).
            route.continue_(headers={**route.request.headers, "x-forwarded-for": address})

        context.route(f"{self.broker_url}/api/**", forwarded_for)
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        person = Person(name=name, context=context, page=page)
        page.on("request", lambda request: person.requests.append(request.url))
        page.on("console", lambda message: person.console_errors.extend(_problem(message.type, message.text)))
        page.on("pageerror", lambda error: person.console_errors.append(str(error)))
        self.people.append(person)
        page.goto(f"{self.broker_url}/")
        return person

    def sign_in(self, name: str, *, viewport: ViewportSize | None = None) -> Person:
        """`name` signs in through the lab issuer's sign-in page and lands back on the page, signed in."""
        from playwright.sync_api import Error, expect

        person = self.open(name, viewport=viewport)
        page = person.page
        for attempt in range(NAVIGATION_TRIES):
            try:
                if attempt:
                    page.goto(f"{self.broker_url}/")
                    page.locator("#signed-out:visible, #me:visible").first.wait_for()
                    if page.locator("#me").is_visible():
                        break  # the sign-in came through before the network changed
                page.get_by_role("button", name="Sign in with Microsoft Entra ID").click()
                page.wait_for_url(f"{self.issuer.url}/**")
                page.check(f"input[name=user][value={name}]")
                page.get_by_role("button", name="Sign in", exact=True).click()
                page.wait_for_url(f"{self.broker_url}/**")
                break
            except Error as err:
                # Chromium aborts what is in flight when the host's network changes (another process adding a
                # network namespace, say): start the sign-in again.
                if "ERR_NETWORK_CHANGED" not in str(err) or attempt + 1 == NAVIGATION_TRIES:
                    raise
        user = self.scenario.user(name)
        expect(page.locator("#me-title")).to_contain_text(user.display_name)
        expect(page.locator("body")).to_have_attribute("data-ready", "true")  # every list has its answer
        return person

    def close_all(self) -> None:
        """Close every context; assert the pages asked the broker and the authority only, logged no error."""
        elsewhere: dict[str, list[str]] = {}
        errors: dict[str, list[str]] = {}
        for person in self.people:
            person.context.close()
            away = [u for u in person.requests if origin(u) not in self.allowed_origins]
            if away:
                elsewhere[person.name] = away
            if person.console_errors:
                errors[person.name] = person.console_errors
        self.people = []
        assert elsewhere == {}, "the page asked someone other than the broker and the sign-in authority"
        assert errors == {}, "the page logged errors (a CSP violation is one)"


def _problem(kind: str, text: str) -> list[str]:
    """A console message that says something went wrong; a refusal the page shows in words is none."""
    refused = text.startswith("Failed to load resource: the server responded with a status of 4")
    return [text] if kind == "error" and not refused else []


# Playwright's sync API runs an event loop in this thread while it is started: module scope stops it before
# tests elsewhere need asyncio.run in this thread.
@pytest.fixture(scope="module")
def playwright_session() -> Iterator[Playwright]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (make setup installs it with apt-get, as root)")
    if not (STATIC / "app.js").exists():
        pytest.fail("the web page is not built: run make setup (npm ci && npm run build)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="module")
def chromium(playwright_session: Playwright) -> Iterator[PwBrowser]:
    browser = playwright_session.chromium.launch(
        executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
    )
    yield browser
    browser.close()


@pytest.fixture(scope="session")
def page_url(api_broker: BrokerProcess, issuer: TokenIssuer) -> str:
    """The page's URL, registered with the lab issuer as the SPA's redirect URI."""
    return issuer.register_redirect_uri(f"{api_broker.url}/")


@pytest.fixture
def clean_web(clean_lab: ArmAdmin, api_store: GrantStore) -> ArmAdmin:
    """A fresh ARM world, no open grant, and no request left waiting for an approver by an earlier test."""
    from jitbroker.model import GrantStatus

    for grant in api_store.list_all(status=GrantStatus.AWAITING_APPROVAL):
        api_store.replace(replace(grant, status=GrantStatus.WITHDRAWN, reason="test reset"))
    return clean_lab


@pytest.fixture
def web(
    chromium: PwBrowser, page_url: str, issuer: TokenIssuer, scenario: Scenario, clean_web: ArmAdmin
) -> Iterator[Browser]:
    """`web.sign_in("alice")` → a signed-in page; at the end, where every page went is checked."""
    browser = Browser(chromium, page_url.rstrip("/"), issuer, scenario)
    try:
        yield browser
    finally:
        browser.close_all()


@pytest.fixture(scope="session")
def shots() -> Callable[..., Path]:
    """`shots(page, "name")`: a screenshot of the whole page into docs/web/name.png."""
    SHOTS.mkdir(parents=True, exist_ok=True)

    def take(page: Page, name: str, **options: Any) -> Path:
        path = SHOTS / f"{name}.png"
        page.screenshot(
            path=str(path), **{"full_page": True, "animations": "disabled", "caret": "hide", **options}
        )
        return path

    return take
