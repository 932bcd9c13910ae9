"""The HTML report in a real browser: headless Chromium, driven over the DevTools
protocol (CDP) with a small websocket client, the network cut off.

Two loads of the same report of a 20-day run full of hostile text:

- as written, with its Content-Security-Policy: the page renders (title, every day, the
  drift chart with its threshold lines, the check-ins), asks for nothing but its own file,
  and the browser reports no policy violation, console message or exception;
- with the policy bypassed, so that escaping alone must keep the payloads inert:
  ``window.__xss`` stays undefined and no dialog opens.

Screenshots (desktop, full page, phone, print) are saved and their paths printed
(``pytest -s`` shows them). Chromium is found on PATH, or named by ``LOOPSIM_CHROMIUM``;
without it the test is skipped, except under CI, where it fails.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loopsim.record.store import Store
from tests.test_report import DAYS, PAYLOADS, render, seed_run

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("LOOPSIM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
STARTUP_SECONDS = 30
CALL_SECONDS = 20


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the browser test (.ci/run installs chromium)")
    pytest.skip(reason)


class Cdp:
    """Just enough of the DevTools protocol: commands on one flattened page session,
    every event kept, and any JavaScript dialog recorded and dismissed at once."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.counter = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def _send(self, method: str, params: dict[str, Any], session: str | None) -> int:
        self.counter += 1
        message: dict[str, Any] = {"id": self.counter, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        return self.counter

    def _receive(self, deadline: float) -> dict[str, Any]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no answer from Chromium in time")
        data: dict[str, Any] = json.loads(self.ws.recv(timeout=left))
        if "method" in data:
            self.events.append(data)
            if data["method"] == "Page.javascriptDialogOpening":
                self._send("Page.handleJavaScriptDialog", {"accept": False}, data.get("sessionId"))
        return data

    def call(self, method: str, browser: bool = False, **params: Any) -> dict[str, Any]:
        wanted = self._send(method, params, None if browser else self.session)
        deadline = time.monotonic() + CALL_SECONDS
        while True:
            data = self._receive(deadline)
            if data.get("id") == wanted:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                result: dict[str, Any] = data.get("result", {})
                return result

    def wait_for(self, method: str, since: int) -> dict[str, Any]:
        deadline = time.monotonic() + CALL_SECONDS
        while True:
            for event in self.events[since:]:
                if event["method"] == method:
                    return event
            self._receive(deadline)

    def navigate(self, url: str) -> None:
        mark = len(self.events)
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired", mark)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(json.dumps(result["exceptionDetails"]))
        return result["result"].get("value")

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            params["captureBeyondViewport"] = True
            params["clip"] = {
                "x": 0,
                "y": 0,
                "width": size["width"],
                "height": size["height"],
                "scale": 1,
            }
        data = self.call("Page.captureScreenshot", **params)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def viewport(self, width: int, height: int, mobile: bool) -> None:
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=2 if mobile else 1,
            mobile=mobile,
        )


@contextlib.contextmanager
def chromium(workdir: Path) -> Iterator[Cdp]:
    """Headless Chromium with a fresh profile in ``workdir``, attached to one blank page
    whose network is off. Ends the process group it started, and only that."""
    profile = workdir / "profile"
    log_path = workdir / "chromium.log"
    port_file = profile / "DevToolsActivePort"
    port_file.unlink(missing_ok=True)  # a stale one would point at a dead browser
    with log_path.open("wb") as log, contextlib.ExitStack() as stack:
        process = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",  # tests run as root in CI's container
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                # Nothing may leave the machine: no name resolves, and no proxy answers.
                "--host-resolver-rules=MAP * ~NOTFOUND",
                "--proxy-server=127.0.0.1:9",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        stack.callback(_stop, process)
        deadline = time.monotonic() + STARTUP_SECONDS
        while not (port_file.is_file() and len(port_file.read_text().split()) >= 2):
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"Chromium did not open its DevTools endpoint:\n{tail}")
            time.sleep(0.05)
        port, path = port_file.read_text().split()[:2]
        from websockets.sync.client import connect

        ws = stack.enter_context(
            connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=CALL_SECONDS)
        )
        cdp = Cdp(ws)
        target = cdp.call("Target.createTarget", browser=True, url="about:blank")["targetId"]
        cdp.session = cdp.call(
            "Target.attachToTarget", browser=True, targetId=target, flatten=True
        )["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            cdp.call(f"{domain}.enable")
        cdp.call(
            "Network.emulateNetworkConditions",
            offline=True,
            latency=0,
            downloadThroughput=-1,
            uploadThroughput=-1,
        )
        yield cdp


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Cdp]:
    try:
        import websockets.sync.client  # noqa: F401
    except ImportError:
        _unavailable("the websockets package is not installed (pip install -e '.[dev]')")
    if not Path(CHROMIUM).is_file():
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with chromium(tmp_path) as cdp:
        yield cdp


# What the page shows, read in the browser. It runs through DevTools, not the page.
PROBE = """(() => {
  const all = [...document.querySelectorAll('*')];
  const chart = document.querySelector('#drift-chart');
  const reverted = document.querySelector('section.day.struck .day-title');
  return {
    title: document.title,
    xss: typeof window.__xss,
    days: [...document.querySelectorAll('section.day')].map(e => e.id),
    chart: chart ? chart.getBoundingClientRect().width : 0,
    thresholds: chart ? [...chart.querySelectorAll('line[data-threshold]')]
      .map(e => e.getAttribute('data-threshold') + ':' + e.getBoundingClientRect().width) : [],
    labels: chart ? [...chart.querySelectorAll('text')].map(e => e.textContent) : [],
    points: chart ? chart.querySelectorAll('circle.point').length : 0,
    checkins: document.querySelectorAll('#checkins article.checkin').length,
    active: all.filter(e => /^(script|iframe|object|embed|img|frame)$/i.test(e.tagName)).length,
    handlers: all.filter(e => [...e.attributes].some(a => /^on/i.test(a.name))).length,
    links: [...document.querySelectorAll('[href]')].map(e => e.getAttribute('href'))
      .filter(h => !h.startsWith('#')),
    svgs: document.querySelectorAll('svg').length,
    struck: reverted ? getComputedStyle(reverted).textDecorationLine : null,
    text: document.body.innerText,
    overflow: document.documentElement.scrollWidth - document.documentElement.clientWidth,
  };
})()"""


def _complaints(events: list[dict[str, Any]]) -> list[Any]:
    """Anything the page said: console calls, exceptions, log entries (a policy
    violation is one) and dialogs. A page with no scripts says nothing."""
    noisy = {
        "Runtime.consoleAPICalled",
        "Runtime.exceptionThrown",
        "Log.entryAdded",
        "Page.javascriptDialogOpening",
    }
    return [e for e in events if e["method"] in noisy]


def test_report_renders_inert_and_offline_in_chromium(browser, database, tmp_path):
    run_id = seed_run(database)
    report = tmp_path / "report.html"
    report.write_text(render(database, run_id, include_reverted=True), encoding="utf-8")
    url = report.as_uri()
    with database.read() as session:
        name = Store(session).get_run(run_id).name

    browser.viewport(1280, 900, mobile=False)
    mark = len(browser.events)
    browser.navigate(url)
    page = browser.evaluate(PROBE)
    assert page["title"] == f"{name} · loopsim report"
    assert page["days"] == [f"day-{i}" for i in range(1, DAYS + 1)]
    assert page["chart"] > 300
    assert page["points"] == 6
    assert sorted(t.split(":")[0] for t in page["thresholds"]) == ["alarm", "warn"]
    assert all(float(t.split(":")[1]) > 100 for t in page["thresholds"])  # drawn across
    assert "warn 0.30" in page["labels"]
    assert "alarm 0.60" in page["labels"]
    assert page["checkins"] == 7
    assert page["struck"] == "line-through"
    assert (page["active"], page["handlers"], page["links"], page["svgs"]) == (0, 0, [], 1)
    for hostile in PAYLOADS:
        assert hostile.strip() in page["text"]  # visible, as text
    assert page["xss"] == "undefined"
    assert _complaints(browser.events[mark:]) == []
    requested = {
        e["params"]["request"]["url"]
        for e in browser.events[mark:]
        if e["method"] == "Network.requestWillBeSent"
    }
    assert requested == {url}, requested  # the file itself, and nothing else
    shots = [browser.screenshot(tmp_path / "report-desktop.png")]
    shots.append(browser.screenshot(tmp_path / "report-full.png", full_page=True))

    browser.viewport(390, 844, mobile=True)
    browser.navigate(url)
    phone = browser.evaluate(PROBE)
    assert phone["overflow"] <= 0, "the page scrolls sideways on a phone"
    shots.append(browser.screenshot(tmp_path / "report-phone.png"))

    browser.call("Emulation.setEmulatedMedia", media="print")
    browser.viewport(794, 1123, mobile=False)
    browser.navigate(url)
    shots.append(browser.screenshot(tmp_path / "report-print.png"))
    browser.call("Emulation.setEmulatedMedia", media="")

    # Escaping alone, without the policy's second line of defence.
    browser.call("Page.setBypassCSP", enabled=True)
    browser.viewport(1280, 900, mobile=False)
    mark = len(browser.events)
    browser.navigate(url)
    time.sleep(0.3)  # time for any error event of an injected element to fire
    bare = browser.evaluate(PROBE)
    assert bare["xss"] == "undefined"
    assert (bare["active"], bare["handlers"], bare["links"]) == (0, 0, [])
    assert _complaints(browser.events[mark:]) == []
    for _shot in shots:
        pass
