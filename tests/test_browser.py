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
the server log go to ``test-artifacts/``; the fixtures live in
``browser_helpers.py``.
"""

import re
import time

from fiftyone import ViewField as F

from fiftyone_hardness.dataset_io import run_views

from fiftyone_hardness.panels.hardness_panel import QUEUE_VIEW_SIZE

from app_helpers import register_test_method
import browser_helpers
from browser_helpers import (
    OTHER_CHECKOUT,
    APP_TIMEOUT_MS,
    STEP_TIMEOUT_MS,
    Steps,
    open_app,
    open_panel,
    record_timings,
    requires_chromium,
    wait_count,
    wait_until,
)

# the module-scoped fixtures (pytest finds them by these names)
app_dataset = browser_helpers.app_dataset
app_server = browser_helpers.app_server
browser = browser_helpers.browser
_Steps = Steps
_wait_count = wait_count

pytestmark = requires_chromium


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


# ------------------------------------------------------------ issue 13


def _plot_heights(content):
    """The rendered heights (px) of the panel's plotly plots."""
    return [
        round(box["height"])
        for box in (
            plot.bounding_box()
            for plot in content.locator(".js-plotly-plot").all()
        )
        if box
    ]


def _open(page, url, dataset, steps):
    timings = {}
    steps.run("open the App", open_app, page, url, dataset)
    start = time.perf_counter()
    content = steps.run("open the Hardness panel", open_panel, page)
    bars = content.locator(".js-plotly-plot").first.locator(
        ".barlayer .point path"
    )
    steps.run(
        "class chart drawn",
        lambda: bars.first.wait_for(state="visible", timeout=STEP_TIMEOUT_MS),
    )
    timings["panel_open_s"] = time.perf_counter() - start
    return content, timings


def test_plots_keep_their_height_through_resizes(
    app_dataset, app_server, browser
):
    dataset, _ = app_dataset
    url, log_path = app_server
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    steps = Steps(page, log_path)
    content, _ = _open(page, url, dataset, steps)

    def heights_settle():
        return wait_until(
            lambda: (lambda h: h if len(h) >= 2 and min(h) > 100 else None)(
                _plot_heights(content)
            ),
            lambda: "plots collapsed: %s" % _plot_heights(content),
        )

    before = steps.run("plots drawn", heights_settle)
    for width, height in ((1100, 760), (1600, 1000), (900, 700)):
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(1500)  # plotly redraws after a resize
        after = steps.run(
            "plots after a resize to %dx%d" % (width, height),
            heights_settle,
        )
        for h0, h1 in zip(before, after):
            assert (
                abs(h1 - h0) <= 0.1 * h0
            ), "a plot changed height from %d to %d px at %dx%d" % (
                h0,
                h1,
                width,
                height,
            )
    steps.shot("after-resizes")
    page.close()


def test_new_run_appears_without_refresh(app_dataset, app_server, browser):
    dataset, _ = app_dataset
    url, log_path = app_server
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    steps = Steps(page, log_path)
    content, timings = _open(page, url, dataset, steps)

    register_test_method()
    dataset.apply_hardness(
        "centroid", run_key="fresh", embeddings_field="pixels"
    )
    start = time.perf_counter()

    def shown():
        return "fresh (centroid," in content.inner_text()

    steps.run(
        "the new run is listed and shown, no Refresh",
        wait_until,
        shown,
        "the panel does not list the new run 'fresh'",
    )
    timings["new_run_to_panel_s"] = time.perf_counter() - start
    steps.shot("new-run")

    dataset.delete_run("fresh")
    steps.run(
        "the deleted run disappears",
        wait_until,
        lambda: "fresh (centroid," not in content.inner_text(),
        "the panel still lists the deleted run 'fresh'",
    )
    record_timings("new_run", timings)
    page.close()


def test_review_from_the_panel(app_dataset, app_server, browser):
    dataset, results = app_dataset
    url, log_path = app_server
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    steps = Steps(page, log_path)
    content, timings = _open(page, url, dataset, steps)
    progress = re.compile(r"(\d+) of (\d+) reviewed")
    total = len(run_views.flagged_view(dataset, results))

    def progress_text():
        return content.get_by_text(progress).first.inner_text()

    def current_id():
        # the "Now reviewing" table ends with the row "Sample | <id>"
        match = re.search(r"Sample\s+([0-9a-f]{24})", content.inner_text())
        assert match, "no sample under review"
        return match.group(1)

    text = steps.run("progress shown", wait_until, progress_text, "none")
    assert text.startswith("0 of %d reviewed" % total), text
    first = steps.run("current sample shown", current_id)

    right = content.get_by_role("button", name=re.compile(r"^Right: "))
    start = time.perf_counter()
    steps.run("click Right", right.first.click)
    steps.run(
        "the progress counts it",
        wait_until,
        lambda: progress_text().startswith("1 of %d reviewed" % total),
        lambda: "progress still %r" % progress_text(),
    )
    timings["verdict_to_queue_s"] = time.perf_counter() - start
    second = steps.run(
        "the queue moves on",
        wait_until,
        lambda: (lambda i: i if i != first else None)(current_id()),
        "the current sample did not change",
    )
    dataset.reload()
    assert dataset[first].ground_truth_reviewed.verdict == "right"
    # the grid shows the queue, current sample first
    wait_count(page, min(QUEUE_VIEW_SIZE, total - 1))
    steps.shot("review-right")

    # "wrong, it is X" with the class the run predicts, when it differs
    wrong = content.get_by_role("button", name=re.compile(r"^Wrong: it is "))
    label = wrong.first.inner_text().split("it is ", 1)[1].strip()
    if label != "...":
        steps.run("click Wrong", wrong.first.click)
        steps.run(
            "the progress counts the wrong label",
            wait_until,
            lambda: progress_text().startswith(
                "2 of %d reviewed (1 wrong, 1 right)" % total
            ),
            lambda: "progress still %r" % progress_text(),
        )
        dataset.reload()
        review = dataset[second].ground_truth_reviewed
        assert (review.verdict, review.label) == ("wrong", label)
    steps.shot("review-wrong")
    record_timings("review", timings)

    # the App server keeps the view for the next page: reset it
    reset = content.get_by_role("button", name="Reset view")
    reset.scroll_into_view_if_needed()
    reset.click()
    steps.run("the view is reset", wait_count, page, len(dataset))
    page.close()


def test_timings(app_dataset, app_server, browser):
    """Times what a user waits for: opening the panel (until the class
    chart is drawn), a class-bar click until the grid shows that class,
    and executing "Save flagged as view" until the grid shows the flagged
    samples. Works against older checkouts too (see
    ``HARDNESS_BROWSER_CHECKOUT`` in ``browser_helpers.py``), for the
    before/after figures of ``docs/app.md``."""
    dataset, results = app_dataset
    url, log_path = app_server
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    steps = Steps(page, log_path)
    content, timings = _open(page, url, dataset, steps)
    classes = run_views.class_difficulty(dataset, results)
    field = run_views.default_score_field(results)
    expected = len(
        dataset.match(
            F(results.label_field + ".label") == classes[0][0]
        ).exists(field)
    )
    bar = (
        content.locator(".js-plotly-plot")
        .first.locator(".barlayer .point path")
        .first
    )
    bar.scroll_into_view_if_needed()
    box = bar.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.wait_for_timeout(300)
    start = time.perf_counter()
    page.mouse.click(x, y)
    steps.run("class click filters the grid", wait_count, page, expected)
    timings["chart_click_to_grid_s"] = time.perf_counter() - start

    button = content.get_by_role("button", name="Save flagged as view")
    button.scroll_into_view_if_needed()
    start = time.perf_counter()
    button.click()
    steps.run(
        "the grid shows the flagged samples",
        wait_count,
        page,
        results.num_flagged,
    )
    timings["save_flagged_to_grid_s"] = time.perf_counter() - start
    record_timings(
        "timings-%s" % ("other-checkout" if OTHER_CHECKOUT else "this"),
        timings,
    )
    page.close()
