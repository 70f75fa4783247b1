"""The console (GET /admin) in a real headless Chromium, driven by Selenium.

Usage: console_browser.py PHASE BASE_URL ARTIFACT_DIR, with the scenario in the environment
(CONSOLE_* variables, set by tests/integration/console.rs). Phases:

  org       a wrong token is refused with the API's own words; sign in with an org token; the
            org's agents and no other org's; the activity feed with decision provenance; a refused
            send found by the recipient's phone number, and the rule that refused it; consent as of
            an instant before its revocation; alerts; Verify refused to an org token; sign out.
  verify    sign in with the master token and recompute a chain: OK.
  broken    the same after the test tampered one stored event: BROKEN at that sequence; then ten
            wrong tokens lock the browser's IP out, as any other client.

Every view is saved as a PNG under ARTIFACT_DIR. The browser's console log must hold no CSP
violation and no error, except the refusals a phase provokes on purpose (401, then 429).
Selenium is handed /usr/bin/chromedriver (Debian's chromium-driver): Selenium Manager never runs.
"""

from __future__ import annotations

import os
import sys
import tempfile

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

WAIT = 30  # seconds a page may take to show what is awaited (a bound, not an assertion on speed)


def browser(profile: str) -> webdriver.Chrome:
    # The driver is given, and Selenium Manager is told to stay offline should it run at all.
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1280,800"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=options)
    viewport(driver, 1280, 800)
    return driver


def viewport(driver: webdriver.Chrome, width: int, height: int, mobile: bool = False) -> None:
    """The page's own viewport (the window size would include the browser's frame)."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
    )


class Console:
    def __init__(self, driver: webdriver.Chrome, base: str, artifacts: str):
        self.d, self.base, self.artifacts = driver, base.rstrip("/"), artifacts
        self.log: list[dict] = []

    def wait(self, condition, message: str):
        return WebDriverWait(self.d, WAIT).until(condition, message)

    def text_in(self, element_id: str, text: str) -> str:
        self.wait(EC.text_to_be_present_in_element((By.ID, element_id), text), f"#{element_id} shows {text!r}")
        return self.d.find_element(By.ID, element_id).text

    def open(self, route: str = "") -> None:
        self.d.get(self.base + "/admin" + route)
        self.wait(EC.presence_of_element_located((By.ID, "signin-form")), "the page loads")

    def go(self, route: str, title: str) -> None:
        self.d.execute_script("location.hash = arguments[0]", route)
        self.wait(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#view h1"), title), f"{route} shows {title}")

    def sign_in(self, token: str) -> None:
        field = self.d.find_element(By.ID, "token")
        field.clear()
        field.send_keys(token)
        self.d.find_element(By.CSS_SELECTOR, "#signin-form button[type=submit]").click()

    def shot(self, name: str) -> None:
        path = os.path.join(self.artifacts, name + ".png")
        assert self.d.save_screenshot(path), path
        print(f"screenshot {path}")

    def drain_log(self) -> list[dict]:
        entries = self.d.get_log("browser")
        self.log.extend(entries)
        return entries

    def assert_clean_log(self, allowed_statuses: tuple[int, ...] = ()) -> None:
        """No CSP violation, no error: only the refusals the phase provoked on purpose."""
        self.drain_log()
        for entry in self.log:
            message = entry.get("message", "")
            assert "Content Security Policy" not in message and "Refused to" not in message, f"CSP violation: {message}"
            if entry.get("level") in ("SEVERE", "WARNING"):
                expected = any(f"status of {s} " in message for s in allowed_statuses) and "/admin/api/" in message
                assert expected, f"browser console: {entry}"
        print(f"PASS browser console: {len(self.log)} entries, no CSP violation, no unexpected error")


def env(name: str) -> str:
    value = os.environ.get(name)
    assert value, f"{name} is set by tests/integration/console.rs"
    return value


def phase_org(c: Console) -> None:
    org_token, other_agent = env("CONSOLE_ORG_TOKEN"), env("CONSOLE_OTHER_AGENT")
    agents = set(env("CONSOLE_ORG_AGENTS").split(","))
    phone, rule = env("CONSOLE_PHONE"), env("CONSOLE_RULE")
    contact, before_revocation = env("CONSOLE_CONTACT"), env("CONSOLE_BEFORE_REVOCATION")

    c.open()
    c.sign_in("0" * 64)
    refusal = c.text_in("signin-error", "Invalid admin token")
    assert "401" in refusal, refusal
    assert c.d.execute_script("return sessionStorage.length") == 0, "a refused token is not kept"
    c.shot("signin-refused")
    print(f"PASS a wrong token shows the API's refusal: {refusal}")

    c.sign_in(org_token)
    c.text_in("who", "Org token")
    stored = c.d.execute_script("return Object.values(sessionStorage)")
    assert stored == [org_token], "the token is kept in sessionStorage"
    assert c.d.get_cookies() == [], "no cookie"
    print("PASS signed in with the org token; kept in sessionStorage, no cookie")

    c.go("#/agents", "Agents and limits")
    c.wait(EC.presence_of_element_located((By.CSS_SELECTOR, "article.agent")), "agents are listed")
    shown = {e.get_attribute("data-agent") for e in c.d.find_elements(By.CSS_SELECTOR, "article.agent")}
    assert shown == agents, (shown, agents)
    assert other_agent not in c.d.page_source, "another org's agent is not shown"
    meters = c.d.find_elements(By.CSS_SELECTOR, "article.agent meter")
    assert len(meters) >= 3 * len(agents), "usage bars against the limits"
    c.shot("agents")
    viewport(c.d, 390, 844, mobile=True)
    c.shot("agents-phone")
    viewport(c.d, 1280, 800)
    print(f"PASS the org's agents {sorted(shown)} and no other org's")

    c.go("#/activity", "Activity")
    c.wait(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#view .status"), "head position"), "the feed is read")
    blocked = [s for s in c.d.find_elements(By.CSS_SELECTOR, "details.event summary") if "MessageBlocked" in s.text]
    assert blocked, "the refused send is in the feed"
    blocked[0].click()
    details = blocked[0].find_element(By.XPATH, "..")
    refused_by = details.find_element(By.CSS_SELECTOR, "p.refused-by").text
    assert refused_by == f"Refused by {rule}", refused_by
    checks = details.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert len(checks) >= 2, "every check of the decision is listed"
    c.shot("activity")
    print(f"PASS the activity feed shows the decision provenance ({len(checks)} checks, {refused_by})")

    # A new event while the reader is scrolled down waits behind the bar: nothing moves.
    c.d.execute_script("window.scrollTo(0, 300)")
    first = c.d.find_element(By.CSS_SELECTOR, ".feed li")
    top = c.d.execute_script("return arguments[0].getBoundingClientRect().top", first)
    status = c.d.execute_async_script(
        """const done = arguments[arguments.length - 1];
        fetch('/admin/api/agents/' + arguments[0] + '/blocked-channels', {method: 'POST',
              headers: {'Authorization': 'Bearer ' + sessionStorage.getItem('commguard.console.token'),
                        'Content-Type': 'application/json'},
              body: JSON.stringify({blockedChannels: ['whatsapp']})}).then(r => done(r.status));""",
        sorted(agents)[0],
    )
    assert status == 200, status
    c.wait(lambda d: d.find_element(By.CSS_SELECTOR, "button.newer").text.startswith("Show 1 newer"), "the newer bar")
    assert c.d.find_element(By.CSS_SELECTOR, ".feed li") == first, "the list did not change under the reader"
    assert c.d.execute_script("return arguments[0].getBoundingClientRect().top", first) == top, "no layout jump"
    c.d.find_element(By.CSS_SELECTOR, "button.newer").click()
    c.wait(lambda d: "AgentChannelsBlocked" in d.find_element(By.CSS_SELECTOR, ".feed li").text, "the new event on top")
    print("PASS the feed follows headPosition; a new event waits behind the bar while scrolled, with no layout jump")

    c.go("#/audit", "Audit search")
    c.d.find_element(By.ID, "subject").send_keys(phone)
    c.d.find_element(By.ID, "outcome").send_keys("refused")
    c.d.find_element(By.CSS_SELECTOR, "#audit-form button[type=submit]").click()
    c.wait(EC.presence_of_element_located((By.CSS_SELECTOR, "#view tbody tr")), "audit results")
    assert "subject=" in c.d.current_url and "outcome=refused" in c.d.current_url, c.d.current_url
    rows = c.d.find_elements(By.CSS_SELECTOR, "#view tbody tr")
    found = [r for r in rows if "MessageBlocked" in r.text]
    assert found, [r.text for r in rows]
    cell = found[0].find_element(By.CSS_SELECTOR, "td.refused-by").text
    assert cell == rule, (cell, rule)
    c.shot("audit")
    # The search is a bookmark: opening its URL afresh shows the same result.
    url = c.d.current_url
    c.d.get("about:blank")
    c.d.get(url)
    c.wait(EC.presence_of_element_located((By.CSS_SELECTOR, "#view tbody tr")), "the bookmarked search")
    assert any("MessageBlocked" in r.text for r in c.d.find_elements(By.CSS_SELECTOR, "#view tbody tr"))
    print(f"PASS the refused send found by the recipient's number, refused by {cell}; the URL is a bookmark")

    c.go("#/consent", "Consent as of")
    c.d.find_element(By.ID, "contact").send_keys(contact)
    c.d.find_element(By.ID, "as_of").send_keys(before_revocation)
    c.d.find_element(By.CSS_SELECTOR, "#consent-form button[type=submit]").click()
    state = c.text_in("consent-state", "consent record")
    c.wait(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#view table")) == 2, "records and the events behind them")
    tables = c.d.find_elements(By.CSS_SELECTOR, "#view table")
    records, events = tables[0].text, tables[1].text
    assert "granted" in records and "revoked" not in records, records
    assert "ConsentGranted" in events and "ConsentRevoked" not in events, events
    c.shot("consent")
    print(f"PASS consent as of {before_revocation}, before the revocation: granted ({state})")

    c.go("#/alerts", "Alerts")
    c.wait(EC.presence_of_element_located((By.CSS_SELECTOR, "#view [role=status]")), "alerts are read")
    rule = env("CONSOLE_ALERT_RULE")
    groups = [h.text for h in c.d.find_elements(By.CSS_SELECTOR, "#view h2")]
    assert any(g.startswith("MEDIUM") and rule in g for g in groups), groups
    occurrences = c.d.find_elements(By.CSS_SELECTOR, "#view tbody td.num")
    assert occurrences and all(int(o.text) >= 1 for o in occurrences), "each alert shows its occurrences"
    c.shot("alerts")
    print(f"PASS alerts by severity and rule: {groups}")

    c.go("#/verify", "Verify")
    notice = c.d.find_element(By.CSS_SELECTOR, "#view .notice").text
    assert "master token only" in notice, notice
    c.shot("verify-org")
    print("PASS Verify is offered to the master token only, and says so")

    c.d.find_element(By.ID, "signout").click()
    c.wait(EC.visibility_of_element_located((By.ID, "signin")), "sign-in shows again")
    assert c.d.execute_script("return sessionStorage.length") == 0, "sign-out forgets the token"
    assert c.d.find_element(By.ID, "view").text == "", "nothing of the org is left on the page"
    print("PASS sign out forgets the token")
    c.assert_clean_log(allowed_statuses=(401,))


def verify(c: Console, aggregate: str) -> str:
    c.open("#/verify?aggregate=" + aggregate)
    c.sign_in(env("CONSOLE_MASTER_TOKEN"))
    c.text_in("who", "Master token")
    c.wait(EC.presence_of_element_located((By.ID, "recompute")), "the Verify view")
    chosen = c.d.find_element(By.ID, "aggregate").get_attribute("value")
    assert chosen == aggregate, (chosen, aggregate)
    c.d.find_element(By.ID, "recompute").click()
    c.wait(lambda d: d.find_element(By.ID, "verify-result").text.startswith(("OK", "BROKEN", "Could not")), "a verdict")
    return c.d.find_element(By.ID, "verify-result").text


def phase_verify(c: Console) -> None:
    aggregate = env("CONSOLE_AGGREGATE")
    verdict = verify(c, aggregate)
    assert verdict.startswith(f"OK: {aggregate}, "), verdict
    c.shot("verify-ok")
    print(f"PASS recomputed in the browser: {verdict}")
    c.assert_clean_log()


def phase_broken(c: Console) -> None:
    aggregate, sequence = env("CONSOLE_AGGREGATE"), env("CONSOLE_TAMPERED_SEQUENCE")
    verdict = verify(c, aggregate)
    assert verdict.startswith(f"BROKEN: {aggregate} at sequence {sequence}: "), verdict
    c.shot("verify-broken")
    print(f"PASS the tampered chain: {verdict}")

    # Wrong tokens from the console count toward the lockout like any other client's.
    c.d.find_element(By.ID, "signout").click()
    c.wait(EC.visibility_of_element_located((By.ID, "signin")), "sign-in shows again")
    for attempt in range(1, 12):
        c.sign_in(f"{attempt:064x}")
        expected = "Invalid admin token" if attempt <= 10 else "Too many failed attempts"
        c.text_in("signin-error", expected)
    c.shot("signin-locked-out")
    print("PASS the 10th wrong token locks the IP out; the 11th is told so")
    c.assert_clean_log(allowed_statuses=(401, 429))


def main() -> int:
    phase, base, artifacts = sys.argv[1], sys.argv[2], sys.argv[3]
    os.makedirs(artifacts, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="commguard-chromium-") as profile:
        driver = browser(profile)
        try:
            c = Console(driver, base, artifacts)
            {"org": phase_org, "verify": phase_verify, "broken": phase_broken}[phase](c)
        except Exception:
            try:
                driver.save_screenshot(os.path.join(artifacts, f"failure-{phase}.png"))
                print("browser log:", driver.get_log("browser"), file=sys.stderr)
            finally:
                raise
        finally:
            driver.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
