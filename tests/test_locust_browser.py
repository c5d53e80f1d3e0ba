"""Locust's web UI in headless Chromium: the kit's options set in the form reach the users,
and the Pipeline tab shows the allocation throughput while it runs.

Needs Debian's ``chromium`` package and the ``playwright`` Python package (its own browser
downloads are not used: Playwright drives the system Chromium through ``executable_path``).
The screenshot is kept in ``test-artifacts/``.
"""

import re
import shutil
import time
import uuid

import psycopg
import pytest

from tests.allocation_fixtures import executions, new_topic, publish, traded_dsn
from tests.conftest import REPO
from tests.test_locust_runs import run_records, start_locust, stop_locust
from workload.embedded import free_port, port_is_open
from workload.verify import run_checks

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.browser]
__all__ = ["traded_dsn"]

ARTIFACTS = REPO / "test-artifacts"
# Without the background-networking flags Chromium waits on services it cannot reach here.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("no Chromium here: install Debian's chromium package to run the browser test")
    return found


def sync_playwright():
    try:
        from playwright.sync_api import sync_playwright as start
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -r requirements.txt)")
    return start


def wait_for_port(port: int, proc, log, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not port_is_open(port):
        assert proc.poll() is None, f"locust exited:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no web UI on {port}:\n{log.read_text()}"
        time.sleep(0.2)


def pipeline_rows(page) -> dict[str, str]:
    rows = {}
    for text in page.locator("table tr").all_inner_texts():
        metric, _, value = text.partition("\t")
        rows[metric.strip()] = value.strip()
    return rows


def executions_per_second(rows: dict[str, str]) -> float:
    value = rows.get("Allocated executions/s", "")
    return float(value.replace(",", "")) if re.fullmatch(r"[\d,.]+", value) else 0.0


def test_the_pipeline_tab_shows_throughput_of_options_set_in_the_form(lab_stack, traded_dsn,
                                                                      tmp_path):  # fmt: skip
    browser_path, start_playwright = chromium(), sync_playwright()
    items = executions(traded_dsn)
    topic = new_topic(lab_stack.kafka_bootstrap, partitions=4)
    publish(lab_stack.kafka_bootstrap, topic, items)
    results, log, port = tmp_path / "results", tmp_path / "locust.log", free_port()
    proc = start_locust(
        "allocation.py",
        "--web-host", "127.0.0.1", "--web-port", str(port),
        "--dsn", traded_dsn, "--bootstrap", lab_stack.kafka_bootstrap,
        "--topic", topic, "--group", f"g-{uuid.uuid4().hex[:8]}", "--topology", "browser-test",
        "--results-dir", str(results),
        log=log,
    )  # fmt: skip
    try:
        wait_for_port(port, proc, log)
        with start_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=browser_path, args=CHROMIUM_FLAGS, headless=True
            )
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.goto(f"http://127.0.0.1:{port}/", timeout=30_000)
                page.fill("input[name=userCount]", "2")
                page.fill("input[name=spawnRate]", "2")
                page.get_by_text("Custom parameters").click()
                page.select_option("select[name=strategy]", "per-execution")
                page.fill("input[name=batchSize]", "20")
                page.get_by_role("button", name="Start").click()
                page.get_by_role("tab", name="Pipeline").click()
                rows: dict[str, str] = {}
                deadline = time.monotonic() + 60
                while executions_per_second(rows) <= 0 and time.monotonic() < deadline:
                    page.wait_for_timeout(500)
                    rows = pipeline_rows(page)
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "locust-pipeline.png"), full_page=True)
                assert executions_per_second(rows) > 0, rows
                assert rows["Topology under test"] == "browser-test"
                assert rows["Consumers in the group"] == "2 of 4 partitions"
                page.get_by_role("button", name="Stop").click()
                deadline = time.monotonic() + 90
                while not list(results.glob("*.json")) and time.monotonic() < deadline:
                    page.wait_for_timeout(250)
            finally:
                browser.close()
    finally:
        code = stop_locust(proc)
    assert code == 0, log.read_text()
    [record] = run_records(results)
    # What the form said is what the users ran.
    assert record["strategy"] == "per-execution"
    assert record["knobs"]["batch_size"] == 20 and record["knobs"]["consumers"] == 2
    assert record["topology"]["name"] == "browser-test"
    assert 0 < record["results"]["executions_allocated"] <= len(items)
    with psycopg.connect(traded_dsn) as conn:
        failed = [r.check.name for r in run_checks(conn) if not r.passed]
    assert set(failed) <= {"execution_has_one_fill"}  # stopped early, never half-done
