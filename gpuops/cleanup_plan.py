"""What the GPU migration left behind on Cloud Run, and which of it may be deleted (runbook phase 8-A)."""
from __future__ import annotations

from gpuops import cloud_run_traffic

OWN_TAGS = (cloud_run_traffic.CANARY_TAG, cloud_run_traffic.STABLE_TAG)
KIND_ORDER = ("tag", "revision", "service", "job")  # tags first: they are plain traffic edits


def short(name: str) -> str:
    return name.rsplit("/", 1)[-1] if name else ""


def item(kind: str, name: str, reason: str, why_not: str | None) -> dict:
    return {"kind": kind, "name": name, "reason": reason, "deletable": why_not is None, "why_not": why_not}


def created_for(resource: dict, service: str) -> bool:
    labels = resource.get("labels") or {}
    return labels.get("managed-by") == "gpuops" and labels.get("gpuops-source-service") == service


def targets(service: dict) -> list[dict]:
    """Every traffic target, asked and served, with LATEST resolved: a reference in either counts."""
    latest = short(service.get("latestReadyRevision", ""))
    rows = []
    for t in [*(service.get("traffic") or []), *(service.get("trafficStatuses") or [])]:
        is_latest = t.get("type", "").endswith("LATEST") and not t.get("revision")
        rows.append({"revision": latest if is_latest else short(t.get("revision", "")),
                     "percent": int(t.get("percent", 0)), "tag": t.get("tag") or None})
    return rows


def live_blocker(service: dict) -> str | None:
    state = cloud_run_traffic.state_of(service)
    if state is not None and state.live:
        return (f"the canary is {state.phase} ({cloud_run_traffic.STATE_ANNOTATION} on {short(service['name'])}): "
                "finish or roll back the canary first")
    return None


def revision_blocker(service: dict, revision: str) -> str | None:
    """Why this revision of the service must stay; None when it serves nothing and nothing names it."""
    rev = short(revision)
    if rev in (short(service.get("latestReadyRevision", "")), short(service.get("latestCreatedRevision", ""))):
        return "the latest revision of the service: it is what LATEST and the next deploy build on"
    percent = cloud_run_traffic.serving_percent(service, rev)
    if percent > 0:
        return f"serves {percent}% of the traffic"
    tags = sorted({t["tag"] for t in targets(service) if t["revision"] == rev and t["tag"]})
    if tags:
        first = ", ".join(f"tag:{t}" for t in tags)
        return f"tagged {', '.join(tags)} at 0%: delete {first} first, then run cleanup again"
    if any(t["revision"] == rev for t in targets(service)):
        return "referenced by a traffic target"
    return None


def tag_target(service: dict, tag: str) -> dict | None:
    return next((t for t in targets(service) if t["tag"] == tag), None)


def tag_blocker(service: dict, tag: str) -> str | None:
    """Why this tag must stay; None when it is gpuops' own and points at a revision serving 0%."""
    found = tag_target(service, tag)
    if found is None:
        return f"no tag {tag} on the service"
    if tag not in OWN_TAGS:
        return f"not a gpuops tag (gpuops removes only {' and '.join(OWN_TAGS)})"
    if tag == cloud_run_traffic.STABLE_TAG and cloud_run_traffic.state_of(service) is None:
        # Without gpuops' canary state on the service, a tag named `stable` may be someone else's.
        return f"no gpuops canary state ({cloud_run_traffic.STATE_ANNOTATION}): this stable tag may not be gpuops'"
    percent = cloud_run_traffic.serving_percent(service, found["revision"])
    if found["percent"] > 0 or percent > 0:
        return f"points at {found['revision']}, which serves {max(percent, found['percent'])}% of the traffic"
    return None


def tags_of(service: dict) -> list[str]:
    return sorted({t["tag"] for t in targets(service) if t["tag"]})


def without_tag(service: dict, tag: str) -> list[dict]:
    """The asked-for traffic minus the tag's 0% target; every other target and percent unchanged."""
    return [t for t in service.get("traffic") or [] if t.get("tag") != tag]


def plan(service: dict, revisions: list[dict], jobs: list[dict], services: list[dict]) -> list[dict]:
    """Every item of the migration and of the service's history, each deletable or with why not."""
    sid = short(service["name"])
    items = [item("tag", f"tag:{tag}", f"traffic tag of {sid}", tag_blocker(service, tag))
             for tag in tags_of(service)]
    items += [item("revision", r["name"], f"revision of {sid}", revision_blocker(service, r["name"]))
              for r in revisions]
    items += [item(kind, r["name"], f"created by gpuops for {sid} "
                                    f"({(r.get('labels') or {}).get('gpuops-role', 'no role')})", None)
              for kind, found in (("service", services), ("job", jobs))
              for r in found if created_for(r, sid) and r["name"] != service["name"]]
    live = live_blocker(service)
    if live:
        items = [{**i, "deletable": False, "why_not": i["why_not"] or live} for i in items]
    return sorted(items, key=lambda i: KIND_ORDER.index(i["kind"]))


def deletable(items: list[dict]) -> list[str]:
    return [i["name"] for i in items if i["deletable"]]


def select(items: list[dict], approve: bool, names: list[str]) -> tuple[list[dict], list[dict]]:
    """(items to delete, refusals): only approved names that are on the deletable list."""
    if not approve:
        return [], []
    by_name = {i["name"]: i for i in items}
    chosen, refused = [], []
    for name in dict.fromkeys(names):  # a name given twice is deleted once
        found = by_name.get(name)
        if found is not None and found["deletable"]:
            chosen.append(found)
        else:
            why = found["why_not"] if found else "not on the list of deletable resources"
            refused.append({"name": name, "why": why})
    return sorted(chosen, key=lambda i: KIND_ORDER.index(i["kind"])), refused


# --- what the flow shows: the plan, the approval form, the result ---------------------------


def plan_markdown(service: str, api: str, items: list[dict], execute: bool) -> str:
    mode = "asks for approval before deleting" if execute else "dry run: nothing is changed"
    rows = [f"| {i['kind']} | `{i['name']}` | {'yes' if i['deletable'] else 'no'} | {i['why_not'] or i['reason']} |"
            for i in items]
    return "\n".join([f"# cleanup of {service} ({mode})", f"API: {api}", "",
                      "| kind | name | deletable | why (not) |", "|---|---|---|---|", *rows])


def approval_description(names: list[str]) -> str:
    listing = "\n".join(f"- `{n}`" for n in names)
    # The list goes in the description, not in `resources`' default: the UI sends only the values
    # a person entered, so a prefilled default would delete everything on a bare "approve".
    return ("# Delete these Cloud Run resources?\n\n" + listing +
            "\n\nSet **approve** and add to **resources** each name you approve, as listed; "
            "any other name is refused. Nothing is deleted without an answer.")


def result_markdown(service: str, result: dict, remaining: list[dict]) -> str:
    lines = [f"# cleanup of {service}: result", f"API: {result['api']}", ""]
    lines += [f"- deleted {d['kind']} `{d['name']}` ({d['result']})" for d in result["deleted"]]
    lines += [f"- refused `{r['name']}`: {r['why']}" for r in result["refused"]]
    lines += ["", "Still present:"] + [f"- {i['kind']} `{i['name']}`" for i in remaining]
    return "\n".join(lines)
