"""The web page in Debian's chromium: sign in through the lab issuer (MSAL.js, code + PKCE), open web-01's
SSH port and watch it count down with the rule in the emulator's NSG, extend, revoke; refusals in the API's
words; nobody sees another person's door; an approval round trip between two browsers; admins' view of
every door and the audit trail; an .rdp file; a phone's layout; the keyboard path. Screenshots of the main
screens go to docs/web/ (docs/web.md shows them)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.broker.conftest import broker_rules, sources
from tests.web.conftest import PHONE, WAIT_MS, Browser, Person

pytestmark = pytest.mark.timeout(120)

Shots = Callable[..., Path]
JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
TOKEN_PARAMETER = re.compile(r"[?&#](access|id|refresh)_token=")


def vm_card(page: Page, name: str) -> Any:
    return page.locator(f"article.vm[data-vm='{name}']")


def open_door(person: Person, vm: str, *, port: int, duration: str | None = None, why: str = "") -> Any:
    """Ask for `vm`'s `port` on the page; the grant's card once it is open."""
    card = vm_card(person.page, vm)
    card.get_by_label("Port").select_option(str(port))
    if duration:
        card.get_by_label("For").select_option(duration)
    if why:
        card.get_by_label("Justification").fill(why)
    card.get_by_role("button", name="Request access").click()
    grant = person.page.locator("#grant-list article.grant.active", has_text=vm)
    expect(grant).to_be_visible()
    return grant


def grant_id(card: Any) -> str:
    found = card.get_attribute("data-grant")
    assert found
    return str(found)


def test_alice_opens_web01_watches_the_countdown_extends_and_revokes(web: Browser, clean_web, shots) -> None:
    alice = web.sign_in("alice")
    page = alice.page
    expect(page.locator("#me-address")).to_have_text("203.0.113.10")
    expect(page.locator("#me-note")).to_contain_text("lets in 203.0.113.10 only")
    expect(vm_card(page, "web-01")).to_contain_text("running")

    grant = open_door(alice, "web-01", port=22, duration="30m")
    timer = grant.get_by_role("timer")
    expect(timer).to_have_text(re.compile(r"^(29:[0-5]\d|30:00)$"))
    before = timer.inner_text()
    expect(timer).not_to_have_text(before, timeout=3000)  # it counts down, live
    expect(grant.get_by_label("Connect with")).to_have_text(re.compile(r"^ssh azureuser@\S+ -p 22$"))
    expect(grant).to_contain_text("Lets in 203.0.113.10/32 only")
    (rule,) = broker_rules(clean_web.nsg("web-01-nsg"))
    assert sources(rule) == {"203.0.113.10/32"}
    assert rule["properties"]["destinationPortRange"] == "22"
    page.locator("#status").evaluate("el => el.textContent = ''")  # the screenshot shows the page at rest
    page.evaluate("document.activeElement.blur()")
    shots(page, "my-access")

    grant.get_by_label("Keep open for").select_option("2h")
    grant.get_by_role("button", name="Extend").click()
    expect(page.locator("#status")).to_contain_text("web-01 port 22 now closes at")
    expect(grant.get_by_role("timer")).to_have_text(re.compile(r"^(1:59:[0-5]\d|2:00:00)$"))
    (extended,) = broker_rules(clean_web.nsg("web-01-nsg"))
    assert extended["name"] != rule["name"]  # the rule carries its expiry in its name

    grant.get_by_role("button", name="Revoke").click()
    expect(page.locator("#status")).to_contain_text("Door closed: web-01 port 22")
    expect(page.locator("#grant-list")).to_contain_text("No door is open for you.")
    expect(page.locator("#closed-list")).to_contain_text("web-01")
    assert broker_rules(clean_web.nsg("web-01-nsg")) == []

    assert alice.context.cookies() == [], "tokens live in session storage, never in a cookie"
    tokens_in_urls = [u for u in alice.requests if JWT.search(u) or TOKEN_PARAMETER.search(u)]
    assert tokens_in_urls == [], "a token went into a URL"


def test_a_refused_request_shows_the_apis_own_message(web: Browser, as_user, shots) -> None:
    said = as_user("alice").post("/api/v1/grants", json={"vm": "stopped-01", "port": 22})
    assert said.status_code == 409
    message = said.json()["error"]["message"]

    alice = web.sign_in("alice")
    card = vm_card(alice.page, "stopped-01")
    expect(card).to_contain_text("deallocated")
    card.get_by_role("button", name="Request access").click()
    problem = card.get_by_role("alert")
    expect(problem).to_have_text(message)
    expect(alice.page.locator("#grant-list")).to_contain_text("No door is open for you.")
    card.scroll_into_view_if_needed()
    shots(alice.page, "refused")

    tokens = "Object.keys(sessionStorage).filter(k => /token/i.test(k))"
    assert alice.page.evaluate(tokens), "MSAL keeps this tab's tokens in session storage"
    alice.page.get_by_role("button", name="Sign out").click()
    expect(alice.page.get_by_role("button", name="Sign in with Microsoft Entra ID")).to_be_visible()
    assert alice.page.evaluate(tokens) == [], "signing out forgets this tab's tokens"


def test_bob_cannot_see_alices_door(web: Browser, as_user) -> None:
    alice = web.sign_in("alice")
    alices = grant_id(open_door(alice, "web-01", port=22))

    bob = web.sign_in("bob")
    expect(bob.page.locator("#grant-list")).to_contain_text("No door is open for you.")
    assert alices not in bob.page.content()
    expect(bob.page.locator("#everyone")).to_be_hidden()  # not an admin: no one else's doors
    assert as_user("bob").get(f"/api/v1/grants/{alices}").status_code in (403, 404)


def test_an_approval_round_trip_between_two_browsers(web: Browser, clean_web, shots) -> None:
    bob = web.sign_in("bob")
    card = vm_card(bob.page, "prod-01")
    card.get_by_label("For").select_option("30m")
    card.get_by_label("Justification").fill("deploy hotfix INC-4711")
    expect(card).to_contain_text("needs approval")
    expect(card.locator(".approval-note")).to_contain_text("JIT.Approver role must say yes")
    expect(vm_card(bob.page, "web-01").locator(".approval-note")).to_have_count(0)
    card.get_by_role("button", name="Ask for approval").click()
    waiting = bob.page.locator("#grant-list article.grant.awaiting_approval", has_text="prod-01")
    expect(waiting).to_contain_text("Waiting for approval")
    expect(bob.page.locator("#status")).to_contain_text("waits for an approver")
    assert broker_rules(clean_web.nsg("prod-01-nsg")) == []
    shots(bob.page, "waiting-for-approval")

    carol = web.sign_in("carol")
    ask = carol.page.locator("#approval-list article.ask", has_text="prod-01")
    expect(ask).to_contain_text("bob@contoso.test")
    expect(ask).to_contain_text("deploy hotfix INC-4711")
    ask.get_by_role("button", name="Deny").click()  # a deny needs a reason: the page says so first
    expect(ask.get_by_role("alert")).to_contain_text("Say why you deny it")
    ask.get_by_label("Reason").fill("change CHG-42")
    shots(carol.page, "approvals")
    ask.get_by_role("button", name="Approve").click()
    expect(carol.page.locator("#status")).to_contain_text("Approved")
    expect(carol.page.locator("#approval-list")).to_contain_text("Nothing waits for you.")

    opened = bob.page.locator("#grant-list article.grant.active", has_text="prod-01")
    expect(opened).to_be_visible(timeout=WAIT_MS)  # bob's page polls the request until it opens
    expect(bob.page.locator("#status")).to_contain_text(
        re.compile(r"approved by (Carol Operator|carol@contoso.test)")
    )
    expect(opened.get_by_role("timer")).to_have_text(re.compile(r"^(29:[0-5]\d|30:00)$"))
    (rule,) = broker_rules(clean_web.nsg("prod-01-nsg"))
    assert sources(rule) == {"203.0.113.11/32"}


def test_an_admin_sees_every_door_revokes_one_and_reads_the_audit_trail(
    web: Browser, clean_web, shots
) -> None:
    alice = web.sign_in("alice")
    alices = grant_id(open_door(alice, "web-01", port=22))
    expect(alice.page.locator("#audit")).to_be_hidden()  # neither admin nor auditor

    carol = web.sign_in("carol")
    page = carol.page
    row = page.locator(f"#everyone-list tr[data-grant='{alices}']")
    expect(row).to_contain_text("alice@contoso.test")
    expect(row).to_contain_text("203.0.113.10/32")
    audit = page.locator("#audit-list")
    expect(audit).to_contain_text("granted")
    page.locator("#audit-form").get_by_label("VM").fill("web-01")
    page.locator("#audit-form").get_by_role("button", name="Show").click()
    expect(audit).to_have_attribute("data-query", re.compile(r"vm=web-01"))
    expect(audit.locator("tbody tr").first).to_contain_text("web-01")
    shots(page, "everyone-and-audit")

    row.get_by_role("button", name=re.compile("Revoke")).click()
    expect(page.locator("#status")).to_contain_text("Door closed: web-01 port 22 (alice@contoso.test)")
    expect(page.locator("#everyone-list")).to_contain_text("No door is open for anyone.")
    assert broker_rules(clean_web.nsg("web-01-nsg")) == []
    alice.page.locator("#grants-refresh").click()
    expect(alice.page.locator("#grant-list")).to_contain_text("No door is open for you.")


def test_an_rdp_door_comes_with_an_rdp_file(web: Browser) -> None:
    alice = web.sign_in("alice")
    grant = open_door(alice, "win-01", port=3389)
    with alice.page.expect_download() as waited:
        grant.get_by_role("button", name="Download win-01.rdp").click()
    download = waited.value
    assert download.suggested_filename == "win-01.rdp"
    text = Path(download.path()).read_bytes().decode("utf-8")  # as written: CRLF, as mstsc expects
    lines = text.split("\r\n")
    assert re.fullmatch(r"full address:s:\S+:3389", lines[0])
    assert "username:s:labadmin" in lines and "prompt for credentials:i:1" in lines


def test_the_page_fits_a_phone(web: Browser, shots) -> None:
    alice = web.sign_in("alice", viewport=PHONE)
    open_door(alice, "web-01", port=22)
    page = alice.page
    page.locator("#status").evaluate("el => el.textContent = ''")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "sideways scrolling"
    page.locator("#grants").scroll_into_view_if_needed()
    shots(page, "phone", full_page=False)


def test_the_keyboard_alone_opens_and_closes_a_door(web: Browser, shots) -> None:
    person = web.open("alice")
    page = person.page
    shots(page, "signed-out")
    page.keyboard.press("Tab")  # the skip link
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Sign in with Microsoft Entra ID"
    page.keyboard.press("Enter")
    page.wait_for_url(f"{web.issuer.url}/**")
    page.check("input[name=user][value=alice]")
    page.keyboard.press("Enter")  # submits the issuer's form
    page.wait_for_url(f"{web.broker_url}/**")

    card = vm_card(page, "web-01")
    card.get_by_label("Port").focus()
    for _ in range(3):  # duration, justification, the button
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Request access"
    page.keyboard.press("Enter")
    grant = page.locator("#grant-list article.grant.active", has_text="web-01")
    expect(grant).to_be_focused()  # the answer is where focus lands
    for _ in range(4):  # Copy the ssh command, the extend duration, Extend, Revoke
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Revoke"
    page.keyboard.press("Enter")
    expect(page.locator("#grant-list")).to_contain_text("No door is open for you.")
    expect(page.locator("#grants-title")).to_be_focused()
