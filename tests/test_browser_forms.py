"""
The operator forms in a real browser (Debian's chromium driven by
playwright, the App server on a loopback port with this checkout as its
plugin, the digits demo dataset with a hardness run):

- invalid input does not execute: an existing run key, ``compute_rer``
  epochs = 0 and ``compute_cleanlab`` folds = 1 each show their error at the
  field and keep Execute disabled; pressing Enter or clicking Execute anyway
  writes nothing;
- a run ends with its summary (scored, flagged) and a button that shows the
  flagged samples;
- an execution error is visible in the page: ``compute_rer`` on a 6-sample
  view fails (a class with one sample) and the App shows the message.

Screenshots and the server log go to ``test-artifacts/``.
"""

import re

import pytest

from fiftyone_hardness.methods.base import HardnessError
from fiftyone_hardness.methods.confident_learning import CleanlabConfig
from fiftyone_hardness.methods.rer.config import RERConfig

from browser_helpers import (  # noqa: F401 (fixtures)
    STEP_TIMEOUT_MS,
    Steps,
    app_dataset,
    app_server,
    browser,
    open_app,
    requires_chromium,
    wait_count,
    wait_until,
)

pytestmark = requires_chromium

PROMPT = "[data-cy=operators-prompt-modal]"


def _open_operator(page, name):
    """Opens operator ``name``'s form from the operators browser; returns
    the prompt's locator."""
    page.click("[data-cy=action-browse-operations]", timeout=STEP_TIMEOUT_MS)
    search = page.locator("[data-cy=operators-browser-search]")
    search.fill(name)
    page.locator("[data-cy=operators-browser]").get_by_text(
        name, exact=True
    ).first.click(timeout=STEP_TIMEOUT_MS)
    prompt = page.locator(PROMPT)
    prompt.wait_for(timeout=STEP_TIMEOUT_MS)
    return prompt


def _field(prompt, label):
    """The input that follows the text ``label`` in the form."""
    return prompt.locator(
        "xpath=.//*[normalize-space(text())=%r]/following::input[1]" % label
    ).first


def _execute_button(page):
    return page.locator(PROMPT).get_by_role("button", name="Execute").first


def _wait_execute(page, enabled, why):
    button = _execute_button(page)
    wait_until(
        lambda: button.is_enabled() == enabled,
        "Execute is %s; expected %s (%s)"
        % (
            "enabled" if button.is_enabled() else "disabled",
            "enabled" if enabled else "disabled",
            why,
        ),
    )


def _set(field, value):
    field.click()
    field.fill(str(value))
    field.press("Tab")  # the App re-resolves the form on change


def _close_prompt(page):
    cancel = page.locator(PROMPT).get_by_role("button", name="Cancel")
    if cancel.count():
        cancel.first.click()
    page.locator(PROMPT).wait_for(state="detached", timeout=STEP_TIMEOUT_MS)


def _clear_view(page, total):
    button = page.locator("[data-cy=btn-clear-view-bar]")
    if button.count():
        button.first.click()
    wait_count(page, total)


def _refused(page, prompt, field, run_key, dataset):
    """Tries to run the form anyway (Enter in the invalid field, a forced
    click on Execute) and checks that nothing ran or was written."""
    field.press("Enter")
    _execute_button(page).click(force=True)
    page.wait_for_timeout(3000)
    assert prompt.is_visible(), "the form closed: it executed"
    assert not page.get_by_text("Samples scored").count()
    dataset.reload()
    assert run_key not in dataset.list_runs()
    assert not any(f.startswith(run_key) for f in dataset.get_field_schema())


def test_invalid_input_does_not_execute(
    app_dataset, app_server, browser  # noqa: F811 (fixtures)
):
    dataset, results = app_dataset
    url, log_path = app_server
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    steps = Steps(page, log_path)
    steps.run("open the App", open_app, page, url, dataset)

    prompt = steps.run("open compute_rer", _open_operator, page, "compute_rer")

    def existing_run_key():
        taken = _field(prompt, "Run key")
        assert taken.input_value() == results.key
        prompt.get_by_text(
            "A run with key '%s' exists" % results.key
        ).first.wait_for(timeout=STEP_TIMEOUT_MS)
        _wait_execute(page, False, "the run key exists")
        _set(taken, "rer_bad")
        _wait_execute(page, True, "every value is valid")

    steps.run("an existing run key keeps Execute disabled", existing_run_key)

    epochs = _field(prompt, "Epochs")
    message = RERConfig.errors({"epochs": 0})["epochs"]

    def zero_epochs():
        _set(epochs, 0)
        prompt.get_by_text(message).first.wait_for(timeout=STEP_TIMEOUT_MS)
        _wait_execute(page, False, "epochs = 0")

    steps.run("epochs = 0: error at the field, Execute disabled", zero_epochs)
    steps.shot("forms-rer-epochs-0")
    steps.run(
        "epochs = 0 cannot be executed anyway",
        _refused,
        page,
        prompt,
        epochs,
        "rer_bad",
        dataset,
    )
    steps.run("close the RER form", _close_prompt, page)

    prompt = steps.run(
        "open compute_cleanlab", _open_operator, page, "compute_cleanlab"
    )
    folds_label = CleanlabConfig.parameter("n_folds").label
    folds = _field(prompt, folds_label)
    message = CleanlabConfig.errors({"n_folds": 1})["n_folds"]

    def one_fold():
        _set(_field(prompt, "Run key"), "cleanlab_bad")
        _wait_execute(page, True, "every value is valid")
        _set(folds, 1)
        prompt.get_by_text(message).first.wait_for(timeout=STEP_TIMEOUT_MS)
        _wait_execute(page, False, "n_folds = 1")

    steps.run("folds = 1: error at the field, Execute disabled", one_fold)
    steps.shot("forms-cleanlab-folds-1")
    steps.run(
        "folds = 1 cannot be executed anyway",
        _refused,
        page,
        prompt,
        folds,
        "cleanlab_bad",
        dataset,
    )
    steps.run("close the cleanlab form", _close_prompt, page)
    page.close()


def test_a_run_ends_with_a_summary_and_opens_the_flagged(
    app_dataset, app_server, browser  # noqa: F811
):
    dataset, _ = app_dataset
    url, log_path = app_server
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    steps = Steps(page, log_path)
    steps.run("open the App", open_app, page, url, dataset)
    prompt = steps.run(
        "open compute_cleanlab", _open_operator, page, "compute_cleanlab"
    )

    def run_it():
        prompt.get_by_text(
            "Scores %s samples (the whole dataset)" % format(len(dataset), ",")
        ).first.wait_for(timeout=STEP_TIMEOUT_MS)
        _set(_field(prompt, "Run key"), "cleanlab_ok")
        _wait_execute(page, True, "every value is valid")
        _execute_button(page).click()
        page.get_by_text("Samples scored").first.wait_for(
            timeout=4 * STEP_TIMEOUT_MS
        )

    steps.run("execute compute_cleanlab", run_it)
    steps.shot("forms-summary")
    dataset.reload()
    flagged = dataset.load_run_results("cleanlab_ok").num_flagged
    assert flagged > 0

    def summary_and_button():
        sentence = re.compile(
            r"Scored %s samples, flagged %s \("
            % (format(len(dataset), ","), format(flagged, ","))
        )
        page.get_by_text(sentence).first.wait_for(timeout=STEP_TIMEOUT_MS)
        page.get_by_text(
            "Show the %s flagged samples, hardest first" % format(flagged, ",")
        ).first.click(timeout=STEP_TIMEOUT_MS)
        wait_count(page, flagged)

    steps.run(
        "the summary's button shows the flagged samples", summary_and_button
    )
    steps.shot("forms-flagged-view")

    def close_and_clear():
        page.get_by_role("button", name="Done").first.click()
        _clear_view(page, len(dataset))

    steps.run("close the summary and clear the view", close_and_clear)
    page.close()


def test_an_execution_error_is_visible(
    app_dataset, app_server, browser  # noqa: F811 (fixtures)
):
    dataset, _ = app_dataset
    url, log_path = app_server
    with pytest.raises(HardnessError) as error:
        dataset.limit(6).apply_hardness(
            "rer", run_key="rer_six", embeddings_field="pixels"
        )
    expected = str(error.value)
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    steps = Steps(page, log_path)
    steps.run("open the App", open_app, page, url, dataset)

    def limit_to_six():
        stage = page.locator("[data-cy=input-view-stage]").first
        stage.click()
        stage.fill("Limit")
        page.wait_for_timeout(500)
        page.keyboard.press("Enter")
        page.wait_for_timeout(500)
        page.keyboard.type("6")
        page.keyboard.press("Enter")
        wait_count(page, 6)

    steps.run("limit the view to 6 samples", limit_to_six)
    prompt = steps.run("open compute_rer", _open_operator, page, "compute_rer")

    def fail():
        prompt.get_by_text(
            "Scores 6 samples (the current view)"
        ).first.wait_for(timeout=STEP_TIMEOUT_MS)
        _set(_field(prompt, "Run key"), "rer_six")
        _wait_execute(page, True, "every value is valid")
        _execute_button(page).click()
        page.get_by_text(
            "Hardness: reconstruction error ratios (RER) failed"
        ).first.wait_for(timeout=2 * STEP_TIMEOUT_MS)
        page.get_by_text(expected, exact=True).first.wait_for(
            timeout=STEP_TIMEOUT_MS
        )

    steps.run("the error of compute_rer on 6 samples is shown", fail)
    steps.shot("forms-execution-error")
    dataset.reload()
    assert "rer_six" not in dataset.list_runs()

    def close_and_clear():
        page.get_by_role("button", name="Done").first.click()
        close = page.locator(PROMPT).get_by_role("button", name="Close")
        if close.count():
            close.first.click()
        _clear_view(page, len(dataset))

    steps.run("close the error and clear the view", close_and_clear)
    page.close()
