"""The jobs page: every value escaped, a colour per status, links to logs, image, artifact, flow run, re-run."""
import json
import re
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from urllib.parse import parse_qs, unquote, urlsplit

from gpuops import dashboard, job_status as js

T0 = datetime(2025, 6, 18, 14, 30, tzinfo=timezone.utc)
UI = "http://127.0.0.1:4200/api"


class Page(HTMLParser):
    """The page's anchors (href, text) and the text of each element with a status class."""

    def __init__(self, html: str):
        super().__init__()
        self.links, self.badges, self._href, self._badge = [], [], None, None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a":
            self._href = attrs["href"]
        if "status" in (attrs.get("class") or "").split():
            self._badge = attrs

    def handle_data(self, data):
        if self._href is not None:
            self.links.append((self._href, data))
            self._href = None
        if self._badge is not None:
            self.badges.append((data, self._badge["style"]))
            self._badge = None


def succeeded_job(sha="a1b2c3d4") -> dict:
    doc = js.new_status(sha, T0)
    doc = js.transition(doc, "build", "Running", T0)
    doc = js.transition(doc, "build", "Succeeded", T0 + timedelta(minutes=5), imageUri="ghcr.io/user/repo:" + sha)
    doc = js.transition(doc, "run", "Running", T0 + timedelta(minutes=6))
    doc = js.transition(doc, "run", "Succeeded", T0 + timedelta(minutes=25),
                        artifactUrl="https://huggingface.co/user/model/commit/abc")
    return js.set_prefect(doc, T0 + timedelta(minutes=25), flow_run_id="11111111-2222", deployment_id="dep-9",
                          parameters={"repo": "https://github.com/o/r.git", "ref": "main", "sha": sha})


def failed_job(sha="deadbee") -> dict:
    doc = js.transition(js.new_status(sha, T0 + timedelta(hours=1)), "build", "Running", T0 + timedelta(hours=1))
    return js.transition(doc, "build", "Failed", T0 + timedelta(hours=1, minutes=2))


def render(jobs, **kw) -> str:
    return dashboard.render(jobs, generated=T0 + timedelta(hours=2), **kw)


def test_each_status_has_its_own_colour_and_its_word():
    page = Page(render([succeeded_job(), failed_job(), js.new_status("0123456", T0)]))
    colours = {text: style for text, style in page.badges}
    assert set(colours) == {"Succeeded", "Failed", "Pending"}
    assert len(set(colours.values())) == 3
    assert dashboard.COLOURS["Succeeded"][1] in colours["Succeeded"]
    assert dashboard.COLOURS["Failed"][1] in colours["Failed"]


def test_links_to_logs_image_artifact_and_the_flow_run():
    html = render([succeeded_job()], prefect_ui_url=UI, object_base_url="http://127.0.0.1:9000/bucket")
    links = dict((text, href) for href, text in Page(html).links)
    assert links["build.log"] == "http://127.0.0.1:9000/bucket/a1b2c3d4/build.log"
    assert links["app.log"] == "http://127.0.0.1:9000/bucket/a1b2c3d4/app.log"
    assert links["ghcr.io/user/repo:a1b2c3d4"] == "https://ghcr.io/user/repo"
    assert links["artifact"] == "https://huggingface.co/user/model/commit/abc"
    assert links["flow run"] == "http://127.0.0.1:4200/runs/flow-run/11111111-2222"
    assert "25m 00s" in html and "2025-06-18T14:30:00Z" in html


def test_the_rerun_link_opens_the_deployment_run_form_with_the_job_parameters():
    links = dict((text, href) for href, text in Page(render([succeeded_job()], prefect_ui_url=UI)).links)
    url = urlsplit(links["re-run"])
    assert url.path == "/deployments/deployment/dep-9/run"
    # The router decodes the query once, the UI's parameter type once more.
    parameters = json.loads(unquote(parse_qs(url.query)["parameters"][0]))
    assert parameters == {"repo": "https://github.com/o/r.git", "ref": "main", "sha": "a1b2c3d4"}


def test_an_uploaded_page_links_logs_relative_to_itself():
    hrefs = [h for h, _ in Page(render([succeeded_job()])).links]
    assert "a1b2c3d4/build.log" in hrefs and "a1b2c3d4/app.log" in hrefs


def test_a_flow_run_url_in_the_status_wins_and_no_ui_means_no_built_links():
    job = succeeded_job()
    job["prefect"] = {"flowRunUrl": "https://app.prefect.cloud/runs/flow-run/x"}
    links = dict((text, href) for href, text in Page(render([job])).links)
    assert links["flow run"] == "https://app.prefect.cloud/runs/flow-run/x" and "re-run" not in links
    assert "no flow run" in render([failed_job()])


def test_every_value_is_escaped_and_unsafe_urls_are_not_links():
    job = succeeded_job()
    job["build"]["imageUri"] = '<script>alert(1)</script>'
    job["run"]["artifactUrl"] = "java\tscript:alert(document.cookie)"
    job["timestamps"]["created"] = '"><img src=x onerror=alert(2)>'
    job["prefect"] = {"flowRunUrl": "javascript:alert(3)"}
    html = render([job, {"jobId": "<b>bad</b>", "unreadable": "not JSON (<i>)"}])
    assert "<script>" not in html and "<img" not in html and "<b>bad" not in html and "<i>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    hrefs = [h for h, _ in Page(html).links]
    assert not any("script:" in h.replace("\t", "") for h in hrefs)


def test_newest_job_first_and_an_empty_bucket_says_so():
    html = render([succeeded_job(), failed_job()])
    assert html.index("deadbee") < html.index("a1b2c3d4")
    assert "No jobs in the bucket yet" in render([])


def test_unreadable_status_is_listed_not_hidden():
    html = render([{"jobId": "abcdef1", "unreadable": "missing run"}, succeeded_job()])
    assert re.search(r'id="job-abcdef1".*unreadable.*missing run', html, re.S)
    assert 'id="job-a1b2c3d4"' in html


def test_image_links_for_registries_and_docker_hub():
    assert dashboard.image_url("ghcr.io/user/repo:abc") == "https://ghcr.io/user/repo"
    assert dashboard.image_url("localhost:5000/app@sha256:00") == "https://localhost:5000/app"
    assert dashboard.image_url("user/repo:1") == "https://hub.docker.com/r/user/repo"
    assert dashboard.image_url("python:3.11") == "https://hub.docker.com/_/python"
