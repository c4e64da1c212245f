"""One markdown table cell, as every report writes it."""
from __future__ import annotations

import json
from typing import Any


def cell(value: Any) -> str:
    """`-` for nothing, JSON for structures and booleans, pipes and line breaks escaped so that a
    value (an error body, a log line) cannot break its row."""
    if value is None:
        return "-"
    if isinstance(value, str):
        text = value
    elif isinstance(value, (dict, list, tuple, bool)):
        text = json.dumps(value, sort_keys=True, default=str)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")
