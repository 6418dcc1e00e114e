"""
Shared helpers of the browser tests: the FiftyOne App server on a free
loopback port against the isolated test database (this checkout as its only
plugin), Debian's chromium driven headless by playwright, a step runner that
saves a screenshot and the server log when a step fails, and small waits on
the App's grid.

Import them in a test module (pytest finds imported fixtures)::

    from browser_helpers import app_dataset, app_server, browser, Steps

Screenshots and the server log go to ``test-artifacts/``.
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

#: skips a browser test module when chromium is missing
requires_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason="Debian's chromium is not installed at %s (make test installs "
    "it: apt-get install -y chromium)" % CHROMIUM,
)


def free_port():
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, process, log_path, timeout=120):
    """Waits until ``url`` answers 200, failing with the server log when
    ``process`` exits or ``timeout`` seconds pass."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                "The App server exited with code %s:\n%s"
                % (process.returncode, tail(log_path))
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
        % (url, timeout, tail(log_path))
    )


def tail(path, n=40):
    """The last ``n`` lines of a log file."""
    try:
        with open(path) as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="module")
def app_dataset(digits_dataset):
    """A persistent clone of the digits demo dataset with a hardness run,
    as ``(dataset, results)``; deleted after the module."""
    dataset = digits_dataset.clone("hardness-browser-test")
    dataset.persistent = True
    results = add_demo_run(dataset)
    yield dataset, results
    if fo.dataset_exists(dataset.name):
        fo.delete_dataset(dataset.name)


#: another checkout of this repository to serve the App from (e.g. an
#: older commit, ``git archive``-d somewhere), for before/after timings;
#: the tests themselves always run this checkout's code
OTHER_CHECKOUT = os.environ.get("HARDNESS_BROWSER_CHECKOUT")


def _checkout_env(env, tmp):
    """Points the App server at :data:`OTHER_CHECKOUT`: its plugin dir and,
    ahead of the editable install, its package."""
    plugins = os.path.join(str(tmp), "other-plugins")
    package = os.path.join(str(tmp), "other-package")
    os.makedirs(plugins, exist_ok=True)
    os.makedirs(package, exist_ok=True)
    os.symlink(OTHER_CHECKOUT, os.path.join(plugins, "fiftyone-hardness"))
    os.symlink(OTHER_CHECKOUT, os.path.join(package, "fiftyone_hardness"))
    env["FIFTYONE_PLUGINS_DIR"] = plugins
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package, env.get("PYTHONPATH")) if p
    )


@pytest.fixture(scope="module")
def app_server(app_dataset, tmp_path_factory):
    """The App server, as ``(url, log_path)``, stopped after the module."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    port = free_port()
    log_path = os.path.join(ARTIFACTS, "browser-app-server-%d.log" % port)
    tmp = tmp_path_factory.mktemp("browser")
    with plugin_dir(tmp) as plugins:
        env = dict(os.environ)
        env["FIFTYONE_PLUGINS_DIR"] = plugins
        if OTHER_CHECKOUT:
            _checkout_env(env, tmp)
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
            wait_http("http://127.0.0.1:%d/" % port, process, log_path)
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
    """A headless Debian chromium, closed after the module."""
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


class Steps(object):
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
        """Saves a screenshot as ``test-artifacts/browser-<name>.png``."""
        self.page.wait_for_timeout(1500)  # let the grid draw its images
        path = os.path.join(ARTIFACTS, "browser-%s.png" % name)
        self.page.screenshot(path=path)
        return path

    def run(self, name, function, *args):
        """Runs ``function(*args)`` as the step ``name``."""
        try:
            return function(*args)
        except Exception as e:
            shot = self.shot("FAILED-" + re.sub(r"\W+", "-", name))
            try:
                with open(shot[: -len(".png")] + ".html", "w") as f:
                    f.write(self.page.content())
            except Exception:  # the page may be gone
                pass
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
                    tail(self.log_path),
                )
            ) from e


#: the names test_browser.py used before the move
_Steps = Steps
_tail = tail
_free_port = free_port
_wait_http = wait_http


def count(page):
    """The number of samples the grid shows."""
    text = page.inner_text("[data-cy=entry-counts]")
    match = re.search(r"([\d,]+)\s+samples?", text)
    assert match, "no sample count in %r" % text
    return int(match.group(1).replace(",", ""))


def wait_count(page, expected, timeout=STEP_TIMEOUT_MS / 1000.0):
    """Waits until the grid shows ``expected`` samples."""
    deadline = time.time() + timeout
    seen = None
    while time.time() < deadline:
        try:
            seen = count(page)
            if seen == expected:
                return seen
        except Exception:
            pass
        time.sleep(0.5)
    raise AssertionError(
        "the grid shows %s samples, expected %d" % (seen, expected)
    )


_count = count
_wait_count = wait_count


def open_app(page, url, dataset):
    """Opens ``dataset`` in the App and waits for its grid, the whole
    dataset shown (the App server keeps the last page's view: it is
    cleared)."""
    page.goto("%s/datasets/%s" % (url, dataset.name), timeout=APP_TIMEOUT_MS)
    page.wait_for_selector("[data-cy=entry-counts]", timeout=APP_TIMEOUT_MS)
    try:
        wait_count(page, len(dataset), timeout=10)
    except AssertionError:
        page.locator("[data-cy=btn-clear-view-bar]").first.click(
            timeout=STEP_TIMEOUT_MS
        )
    wait_count(page, len(dataset), timeout=APP_TIMEOUT_MS / 1000.0)
    # a first-run promotion popover may cover the "+" button
    dismiss = page.get_by_text("Dismiss", exact=True)
    if dismiss.count():
        dismiss.first.click()


def open_panel(page, name="hardness_panel"):
    """Opens the panel ``name`` from the grid's "+" menu; returns its
    content locator. The App server remembers the open panels across page
    loads: a panel already open is closed first, so that every test opens
    it the way a user does."""
    content = page.locator("[data-cy=panel-content-%s]" % name)
    close = page.locator("[data-cy=panel-tab-%s] [title=Close]" % name)
    if close.count():
        close.first.click()
        content.wait_for(state="detached", timeout=STEP_TIMEOUT_MS)
    page.click("[data-cy=new-panel-btn]", timeout=STEP_TIMEOUT_MS)
    page.click("[data-cy=new-panel-option-%s]" % name, timeout=STEP_TIMEOUT_MS)
    content.wait_for(timeout=STEP_TIMEOUT_MS)
    return content


def wait_until(predicate, message, timeout=STEP_TIMEOUT_MS / 1000.0):
    """Polls ``predicate()`` every 0.5 s until it is truthy; fails with
    ``message()`` (or the string) after ``timeout`` seconds. Returns the
    truthy value."""
    deadline = time.time() + timeout
    while True:
        try:
            value = predicate()
        except Exception:
            value = None
        if value:
            return value
        if time.time() >= deadline:
            raise AssertionError(message() if callable(message) else message)
        time.sleep(0.5)


#: where :func:`record_timings` writes
TIMINGS_PATH = os.path.join(ARTIFACTS, "browser-timings.json")


def record_timings(name, timings):
    """Adds ``timings`` (seconds) under ``name`` to
    ``test-artifacts/browser-timings.json`` and prints them (``-s``)."""
    import json

    data = {}
    if os.path.exists(TIMINGS_PATH):
        try:
            with open(TIMINGS_PATH) as f:
                data = json.load(f)
        except ValueError:
            data = {}
    data[name] = {k: round(v, 2) for k, v in timings.items()}
    os.makedirs(ARTIFACTS, exist_ok=True)
    with open(TIMINGS_PATH, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    print("timings %s: %s" % (name, data[name]))
