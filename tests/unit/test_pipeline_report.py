"""What a pipeline run reports, from a status.json moved through its stages."""
from datetime import datetime, timedelta, timezone

from gpuops import job_status as js
from gpuops.pipeline_report import failed_stage, log_tail_markdown, stage_durations

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc)


def test_durations_come_from_each_stages_start_and_end():
    doc = js.new_status("a1b2c3d4", T0)
    doc = js.transition(doc, "build", js.RUNNING, T0)
    doc = js.transition(doc, "build", js.SUCCEEDED, T0 + timedelta(seconds=42))
    doc = js.transition(doc, "run", js.RUNNING, T0 + timedelta(seconds=43))
    rows = {r["stage"]: r for r in stage_durations(doc)}
    assert rows["build"]["seconds"] == 42.0 and rows["build"]["status"] == js.SUCCEEDED
    assert rows["run"]["seconds"] is None and rows["run"]["started"] == "2026-11-23T10:00:43Z"
    assert failed_stage(doc) is None and log_tail_markdown(doc, "x") is None


def test_a_failed_build_shows_its_last_lines_and_a_fence_in_the_log_cannot_break_out():
    doc = js.transition(js.transition(js.new_status("a1b2c3d4", T0), "build", js.RUNNING, T0),
                        "build", js.FAILED, T0 + timedelta(seconds=5))
    log = "\n".join(f"line {i}" for i in range(100)) + "\n```\nerror: uv sync failed\n"
    text = log_tail_markdown(doc, log, lines=3)
    assert text.splitlines()[0] == "# a1b2c3d4: build failed" and "line 98" not in text
    assert "```\nerror: uv sync failed\n````" in text and text.count("````") == 2
    assert doc["run"]["status"] == js.PENDING
