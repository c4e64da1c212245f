"""The jobs dashboard in a real headless Chromium (Debian's, driven by selenium through chromedriver).

`gpuops dashboard --upload` runs against a moto bucket seeded with real §7 documents; the browser
opens the page moto serves (and the local file the same command writes) and checks what a user sees:
one row per job, its status word and colour, its times; then follows the links: logs come back
from the bucket, the flow-run link opens the run in Prefect's own UI, and the re-run link opens the
deployment's run form filled with the job's parameters, whose Submit starts a new flow run on the
session's real Prefect server. Prefect's UI is served by Prefect's `create_ui_app` against that
server (the test harness starts it with the UI off).
"""
from __future__ import annotations

import contextvars
import inspect
import json
import socket
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from gpuops import dashboard, job_status as js
from gpuops.status_store import StatusStore
from tests import waiting

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="Debian chromium/chromium-driver not installed: .ci/run installs them where apt is available")

# Without these Chromium hangs trying to reach Google from this closed network.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,900")
WAIT_S = 20
BUCKET = "gpuops-dashboard"
T0 = datetime(2025, 6, 18, 14, 30, tzinfo=timezone.utc)
OK, FAILED, RUNNING, PENDING, BROKEN = ("a1b2c3d4e5f60718293a4b5c6d7e8f9012345678", "deadbee", "cafe1234",
                                        "0123456", "0badc0d")
# What a run of build-run-publish records for its re-run: strings with characters that break a query
# string or JSON when quoted once too few or too many times, a number, a list.
OK_PARAMETERS = {"repo": "/srv/git/app & co+1.git", "ref": "feat/a+b", "sha": OK, "runtime": "source",
                 "hf_repo": "gpuops/model", "need_vram_gib": 16.5, "app_command": ["python", "main.py", "--x=1"]}
RUNNING_PARAMETERS = {**OK_PARAMETERS, "sha": RUNNING, "ref": "main"}
LOGS = {(OK, "build"): "Step 1/3: uv sync ✓\nbuilt ghcr.io/gpuops/app\n",
        (OK, "run"): "epoch 1 loss=0.42 <ok> & done\n",
        (FAILED, "build"): "error: could not resolve dependency torch==9.9\n",
        (RUNNING, "build"): "installed in 12 s\n",
        (RUNNING, "run"): "step 10/100\n"}
HOSTILE_IMAGE = '"><img src=x onerror="window.pwned=1">'


# --- the browser, Prefect's UI, a deployment, the seeded bucket and page ------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_OFFLINE", "true")  # Selenium Manager must never try to download a driver or browser
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        driver.set_page_load_timeout(WAIT_S)
        yield driver
        driver.quit()


@pytest.fixture(scope="module")
def prefect_ui(prefect_api, tmp_path_factory):
    """Prefect's own UI app (create_ui_app) on 127.0.0.1, talking to the session's Prefect server."""
    import uvicorn
    from prefect.server.api.server import create_ui_app
    from prefect.settings import (PREFECT_UI_API_URL, PREFECT_UI_ENABLED, PREFECT_UI_STATIC_DIRECTORY,
                                  temporary_settings)

    settings = {PREFECT_UI_ENABLED: True, PREFECT_UI_API_URL: prefect_api,
                PREFECT_UI_STATIC_DIRECTORY: str(tmp_path_factory.mktemp("prefect-ui"))}
    with temporary_settings(updates=settings):
        app = create_ui_app(ephemeral=False)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
        # The copied context carries these settings into the server's thread (its /ui-settings reads them).
        thread = threading.Thread(target=contextvars.copy_context().run, args=(server.run,), daemon=True)
        thread.start()
    wait_until(lambda: server.started, "Prefect's UI app to start")
    yield f"http://127.0.0.1:{server.config.port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def deployment(prefect_api):
    """build-run-publish deployed on the Prefect server (no work pool: its runs stay Scheduled), and
    flow runs of it for two of the jobs."""
    from prefect.client.orchestration import get_client

    from flows.build_run_publish import build_run_publish

    deployment_id = build_run_publish.to_deployment(name="dashboard-browser-test").apply()
    with get_client(sync_client=True) as client:
        runs = {sha: client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
                for sha, parameters in ((OK, OK_PARAMETERS), (RUNNING, RUNNING_PARAMETERS))}
    yield SimpleNamespace(id=str(deployment_id), runs=runs)
    with get_client(sync_client=True) as client:
        for run in flow_runs_of(deployment_id):
            client.delete_flow_run(run.id)
        client.delete_deployment(deployment_id)


@pytest.fixture(scope="module")
def site(moto_s3, prefect_ui, deployment, tmp_path_factory):
    """The bucket seeded with five jobs and their logs, and the page `gpuops dashboard` wrote and uploaded."""
    import boto3

    from gpuops_cli.cli import main

    moto_s3.reset()
    out = tmp_path_factory.mktemp("dashboard") / "index.html"
    env = {"GPUOPS_S3_ENDPOINT": moto_s3.url, "GPUOPS_STATUS_BUCKET": BUCKET, "PREFECT_UI_URL": prefect_ui,
           "AWS_ACCESS_KEY_ID": "test-access-key", "AWS_SECRET_ACCESS_KEY": "test-secret-key",
           "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        client = boto3.session.Session().client("s3", endpoint_url=moto_s3.url, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        # Readers of the page are anonymous browsers: the bucket is public-read, as an S3 bucket policy
        # (or R2's public bucket access) makes it; objects stay private otherwise (moto answers 403).
        client.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/*"}]}))
        store = StatusStore.from_env()
        for doc in seeded_jobs(deployment):
            store.create(doc)
        client.put_object(Bucket=BUCKET, Key=f"{BROKEN}/status.json", Body=b'{"jobId": "0badc0d", "overall')
        for (sha, stage), text in LOGS.items():
            store.append_log(sha, stage, text)
        code = main(["dashboard", "--out", str(out), "--upload", "--object-base-url",
                     f"{moto_s3.url}/{BUCKET}"])
    assert code == 0
    yield SimpleNamespace(url=f"{moto_s3.url}/{BUCKET}/index.html", bucket_url=f"{moto_s3.url}/{BUCKET}",
                          file=out, ui=prefect_ui, deployment=deployment)
    moto_s3.reset()


def seeded_jobs(deployment) -> list[dict]:
    """Real §7 documents, each moved through its stages: one per status, newest created last."""
    at = lambda minutes: T0 + timedelta(minutes=minutes)  # noqa: E731
    ok = js.transition(js.new_status(OK, at(0)), "build", "Running", at(1))
    ok = js.transition(ok, "build", "Succeeded", at(6), imageUri=f"ghcr.io/gpuops/app:{OK}")
    ok = js.transition(ok, "run", "Running", at(7))
    ok = js.transition(ok, "run", "Succeeded", at(31), artifactUrl=f"https://huggingface.co/gpuops/model/commit/{OK}")
    ok = js.set_prefect(ok, at(31), flow_run_id=str(deployment.runs[OK].id), deployment_id=deployment.id,
                        parameters=OK_PARAMETERS)
    failed = js.transition(js.new_status(FAILED, at(60)), "build", "Running", at(60))
    failed = js.transition(failed, "build", "Failed", at(63), imageUri=HOSTILE_IMAGE)
    running = js.transition(js.new_status(RUNNING, at(120)), "build", "Running", at(120))
    running = js.transition(running, "build", "Succeeded", at(122))
    running = js.transition(running, "run", "Running", at(123))
    running = js.set_prefect(running, at(123), flow_run_id=str(deployment.runs[RUNNING].id),
                             deployment_id=deployment.id, parameters=RUNNING_PARAMETERS)
    return [ok, failed, running, js.new_status(PENDING, at(180))]


# --- helpers ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flow_runs_of(deployment_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id])))


def wait_until(condition, what: str, timeout_s: float = WAIT_S):
    # a page still changing under us (stale element, not there yet) is "not yet"
    return waiting.wait_until(condition, what, timeout_s, interval_s=0.1)


def row(driver, job_id: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, f"job-{job_id}").find_element(By.XPATH, "./..")


def cells(driver, job_id: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [td.text for td in row(driver, job_id).find_elements(By.TAG_NAME, "td")]


def body_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def rgb(hex_colour: str) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


def follow(driver, page: str, job_id: str, link_text: str) -> str:
    """Open `page`, click the job row's link by its text, and return the URL it led to."""
    from selenium.webdriver.common.by import By

    driver.get(page)
    link = row(driver, job_id).find_element(By.LINK_TEXT, link_text)
    href = link.get_attribute("href")
    link.click()
    wait_until(lambda: driver.current_url != page, f"{link_text} of {job_id} to open {href}")
    return driver.current_url


# --- what a user sees ----------------------------------------------------------------------------------------


def test_each_job_is_one_row_newest_first_with_its_status_colour_and_times(browser, site):
    from selenium.webdriver.common.by import By

    browser.get(site.url)
    assert browser.title == "gpuops jobs"
    ids = [r.find_element(By.TAG_NAME, "code").text for r in browser.find_elements(By.CSS_SELECTOR, "tbody tr.job")]
    assert ids == [PENDING, RUNNING, FAILED, OK, BROKEN]
    assert "5 job(s)" in body_text(browser)
    expected = {OK: "Succeeded", FAILED: "Failed", RUNNING: "Running", PENDING: "Pending", BROKEN: "unreadable"}
    seen = {}
    for job_id, status in expected.items():
        badge = row(browser, job_id).find_element(By.CSS_SELECTOR, "td:nth-child(2) .status")
        assert badge.text == status
        fg, bg = dashboard.COLOURS.get(status, dashboard.UNKNOWN_COLOUR)
        seen[status] = tuple(browser.execute_script(
            "const s = getComputedStyle(arguments[0]); return [s.color, s.backgroundColor]", badge))
        assert seen[status] == (rgb(fg), rgb(bg)), status
    assert len(set(seen.values())) == len(seen)  # each status its own colour
    # job | status | build | run | created | updated | took | Prefect
    assert cells(browser, OK)[4:7] == ["2025-06-18T14:30:00Z", "2025-06-18T15:01:00Z", "31m 00s"]
    assert cells(browser, FAILED)[4:7] == ["2025-06-18T15:30:00Z", "2025-06-18T15:33:00Z", "3m 00s"]
    assert cells(browser, RUNNING)[4:7] == ["2025-06-18T16:30:00Z", "2025-06-18T16:33:00Z", ""]
    assert cells(browser, PENDING)[4:7] == ["2025-06-18T17:30:00Z", "2025-06-18T17:30:00Z", ""]
    assert "not JSON" in cells(browser, BROKEN)[2]


def test_stage_cells_show_the_image_and_artifact_and_values_stay_text(browser, site):
    from selenium.webdriver.common.by import By

    browser.get(site.url)
    build = row(browser, OK).find_element(By.CSS_SELECTOR, "td:nth-child(3)")
    image = build.find_element(By.LINK_TEXT, f"ghcr.io/gpuops/app:{OK}")
    assert image.get_attribute("href") == "https://ghcr.io/gpuops/app"
    artifact = row(browser, OK).find_element(By.LINK_TEXT, "artifact")
    assert artifact.get_attribute("href") == f"https://huggingface.co/gpuops/model/commit/{OK}"
    # A hostile image name is shown as the text it is: no element made of it, no script run.
    assert HOSTILE_IMAGE in cells(browser, FAILED)[2]
    assert browser.find_elements(By.TAG_NAME, "img") == []
    assert browser.execute_script("return window.pwned === undefined")


def test_the_uploaded_page_log_links_show_the_logs_from_the_bucket(browser, site):
    for (job_id, stage), text in LOGS.items():
        name = js.LOG_NAMES[stage]
        assert follow(browser, site.url, job_id, name) == f"{site.bucket_url}/{job_id}/{name}"
        assert body_text(browser) == text.strip()


def test_a_stage_that_has_not_started_links_no_log(browser, site):
    """§7 names a stage's log from the start, but nothing is written while it is Pending: a link there
    would answer NoSuchKey (it did, before the dashboard linked only started stages' logs)."""
    from selenium.webdriver.common.by import By

    for job_id, stage in ((FAILED, "run"), (PENDING, "build"), (PENDING, "run")):
        name = js.LOG_NAMES[stage]
        browser.get(f"{site.bucket_url}/{job_id}/{name}")
        assert "NoSuchKey" in browser.page_source
        browser.get(site.url)
        assert row(browser, job_id).find_elements(By.LINK_TEXT, name) == []
        assert "Pending" in cells(browser, job_id)[2 if stage == "build" else 3]


def test_the_local_file_page_links_logs_through_the_object_base_url(browser, site):
    page = site.file.as_uri()
    browser.get(page)
    assert cells(browser, OK)[4:7] == ["2025-06-18T14:30:00Z", "2025-06-18T15:01:00Z", "31m 00s"]
    assert follow(browser, page, FAILED, "build.log") == f"{site.bucket_url}/{FAILED}/build.log"
    assert body_text(browser) == LOGS[(FAILED, "build")].strip()
    assert follow(browser, page, OK, "app.log") == f"{site.bucket_url}/{OK}/app.log"
    assert body_text(browser) == LOGS[(OK, "run")].strip()


def test_the_flow_run_link_opens_the_run_in_the_prefect_ui(browser, site):
    for job_id in (OK, RUNNING):
        run = site.deployment.runs[job_id]
        assert follow(browser, site.url, job_id, "flow run") == f"{site.ui}/runs/flow-run/{run.id}"
        wait_until(lambda: run.name in body_text(browser) and "build-run-publish" in body_text(browser),
                   f"Prefect's UI to show flow run {run.name}")
    browser.get(site.url)
    assert "no flow run" in cells(browser, FAILED)[7]


def test_the_rerun_link_fills_the_run_form_and_starts_the_deployment_again(browser, site):
    from selenium.webdriver.common.by import By

    from flows.build_run_publish import build_run_publish

    url = follow(browser, site.url, OK, "re-run")
    assert url.startswith(f"{site.ui}/deployments/deployment/{site.deployment.id}/run?parameters=")
    fields = "return [...document.querySelectorAll('textarea, input')].map(e => e.value)"
    strings = {value for value in OK_PARAMETERS.values() if isinstance(value, str)}
    wait_until(lambda: strings <= set(browser.execute_script(fields)), "the run form to show the job's parameters")
    submit = wait_until(lambda: browser.find_element(By.XPATH, "//button[normalize-space()='Submit']"),
                        "the run form's Submit button")
    submit.click()
    known = {run.id for run in site.deployment.runs.values()}
    (started,) = wait_until(lambda: [run for run in flow_runs_of(site.deployment.id) if run.id not in known],
                            "Submit to start a flow run of the deployment")
    # The job's parameters as they were, and the form's own values for the others: the flow's defaults.
    assert {name: started.parameters.get(name) for name in OK_PARAMETERS} == OK_PARAMETERS
    defaults = {name: p.default for name, p in inspect.signature(build_run_publish.fn).parameters.items()}
    assert {name: value for name, value in started.parameters.items() if name not in OK_PARAMETERS} == \
        {name: value for name, value in defaults.items() if name not in OK_PARAMETERS}
