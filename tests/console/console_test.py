"""The live console in a real browser (Debian's chromium, driven by Playwright).

Run by tests/console/run.sh against a `leases serve --console --token-file F` it
started. A client holds a lease over the HTTP API (urllib) and heartbeats it; in the
page: the lease shows, its countdown moves, nothing is revocable without the token;
with the token typed into the page, a revoke (two clicks) ends the client's lease (its
heartbeat answers 410 `revoked`); another client takes the key over, and the timeline
shows the new, larger token as a takeover. Thousands of other leases are live
meanwhile: the page draws one page of them. Every request the page makes goes to the
server itself, and the browser reports no error (a CSP violation included).

Environment: LEASES_URL, LEASES_TOKEN, CONSOLE_BULK (leases besides the test's),
CONSOLE_SCREENSHOT (where to save the screenshot).
"""

import concurrent.futures
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request

from playwright.sync_api import expect, sync_playwright

BASE = os.environ["LEASES_URL"]
TOKEN = os.environ["LEASES_TOKEN"]
BULK = int(os.environ.get("CONSOLE_BULK", "9990"))
SHOT = os.environ.get("CONSOLE_SCREENSHOT", "target/console.png")
KEY = "/system/console-test/job"
# A few leases that make the screenshot read like a real store's.
SHOWCASE = [
    ("/module/billing/invoice/2026-12", "billing-7c9f4 pid 31"),
    ("/module/idv/user/bob", "idv-5d2b8 pid 12"),
    ("/system/cron/nightly-report", "cron-0 on node-b"),
]


def call(method, path, body=None, token=TOKEN):
    """(status, JSON answer) of one request to the HTTP API."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(BASE + path, data=data, method=method)
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def step(text):
    print("  -", text, flush=True)


class Holder(threading.Thread):
    """A client that holds KEY, heartbeats it every second, and on a 410 stops, sends
    `release` (it has stopped) and remembers the error."""

    def __init__(self, metadata):
        super().__init__(daemon=True)
        status, answer = call("POST", "/v1/acquire", {"key": KEY, "ttl_ms": 6000, "metadata": metadata})
        assert status == 200, answer
        self.token = answer["token"]
        self.ended = None
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(1.0):
            status, answer = call("POST", "/v1/heartbeat", {"key": KEY, "token": self.token})
            if status == 410:
                self.ended = answer["error"]["code"]
                call("POST", "/v1/release", {"key": KEY, "token": self.token})
                return
            assert status == 200, answer


def bulk(n):
    """n more live leases (long TTLs: they need no heartbeat during the test)."""
    def one(i):
        body = {"key": f"/system/load/{i:05}", "ttl_ms": 120000, "metadata": f"worker-{i % 97}"}
        status, answer = call("POST", "/v1/acquire", body)
        assert status == 200, answer
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(n)))


def main():
    step("the read routes answer without a token; a change needs it")
    assert call("GET", "/v1/list", token=None)[0] == 200
    assert call("GET", "/v1/events", token=None)[0] == 200
    assert call("POST", "/v1/revoke", {"key": KEY}, token=None)[0] == 401
    assert call("GET", "/v1/list", token="wrong")[0] == 401

    for key, metadata in SHOWCASE:
        status, answer = call("POST", "/v1/acquire", {"key": key, "ttl_ms": 120000, "metadata": metadata})
        assert status == 200, answer
    started = time.monotonic()
    bulk(BULK)
    step(f"{BULK} bulk leases acquired in {time.monotonic() - started:.1f}s")
    first = Holder("client-a on host-1")
    first.start()
    step(f"client A holds {KEY} with token {first.token}")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors, foreign = [], []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: None if r.url.startswith(BASE + "/") else foreign.append(r.url))
        page.goto(BASE + "/console")

        step("the page lists the leases, one page at a time")
        total = BULK + 1 + len(SHOWCASE)
        expect(page.locator("#count")).to_contain_text(f"{total} lease", timeout=20000)
        rows = page.locator("#rows tr")
        assert rows.count() <= 100, rows.count()
        expect(page.locator("#page")).to_contain_text(f"of {(total + 99) // 100}")

        step("the lease shows with its holder, token, countdown; read-only without a token")
        page.fill("#filter", "console-test/job")
        row = page.locator(f'#rows tr[data-key="{KEY}"]')
        expect(row).to_have_count(1)
        expect(row.locator("td.holder")).to_have_text("client-a on host-1")
        expect(row.locator("td.token")).to_have_text(first.token)
        expect(row.locator("td.flag")).to_have_text("—")
        expect(row.locator("button.revoke")).to_be_disabled()
        expect(page.locator("#mode")).to_have_text("read-only")
        countdowns = set()
        for _ in range(6):
            text = row.locator("td:nth-child(4)").inner_text()
            assert text.endswith(" s"), text
            countdowns.add(text)
            time.sleep(0.3)
        assert len(countdowns) >= 3, countdowns
        step(f"the countdown moves: {sorted(countdowns)}")

        step("with the token typed in, a revoke from the page ends the client's lease")
        page.fill("#token-input", TOKEN)
        page.click("#token-use")
        expect(page.locator("#mode")).to_have_text("token set: revoke enabled")
        assert page.input_value("#token-input") == ""
        assert TOKEN not in page.content(), "the page shows the token"
        button = row.locator("button.revoke")
        expect(button).to_be_enabled()
        button.click()
        expect(button).to_have_text("confirm")
        button.click()
        expect(page.locator("#message")).to_have_text(f"revoked {KEY}")
        first.join(timeout=10)
        assert first.ended == "revoked", first.ended
        step("client A's heartbeat answered 410 revoked; it released the key")

        step("client B takes the key over: the timeline shows the larger token")
        second = Holder("client-b on host-2")
        assert int(second.token) > int(first.token), (first.token, second.token)
        second.start()
        takeover = page.locator(f'#timeline li[data-kind="granted"][data-token="{second.token}"]')
        expect(takeover).to_have_count(1, timeout=10000)
        expect(takeover.locator(".takeover")).to_have_text(f"takeover: {first.token} → {second.token}")
        expect(page.locator(f'#timeline li[data-kind="revoked"][data-token="{first.token}"]')).to_have_count(1)
        expect(row.locator("td.token")).to_have_text(second.token)
        expect(row.locator("td.holder")).to_have_text("client-b on host-2")

        page.fill("#filter", "")
        expect(page.locator("#rows tr")).to_have_count(100)
        page.screenshot(path=SHOT)
        step(f"screenshot in {SHOT}")
        assert not foreign, f"the page asked elsewhere: {foreign}"
        assert not errors, f"the browser reported errors: {errors}"
        browser.close()
    second.stop.set()
    second.join()
    print("console test passed", flush=True)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as error:
        print(f"console test failed: {error!r}", file=sys.stderr)
        raise
