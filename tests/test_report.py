"""The Snakemake report of a tiny finished run, opened in a real headless browser.

Chromium comes from Debian's package (`make test-setup` runs tests/report/install_chromium.sh). The test
drives the report's single-page app the way a reader does, by clicking its menu and result buttons, over
the Chrome DevTools protocol on a pipe (`--remote-debugging-pipe`: no port, no extra Python package), then
checks the DOM and a screenshot: the comparison table shows every method with its kappa, and a Gleason
heatmap is decoded and painted. Without Chromium it skips, or fails under CI=true.
"""

import base64
import fcntl
import io
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from wsidistill.evaluation.metrics import format_mean_std

WINDOW = (1600, 1000)


@pytest.fixture(scope="module")
def chromium() -> str:
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        message = "chromium is not installed (`make test-setup` installs Debian's chromium, as root)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)
    return executable


@pytest.fixture(scope="module")
def report(tiny_run, run_snakemake, tmp_path_factory) -> Path:
    """The self-contained HTML report, built as `make report` builds it (`snakemake --report`)."""
    workdir, _ = tiny_run
    path = tmp_path_factory.mktemp("report") / "report.html"
    result = run_snakemake(workdir, "--report", str(path))
    assert result.returncode == 0, result.stderr[-4000:]
    assert path.stat().st_size > 100_000
    return path


def _high_fd(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class DevTools:
    """Chrome DevTools protocol over `--remote-debugging-pipe`: NUL-terminated JSON, Chromium reads fd 3 and
    writes fd 4. One page, attached in flat session mode."""

    def __init__(self, executable: str, profile: Path, log: Path):
        to_browser_read, self._write = os.pipe()
        self._read, from_browser_write = os.pipe()
        # Chromium's ends go to fds >= 10, so that putting them on 3 and 4 in the child cannot clobber either.
        to_browser_read, from_browser_write = (_high_fd(to_browser_read), _high_fd(from_browser_write))
        flags = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
            "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-default-apps",
            "--mute-audio", "--hide-scrollbars", f"--user-data-dir={profile}", "--remote-debugging-pipe",
            f"--window-size={WINDOW[0]},{WINDOW[1]}", "about:blank",
        ]
        # bash moves Chromium's pipe ends onto the fds that it expects (3, 4), then becomes Chromium.
        redirect = f"3<&{to_browser_read} 4>&{from_browser_write} {to_browser_read}<&- {from_browser_write}>&-"
        with open(log, "wb") as output:
            self.process = subprocess.Popen(
                ["bash", "-c", f'exec "$0" "$@" {redirect}', executable, *flags],
                pass_fds=(to_browser_read, from_browser_write), stdin=subprocess.DEVNULL, stdout=output,
                stderr=output)
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        try:
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page.enable", "Runtime.enable"):
                self.call(domain, session=self.session)
            self.call("Emulation.setDeviceMetricsOverride", session=self.session, width=WINDOW[0],
                      height=WINDOW[1], deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.close()
            raise

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._read], [], [], remaining)[0]:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium closed the pipe (exit status {self.process.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: str | None = None, timeout: float = 30, **params) -> dict:
        self._next_id += 1
        request = {"id": self._next_id, "method": method, "params": params}
        if session:
            request["sessionId"] = session
        os.write(self._write, json.dumps(request).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            message = self._message(deadline)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_event(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._message(deadline))

    def evaluate(self, expression: str, context: int | None = None):
        params = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        if context is not None:
            params["contextId"] = context
        result = self.call("Runtime.evaluate", session=self.session, **params)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30, context: int | None = None):
        """Poll a JS expression until it is truthy (the React app renders asynchronously)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression, context)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"never true in the report: {expression}")

    def open(self, url: str) -> None:
        self.call("Page.navigate", session=self.session, url=url)
        self.wait_event("Page.loadEventFired", timeout=60)

    def click(self, text: str, timeout: float = 10) -> None:
        """Click the link whose trimmed text is `text` (menu entries, breadcrumbs), as a reader would."""
        script = (f"(() => {{ const a = [...document.querySelectorAll('a')].find(a => a.textContent.trim() === "
                  f"{json.dumps(text)}); if (a) a.click(); return !!a; }})()")
        try:
            self.wait_for(script, timeout)
        except TimeoutError:
            links = self.evaluate("[...document.querySelectorAll('a')].map(a => a.textContent.trim())")
            raise AssertionError(f"no link {text!r} in the report; links: {links}") from None

    def result_names(self) -> list[str]:
        """The file names listed in the navbar's results table."""
        return self.evaluate("[...document.querySelectorAll('tr')]"
                             ".filter(tr => tr.cells.length > 1 && tr.cells[0].tagName === 'TD')"
                             ".map(tr => tr.cells[0].textContent.trim())")

    def click_result(self, name: str, timeout: float = 10) -> None:
        """Press the 'view' (eye) button on the row of result `name` in the navbar's results table."""
        script = (f"(() => {{ const row = [...document.querySelectorAll('tr')].find(tr => tr.cells.length > 1 && "
                  f"tr.cells[0].textContent.trim() === {json.dumps(name)}); const a = row && row.querySelector('a');"
                  f" if (a) a.click(); return !!a; }})()")
        try:
            self.wait_for(script, timeout)
        except TimeoutError:
            listed = self.result_names()
            raise AssertionError(f"no result {name} in this view of the report; listed: {listed}") from None

    def frame_contexts(self) -> list[int]:
        """Default JS contexts of the page's child frames (an HTML result is shown in an iframe)."""
        self.call("Runtime.evaluate", session=self.session, expression="0")  # drain pending events
        main = self.call("Page.getFrameTree", session=self.session)["frameTree"]["frame"]["id"]
        contexts = {}
        for event in self.events:
            if event.get("method") == "Runtime.executionContextCreated":
                context = event["params"]["context"]
                aux = context.get("auxData", {})
                if aux.get("isDefault") and aux.get("frameId") != main:
                    contexts[aux["frameId"]] = context["id"]
            elif event.get("method") == "Runtime.executionContextDestroyed":
                contexts = {f: c for f, c in contexts.items() if c != event["params"]["executionContextId"]}
        return list(contexts.values())

    def screenshot(self, path: Path) -> np.ndarray:
        data = base64.b64decode(self.call("Page.captureScreenshot", session=self.session, format="png")["data"])
        path.write_bytes(data)
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._read)
        os.close(self._write)


@pytest.fixture
def browser(chromium, tmp_path):
    devtools = DevTools(chromium, tmp_path / "profile", tmp_path / "chromium.log")
    yield devtools
    devtools.close()


def _test_slide(workdir: Path, config: dict) -> str:
    sheet = pd.read_csv(workdir / config["samples"], sep="\t")
    return sorted(sheet.slide_id[sheet.split == "test"])[0]


TABLE_ROWS = """[...document.querySelectorAll('table tr')].map(tr =>
    [...tr.cells].map(cell => cell.innerText.replace(/\\s+/g, ' ').trim()))"""


def test_comparison_table_renders_in_the_report(browser, report, tiny_run, tmp_path):
    workdir, config = tiny_run
    frame = pd.read_csv(workdir / "results/tables/comparison.csv")
    assert set(frame.method) == {"teacher", *config["methods"]}
    browser.open(report.as_uri())
    browser.click("Comparison")
    browser.click_result("results/tables/comparison.html")
    # The HTML result is shown in an iframe: read the tables of every child frame once it has rendered.
    deadline = time.monotonic() + 30
    rows = []
    while time.monotonic() < deadline and not rows:
        for context in browser.frame_contexts():
            try:
                rows += browser.evaluate(TABLE_ROWS, context) or []
            except RuntimeError:  # the frame navigated away meanwhile
                continue
        time.sleep(0.1)
    screenshot = browser.screenshot(tmp_path / "comparison.png")
    by_method = {}
    for cells in rows:
        if cells and cells[0] in set(frame.method):
            by_method.setdefault(cells[0], []).append(" ".join(cells[1:]))
    assert set(by_method) == set(frame.method), rows
    for row in frame.itertuples():
        cell = format_mean_std(row.kappa_mean, row.kappa_std)
        assert any(cell in text for text in by_method[row.method]), (row.method, cell, by_method[row.method])
    # Painted, not just in the DOM: the content area right of the navbar is not a blank page.
    iframe = browser.evaluate("(() => { const r = document.querySelector('iframe').getBoundingClientRect();"
                              " return [r.left, r.top, r.width, r.height]; })()")
    left, top, width, height = (int(v) for v in iframe)
    assert width > 300 and height > 200
    area = screenshot[top:top + min(height, 400), left:left + width]
    assert area.std() > 5, "the comparison table's frame is blank in the screenshot"


def test_heatmap_image_renders_in_the_report(browser, report, tiny_run, tmp_path):
    workdir, config = tiny_run
    slide = _test_slide(workdir, config)
    name = f"results/heatmaps/{slide}/atplus_10x_seed{config['seeds'][0]}.png"
    source = Image.open(workdir / name).convert("RGB")
    browser.open(report.as_uri())
    browser.click("Heatmaps")
    if len(browser.evaluate("Object.keys(categories['Heatmaps'])")) > 1:  # one subcategory per test slide
        browser.click(slide)
    browser.click_result(name)
    # The <img> showing this PNG (the report inlines it as a data URI naming the file) has been decoded.
    prefix = f"data:image/png;charset=utf8;filename={Path(name).name};base64,"
    image = browser.wait_for(
        f"(() => {{ const img = [...document.querySelectorAll('img')]"
        f".find(i => i.src.startsWith({json.dumps(prefix)}));"
        " if (!img || !img.complete || img.naturalWidth === 0) return null; const r = img.getBoundingClientRect();"
        " return {natural: [img.naturalWidth, img.naturalHeight], rect: [r.left, r.top, r.width, r.height]}; })()")
    assert image["natural"] == list(source.size)
    screenshot = browser.screenshot(tmp_path / "heatmap.png")
    left, top, width, height = (int(round(v)) for v in image["rect"])
    assert width > 200 and height > 100
    assert left >= 0 and top >= 0 and left + width <= WINDOW[0] and top + height <= WINDOW[1], image["rect"]
    shown = screenshot[top:top + height, left:left + width]
    assert shown.std() > 10, "the heatmap area of the screenshot is blank"
    # The painted pixels are the heatmap's: both, shrunk to the same small grid, match closely.
    grid = (48, 24)
    painted = np.asarray(Image.fromarray(shown).resize(grid, Image.BOX), dtype=float)
    expected = np.asarray(source.resize(grid, Image.BOX), dtype=float)
    difference = np.abs(painted - expected).mean()
    assert difference < 8, f"the painted image differs from {name} by {difference:.1f} grey levels on average"
