"""
The Hardness panel in a real browser: the FiftyOne App server runs on a free
loopback port against the isolated test database, with this checkout as its
only plugin, on the digits demo dataset with a hardness run (RER when the
method is registered). Debian's chromium, driven by playwright, opens the
panel from the "+" menu, checks the figures and the class chart, clicks the
hardest class and checks that the grid then holds exactly that class, clicks
the tallest score-histogram bar and checks that the grid holds that score
range, clicks a row of the flagged table and checks the selection, saves the
flagged samples as a view and checks that the App lists it. Screenshots and
the server log go to ``test-artifacts/``.
"""

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

import fiftyone as fo
from fiftyone import ViewField as F

from fiftyone_hardness.dataset_io import run_views

from app_helpers import REPO, add_demo_run, plugin_dir

CHROMIUM = os.environ.get("HARDNESS_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = os.path.join(REPO, "test-artifacts")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
APP_TIMEOUT_MS = 120000
STEP_TIMEOUT_MS = 60000

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason="Debian's chromium is not installed at %s (make test installs "
    "it: apt-get install -y chromium)" % CHROMIUM,
)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url, process, log_path, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                "The App server exited with code %s:\n%s"
                % (process.returncode, _tail(log_path))
            )
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.5)
    raise AssertionError(
        "The App server did not answer at %s within %ds:\n%s"
        % (url, timeout, _tail(log_path))
    )


def _tail(path, n=40):
    try:
        with open(path) as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="module")
def app_dataset(digits_dataset):
    dataset = digits_dataset.clone("hardness-browser-test")
    dataset.persistent = True
    results = add_demo_run(dataset)
    yield dataset, results
    if fo.dataset_exists(dataset.name):
        fo.delete_dataset(dataset.name)


@pytest.fixture(scope="module")
def app_server(app_dataset, tmp_path_factory):
    os.makedirs(ARTIFACTS, exist_ok=True)
    for name in os.listdir(ARTIFACTS):
        if name.startswith("browser-"):
            os.remove(os.path.join(ARTIFACTS, name))
    port = _free_port()
    log_path = os.path.join(ARTIFACTS, "browser-app-server.log")
    with plugin_dir(tmp_path_factory.mktemp("browser")) as plugins:
        env = dict(os.environ)
        env["FIFTYONE_PLUGINS_DIR"] = plugins
        env["FIFTYONE_DO_NOT_TRACK"] = "true"
        # the test process started (or found) MongoDB: share it
        assert env.get("FIFTYONE_PRIVATE_DATABASE_PORT") or env.get(
            "FIFTYONE_DATABASE_URI"
        ), "the test process has no database connection to share"
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fiftyone.server.main",
                    "--address",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        try:
            _wait_http("http://127.0.0.1:%d/" % port, process, log_path)
            yield "http://127.0.0.1:%d" % port, log_path
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
        )
        try:
            yield browser
        finally:
            browser.close()


class _Steps(object):
    """Runs named steps; on failure saves a screenshot and reports the step,
    the browser console errors and the server log."""

    def __init__(self, page, log_path):
        self.page = page
        self.log_path = log_path
        self.console = []
        page.on(
            "console",
            lambda m: self.console.append("%s: %s" % (m.type, m.text)),
        )
        page.on(
            "pageerror", lambda e: self.console.append("pageerror: %s" % e)
        )

    def shot(self, name):
        self.page.wait_for_timeout(1500)  # let the grid draw its images
        path = os.path.join(ARTIFACTS, "browser-%s.png" % name)
        self.page.screenshot(path=path)
        return path

    def run(self, name, function, *args):
        try:
            return function(*args)
        except Exception as e:
            shot = self.shot("FAILED-" + re.sub(r"\W+", "-", name))
            errors = [
                c
                for c in self.console
                if c.startswith(("error", "pageerror"))
                and "ERR_NAME_NOT_RESOLVED" not in c
            ]
            raise AssertionError(
                "Browser step '%s' failed: %s\nscreenshot: %s\nconsole "
                "errors:\n%s\nserver log:\n%s"
                % (
                    name,
                    e,
                    shot,
                    "\n".join(errors[-15:]) or "(none)",
                    _tail(self.log_path),
                )
            ) from e


def _count(page):
    text = page.inner_text("[data-cy=entry-counts]")
    match = re.search(r"([\d,]+)\s+samples?", text)
    assert match, "no sample count in %r" % text
    return int(match.group(1).replace(",", ""))


def _wait_count(page, expected, timeout=STEP_TIMEOUT_MS / 1000.0):
    deadline = time.time() + timeout
    seen = None
    while time.time() < deadline:
        try:
            seen = _count(page)
            if seen == expected:
                return seen
        except Exception:
            pass
        time.sleep(0.5)
    raise AssertionError(
        "the grid shows %s samples, expected %d" % (seen, expected)
    )


def test_hardness_panel_in_chromium(app_dataset, app_server, browser):
    dataset, results = app_dataset
    url, log_path = app_server
    total = len(dataset)
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    steps = _Steps(page, log_path)

    def open_app():
        page.goto(
            "%s/datasets/%s" % (url, dataset.name), timeout=APP_TIMEOUT_MS
        )
        page.wait_for_selector(
            "[data-cy=entry-counts]", timeout=APP_TIMEOUT_MS
        )
        _wait_count(page, total, timeout=APP_TIMEOUT_MS / 1000.0)
        # a first-run promotion popover may cover the "+" button
        dismiss = page.get_by_text("Dismiss", exact=True)
        if dismiss.count():
            dismiss.first.click()

    steps.run("open the App", open_app)

    content = page.locator("[data-cy=panel-content-hardness_panel]")

    def open_panel():
        page.click("[data-cy=new-panel-btn]", timeout=STEP_TIMEOUT_MS)
        page.click(
            "[data-cy=new-panel-option-hardness_panel]",
            timeout=STEP_TIMEOUT_MS,
        )
        content.wait_for(timeout=STEP_TIMEOUT_MS)

    steps.run("open the Hardness panel from the + menu", open_panel)

    figures = ["Samples scored", "Flagged", "Threshold"]
    if results.method == "rer":
        figures += [
            "Dataset difficulty (chi_avg)",
            "Normalized difficulty",
            "Estimated noise rate",
        ]

    def check_figures():
        for label in figures:
            cell = content.get_by_text(label, exact=True).first
            cell.wait_for(state="visible", timeout=STEP_TIMEOUT_MS)
        flagged = content.get_by_text(str(results.num_flagged), exact=True)
        assert flagged.count() >= 1, "the number flagged is not shown"

    steps.run("difficulty figures visible", check_figures)

    classes = run_views.class_difficulty(dataset, results)
    bars = content.locator(".js-plotly-plot").first.locator(
        ".barlayer .point path"
    )

    def check_class_chart():
        bars.first.wait_for(state="visible", timeout=STEP_TIMEOUT_MS)
        assert bars.count() == len(classes), "%d bars for %d classes" % (
            bars.count(),
            len(classes),
        )

    steps.run("class chart visible", check_class_chart)
    steps.shot("panel")

    hardest = classes[0][0]
    score_field = run_views.default_score_field(results)
    expected = len(
        dataset.match(F(results.label_field + ".label") == hardest).exists(
            score_field
        )
    )
    assert expected != total

    def click_hardest_class():
        bar = bars.first
        bar.scroll_into_view_if_needed()
        box = bar.bounding_box()
        x = box["x"] + box["width"] / 2
        y = box["y"] + box["height"] / 2
        page.mouse.move(x, y)
        page.wait_for_timeout(300)
        page.mouse.click(x, y)
        _wait_count(page, expected)

    steps.run(
        "click the hardest class bar (%s)" % hardest, click_hardest_class
    )
    steps.shot("class-view")

    counts, _ = run_views.score_histogram(dataset, score_field)
    tallest = max(range(len(counts)), key=lambda i: counts[i])
    hist_bars = (
        content.locator(".js-plotly-plot")
        .nth(1)
        .locator(".barlayer .point path")
    )

    def click_tallest_histogram_bar():
        hist_bars.first.wait_for(state="visible", timeout=STEP_TIMEOUT_MS)
        assert hist_bars.count() == len(
            counts
        ), "%d histogram bars for %d bins" % (hist_bars.count(), len(counts))
        bar = hist_bars.nth(tallest)
        bar.scroll_into_view_if_needed()
        box = bar.bounding_box()
        x = box["x"] + box["width"] / 2
        y = box["y"] + box["height"] / 2
        page.mouse.move(x, y)
        page.wait_for_timeout(300)
        page.mouse.click(x, y)
        _wait_count(page, counts[tallest])

    steps.run(
        "click the tallest score-histogram bar (%d samples)" % counts[tallest],
        click_tallest_histogram_bar,
    )
    steps.shot("score-range-view")

    # the figures are a markdown table; the flagged samples the last one
    table = content.locator("table").last

    def select_from_table():
        rows = table.locator("tbody tr")
        rows.first.wait_for(state="visible", timeout=STEP_TIMEOUT_MS)
        assert rows.count() == min(run_views.TABLE_ROWS, results.num_flagged)
        rows.first.scroll_into_view_if_needed()
        rows.first.locator("td").first.click()
        # the Samples tab shows the number of selected samples
        tab = page.locator("[data-cy=panel-tab-samples]")
        deadline = time.time() + STEP_TIMEOUT_MS / 1000.0
        while not re.search(r"\b1\b", tab.inner_text()):
            assert time.time() < deadline, (
                "no selection shown on the Samples tab: %r" % tab.inner_text()
            )
            time.sleep(0.5)

    steps.run("click a flagged-samples row selects it", select_from_table)

    name = run_views.flagged_view_name(results)

    def save_view():
        button = content.get_by_role("button", name="Save flagged as view")
        button.scroll_into_view_if_needed()
        button.click()
        _wait_count(page, results.num_flagged)
        # the App lists it once it reloaded the dataset: open the saved
        # views menu until it does
        selector = page.locator("[data-cy=saved-views-selection]")
        listed = page.get_by_role("option").filter(has_text=name)
        deadline = time.time() + STEP_TIMEOUT_MS / 1000.0
        while True:
            selector.click()
            try:
                listed.first.wait_for(state="visible", timeout=3000)
                break
            except Exception:
                page.keyboard.press("Escape")
                assert time.time() < deadline, (
                    "view '%s' is not listed in the saved views menu" % name
                )
        steps.shot("saved-view-listed")
        listed.first.click()
        page.locator("[data-cy=saved-views-selection-container]").get_by_text(
            name
        ).first.wait_for(state="visible", timeout=STEP_TIMEOUT_MS)
        _wait_count(page, results.num_flagged)

    steps.run("save the flagged samples as view '%s'" % name, save_view)
    steps.shot("saved-view")
    dataset.reload()
    assert name in dataset.list_saved_views()
    page.close()
