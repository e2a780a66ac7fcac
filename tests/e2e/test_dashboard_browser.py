"""`tuneforge ui` in a real browser: Debian's Chromium, headless, driven by Playwright.

One user's session on tiny random models: open the runs page, write a recipe in the new-run page
(a bad key first: the CLI's message inline), see the plan, launch, watch the curve grow while it
trains, cancel (interrupted) and resume it to the end, launch a second run through the form and the
queue, compare both, classify in the playground beside the base model, register both and promote
through the gate. Each page's screenshot is saved to docs/ui/*.png (the README shows them).

The browser comes from the machine's packages (no download from the internet is possible here):
the session fixture installs Debian's `chromium` with apt-get when it is missing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import sentiment_rows, write_csv
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "docs" / "ui"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, installed here when missing (the project's set-up for these tests)."""
    found = find_chromium()
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium"], env=env, check=False, timeout=900
        )
        found = find_chromium()
    if found is None:
        pytest.fail("Chromium is not installed and could not be: apt-get install chromium")
    return found


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory, tiny_model):
    """`tuneforge ui` on a free loopback port, with its own home, registry and data files."""
    tmp = tmp_path_factory.mktemp("dashboard")
    data = {
        # rows 0-1999 (the sentiment rows repeat): validation and test leak into train, which
        # the data check refuses until the recipe downgrades it
        "train": write_csv(tmp / "train.csv", sentiment_rows(2000)),
        "validation": write_csv(tmp / "validation.csv", sentiment_rows(8, offset=100)),
        "test": write_csv(tmp / "test.csv", sentiment_rows(8, offset=200)),
    }
    env = {
        **os.environ,
        "TUNEFORGE_HOME": str(tmp / "home"),
        "TUNEFORGE_REGISTRY": str(tmp / "registry.sqlite"),
        "OMP_NUM_THREADS": "1",  # tiny models: no OpenMP spinning on a busy 2-core machine
    }
    log = (tmp / "ui.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuneforge.cli", "ui", "--port", "0"],
        cwd=tmp,
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    line = proc.stdout.readline()
    found = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
    assert found, (line, (tmp / "ui.log").read_text())
    recipe = f"""name: tiny-dash
base_model: {tiny_model}
task: classification
data:
  train: {data["train"]}
  validation: {data["validation"]}
  test: {data["test"]}
method: lora
lora: {{r: 4, alpha: 8, dropout: 0.0}}
training: {{epochs: 1, max_steps: 1000, batch_size: 2, learning_rate: 1.0e-2, logging_steps: 1, eval_steps: 100, processes: 1}}
early_stopping: {{metric: macro_f1, patience: 5}}
output_dir: {tmp / "runs"}
"""
    yield {"url": found.group(1), "recipe": recipe, "tmp": tmp}
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def page(chromium, dashboard):
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.set_default_timeout(60_000)
        page.errors = errors
        yield page
        browser.close()
    assert not errors, errors


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)


def set_yaml(page, text: str) -> None:
    page.click("button.tab[data-tab=yaml]")
    page.fill("#recipe-yaml", text)
    page.dispatch_event("#recipe-yaml", "input")


def launch(page) -> str:
    """Clicks Launch; the page follows the job to its run's page. Returns the run id."""
    page.click("#launch")
    page.wait_for_function(
        "location.pathname.startsWith('/runs/') || /failed/.test("
        "(document.querySelector('#launch-result') || {}).textContent || '')",
        timeout=240_000,
    )
    assert "/runs/" in page.url, page.inner_text("#launch-result")
    page.wait_for_selector("#run-status")
    return page.url.rsplit("/", 1)[1]


def chart_points(page, chart: str) -> int:
    return int(page.get_attribute(f"#chart-{chart}", "data-points") or 0)


def test_a_users_session(page, dashboard):
    started = time.monotonic()
    try:
        session(page, dashboard)
    except Exception:
        page.screenshot(path=str(dashboard["tmp"] / "failure.png"), full_page=True)
        print(f"page {page.url}:\n{page.inner_text('body')[-3000:]}")
        print("ui log:\n" + (dashboard["tmp"] / "ui.log").read_text()[-5000:])
        raise
    print(f"browser session: {time.monotonic() - started:.0f} s")


def session(page, dashboard) -> None:
    url, recipe = dashboard["url"], dashboard["recipe"]

    # The runs page, empty.
    page.goto(url + "/")
    assert "No runs yet" in page.inner_text("#runs-table")

    # New run: a misspelt key is refused inline with the CLI's message (file line, did you mean).
    page.goto(url + "/new")
    set_yaml(page, recipe.replace("training:", "trainng:"))
    page.wait_for_function(
        "document.querySelector('#validation').textContent.includes('did you mean')"
    )
    message = page.inner_text("#validation")
    assert "unknown key 'trainng'" in message and "line 10" in message, message
    set_yaml(page, recipe)
    page.wait_for_function(
        "document.querySelector('#validation').textContent.includes('valid recipe')"
    )
    # The form is generated from the schema and writes the YAML.
    page.click("button.tab[data-tab=form]")
    page.fill("[name='training.seed']", "3")
    page.dispatch_event("[name='training.seed']", "change")
    page.wait_for_function("document.querySelector('#recipe-yaml').value.includes('seed: 3')")
    # plan: memory and time before launching
    page.click("button.inspect[data-what=plan]")
    page.wait_for_function(
        "document.querySelector('#inspect-result').textContent.includes('estimated peak memory')",
        timeout=180_000,
    )
    # A launch that fails shows the CLI's message: the data check refuses the leaking splits.
    page.click("#launch")
    page.wait_for_function(
        "/failed/.test(document.querySelector('#launch-result').textContent)", timeout=120_000
    )
    failure = page.inner_text("#launch-result")
    assert "also appear in train" in failure and "data_checks.leakage=warning" in failure, failure
    page.click("details:has([name='data_checks.leakage']) > summary")
    page.select_option("[name='data_checks.leakage']", "warning")
    page.wait_for_function(
        "document.querySelector('#recipe-yaml').value.includes('leakage: warning')"
    )
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, "new-run")
    first = launch(page)

    # Its curve grows while it trains (server-sent events, no reload).
    page.wait_for_function(
        "Number(document.querySelector('#chart-loss').dataset.points || 0) >= 2", timeout=120_000
    )
    seen = chart_points(page, "loss")
    assert page.inner_text("#run-status") == "running"
    page.wait_for_function(
        f"Number(document.querySelector('#chart-loss').dataset.points || 0) > {seen}"
    )
    shot(page, "run-live")
    runs = page.context.browser.new_page(viewport={"width": 1280, "height": 900})  # meanwhile
    runs.goto(url + "/")
    runs.wait_for_selector(f"tr[data-run='{first}'] .status.running")
    with contextlib.suppress(PlaywrightTimeout):  # the run may have got past its last step
        runs.wait_for_selector(f"tr[data-run='{first}'] progress", timeout=10_000)
    shot(runs, "runs")
    runs.close()

    # Cancel: it ends interrupted and can be resumed; resume runs it to the end.
    page.click("#cancel-run")
    page.wait_for_selector("#resume-run", timeout=120_000)
    assert page.inner_text("#run-status") == "interrupted"
    page.click("#resume-run")
    page.wait_for_selector("#run-status.running", timeout=120_000)
    page.wait_for_selector("#run-status.finished", timeout=300_000)
    page.goto(url + f"/runs/{first}")  # as the page shows it after its own reload
    assert page.inner_text("#run-status") == "finished"
    assert "Base model vs fine-tuned" in page.content()
    page.wait_for_function(  # the whole run's curves, fetched once for a finished run
        "Number(document.querySelector('#chart-loss').dataset.points || 0) >= 3"
    )
    shot(page, "run")

    # A second run, from the first one's recipe, through the queue.
    page.goto(url + f"/new?start=run:{first}")
    page.fill("[name='training.learning_rate']", "0.02")
    page.dispatch_event("[name='training.learning_rate']", "change")
    page.wait_for_function(
        "document.querySelector('#recipe-yaml').value.includes('learning_rate: 0.02')"
    )
    # its test data uploaded through the page into the managed folder
    upload = write_csv(dashboard["tmp"] / "held-out.csv", sentiment_rows(8, offset=300))
    page.set_input_files("#upload-file", str(upload))
    page.click("#upload-button")
    page.click("#uploads li:last-child button:has-text('use as test')")
    page.wait_for_function(
        "document.querySelector('#recipe-yaml').value.includes('uploads/held-out.csv')"
    )
    page.fill("[name='training.max_steps']", "100")
    page.dispatch_event("[name='training.max_steps']", "change")
    page.wait_for_function(
        "document.querySelector('#recipe-yaml').value.includes('max_steps: 100')"
    )
    page.fill("[name='training.batch_size']", "8")
    page.dispatch_event("[name='training.batch_size']", "change")
    page.wait_for_function("document.querySelector('#recipe-yaml').value.includes('batch_size: 8')")
    second = launch(page)
    assert second != first
    page.wait_for_selector("#run-status.finished", timeout=300_000)

    # Runs: both, filtered; compare them.
    page.goto(url + "/")
    page.wait_for_selector(f"tr[data-run='{second}']")
    assert page.locator("tr[data-run]").count() == 2
    page.select_option("select[name=status]", "failed")
    page.wait_for_function("!document.querySelector('tr[data-run]')")
    page.select_option("select[name=status]", "finished")
    page.wait_for_selector(f"tr[data-run='{first}']")
    page.check(f"input.pick[value='{first}']")
    page.check(f"input.pick[value='{second}']")
    page.click("#compare-button")
    page.wait_for_url(re.compile(r".*/compare\?.*"))
    page.wait_for_function(
        "Number(document.querySelector('#chart-train_loss').dataset.points || 0) > 0"
    )
    page.wait_for_function(  # the selection metric overlaid too
        "Number(document.querySelector('#chart-macro_f1').dataset.points || 0) > 0"
    )
    assert "learning_rate" in page.inner_text("main")
    shot(page, "compare")

    # Playground: the tuned model's label beside the base model's zero-shot answer.
    page.goto(url + f"/runs/{second}/playground")
    page.fill(
        "#classify-texts", "a moving, beautiful movie #301\n<b>dreadful</b>, slow and ugly #300"
    )
    page.click("#classify")
    page.wait_for_selector("#classify-result table", timeout=180_000)
    result = page.inner_text("#classify-result")
    assert "<b>dreadful</b>" in result  # shown as text, not markup
    assert re.search(r"(positive|negative)", result)
    shot(page, "playground")

    # Register both as versions of one model; promote through the gate.
    for run_id in (first, second):
        page.goto(url + f"/runs/{run_id}")
        page.fill("#model-name", "tiny-dash")
        page.click("#register-run")
        page.wait_for_function(
            "document.querySelector('#action-result').textContent.includes('registered as')"
        )
    page.goto(url + "/models")
    page.click("tr[data-version='1'] .promote-button")
    page.wait_for_function(
        "document.querySelector('#promote-result').textContent.includes('promoted')"
    )
    page.wait_for_load_state("load")
    page.wait_for_selector("tr[data-version='1'] .stage.production", timeout=30_000)
    page.click("tr[data-version='2'] .promote-button")
    page.wait_for_function(
        "/promoted|refused/.test(document.querySelector('#promote-result').textContent)",
        timeout=120_000,
    )
    verdict = page.inner_text("#promote-result")
    assert "tiny-dash@1" in verdict, verdict  # compared with the holder, on one evaluation set
    shot(page, "models")
