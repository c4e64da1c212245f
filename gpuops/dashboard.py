"""The jobs page: one static HTML table from every job's status.json, every value escaped."""
from __future__ import annotations

import json
from datetime import datetime
from html import escape
from urllib.parse import quote, urlsplit

from gpuops import job_status

# Status -> (text colour, background). Colour is never the only signal: the word is always shown.
COLOURS = {
    job_status.PENDING: ("#374151", "#e5e7eb"),
    job_status.RUNNING: ("#1e3a8a", "#bfdbfe"),
    job_status.SUCCEEDED: ("#14532d", "#bbf7d0"),
    job_status.FAILED: ("#7f1d1d", "#fecaca"),
}
UNKNOWN_COLOUR = ("#78350f", "#fde68a")
SAFE_SCHEMES = {"http", "https"}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #111827; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #e5e7eb; padding: .4rem .6rem; text-align: left; vertical-align: top; }
.status { border-radius: .3rem; padding: .1rem .4rem; font-weight: 600; }
.muted { color: #6b7280; }
"""


def render(jobs: list[dict], *, generated: datetime, prefect_ui_url: str | None = None,
           object_base_url: str = "") -> str:
    """The page for `jobs` (status.json documents, newest first).

    `object_base_url` prefixes the bucket keys of logs (empty: links relative to the page, right for
    the copy uploaded next to the jobs); `prefect_ui_url` builds flow-run and re-run links for jobs
    whose status names a flow run id and deployment id rather than full URLs.
    """
    ordered = sorted(jobs, key=lambda j: str(j.get("timestamps", {}).get("created", "")), reverse=True)
    rows = "\n".join(job_row(job, prefect_ui_url, object_base_url) for job in ordered)
    empty = '<tr><td colspan="8" class="muted">No jobs in the bucket yet.</td></tr>'
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<title>gpuops jobs</title>\n<style>" + _STYLE + "</style>\n</head>\n<body>\n"
        f"<h1>gpuops jobs</h1>\n<p class=\"muted\">{len(ordered)} job(s); generated "
        f"{escape(job_status.timestamp(generated))}</p>\n"
        "<table>\n<thead><tr><th>job</th><th>status</th><th>build</th><th>run</th><th>created</th>"
        "<th>updated</th><th>took</th><th>Prefect</th></tr></thead>\n<tbody>\n"
        f"{rows or empty}\n</tbody>\n</table>\n</body>\n</html>\n"
    )


def job_row(job: dict, prefect_ui_url: str | None, object_base_url: str) -> str:
    job_id = str(job.get("jobId", ""))
    anchor = f'<td id="job-{escape(job_id)}"><code>{escape(job_id)}</code></td>'
    if "unreadable" in job:
        return (f'<tr class="job unreadable">{anchor}<td>{badge("unreadable")}</td>'
                f'<td colspan="6">status.json: {escape(str(job["unreadable"]))}</td></tr>')
    stamps = job.get("timestamps", {})
    cells = [
        anchor,
        f"<td>{badge(job.get('overallStatus'))}</td>",
        f"<td>{stage_cell(job, 'build', object_base_url)}</td>",
        f"<td>{stage_cell(job, 'run', object_base_url)}</td>",
        f"<td>{escape(str(stamps.get('created', '')))}</td>",
        f"<td>{escape(str(stamps.get('updated', '')))}</td>",
        f"<td>{escape(took(job))}</td>",
        f"<td>{prefect_cell(job, prefect_ui_url)}</td>",
    ]
    return f'<tr class="job" data-status="{escape(str(job.get("overallStatus", "")))}">' + "".join(cells) + "</tr>"


def badge(status) -> str:
    text = str(status)
    fg, bg = COLOURS.get(text, UNKNOWN_COLOUR)
    css = "status status-" + "".join(c for c in text.lower() if c.isalnum())
    return f'<span class="{css}" style="color:{fg};background:{bg}">{escape(text)}</span>'


def stage_cell(job: dict, stage: str, object_base_url: str) -> str:
    part = job.get(stage) or {}
    bits = [badge(part.get("status"))]
    # §7 names both logs from the start; a stage still Pending has written nothing, so no link to a 404.
    if part.get("log") and part.get("status") != job_status.PENDING:
        bits.append(link(object_url(str(part["log"]), object_base_url), job_status.LOG_NAMES[stage]))
    if stage == "build" and part.get("imageUri"):
        bits.append(link(image_url(str(part["imageUri"])), str(part["imageUri"])))
    if stage == "run" and part.get("artifactUrl"):
        bits.append(link(str(part["artifactUrl"]), "artifact"))
    return " ".join(bits)


def prefect_cell(job: dict, prefect_ui_url: str | None) -> str:
    prefect = job.get("prefect") or {}
    run_url = flow_run_url(prefect, prefect_ui_url)
    again = rerun_url(prefect, prefect_ui_url)
    bits = [link(run_url, "flow run") if run_url else '<span class="muted">no flow run</span>']
    if again:
        bits.append(link(again, "re-run"))
    return " ".join(bits)


def flow_run_url(prefect: dict, prefect_ui_url: str | None) -> str | None:
    if prefect.get("flowRunUrl"):
        return str(prefect["flowRunUrl"])
    if prefect.get("flowRunId") and prefect_ui_url:
        return f"{ui_base(prefect_ui_url)}/runs/flow-run/{quote(str(prefect['flowRunId']), safe='')}"
    return None


def rerun_url(prefect: dict, prefect_ui_url: str | None) -> str | None:
    """The deployment's run form in the Prefect UI, filled with the job's parameters.

    The UI reads `parameters` as encodeURIComponent(JSON) inside a query the router decodes once
    more, hence the two rounds of quoting.
    """
    if not (prefect.get("deploymentId") and prefect_ui_url):
        return None
    url = f"{ui_base(prefect_ui_url)}/deployments/deployment/{quote(str(prefect['deploymentId']), safe='')}/run"
    if prefect.get("parameters"):
        encoded = quote(json.dumps(prefect["parameters"], sort_keys=True, separators=(",", ":")), safe="")
        url += "?parameters=" + quote(encoded, safe="")
    return url


def ui_base(prefect_ui_url: str) -> str:
    """The UI's root from PREFECT_UI_URL or PREFECT_API_URL (whose `/api` the UI does not have)."""
    base = prefect_ui_url.rstrip("/")
    return base[: -len("/api")] if base.endswith("/api") else base


def object_url(log_path: str, object_base_url: str) -> str:
    """A bucket key as §7 writes it (`/a1b2c3d4/build.log`) under the base URL, or relative to the page."""
    key = log_path.lstrip("/")
    if urlsplit(log_path).scheme:
        return log_path
    return (object_base_url.rstrip("/") + "/" + key) if object_base_url else key


def image_url(image_uri: str) -> str | None:
    """A registry page for `host/path:tag` (ghcr.io, ...) or a Docker Hub `user/repo:tag`."""
    name = image_uri.split("@", 1)[0]
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first):
        path = rest.rsplit(":", 1)[0] if ":" in rest.rsplit("/", 1)[-1] else rest
        return f"https://{first}/{path}"
    repo = name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name
    return f"https://hub.docker.com/r/{repo}" if "/" in repo else f"https://hub.docker.com/_/{repo}"


def link(url: str | None, text: str) -> str:
    """An anchor only for http(s) or relative URLs: `javascript:` and other schemes stay plain text."""
    if not url or not is_safe_url(url):
        return escape(text)
    return f'<a href="{escape(url, quote=True)}">{escape(text)}</a>'


def is_safe_url(url: str) -> bool:
    stripped = "".join(c for c in url if c > " ").lower()  # browsers drop whitespace and control chars
    scheme = urlsplit(stripped).scheme
    return scheme in SAFE_SCHEMES or (scheme == "" and not stripped.startswith("//"))


def took(job: dict) -> str:
    """created -> updated of a finished job, as `1h 02m 03s`; empty while it runs."""
    if not job_status.is_finished(job):
        return ""
    try:
        stamps = job["timestamps"]
        seconds = int((job_status.parse_timestamp(stamps["updated"])
                       - job_status.parse_timestamp(stamps["created"])).total_seconds())
    except (KeyError, TypeError, ValueError):
        return ""
    hours, rest = divmod(max(seconds, 0), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"
