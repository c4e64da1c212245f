"""URIs as logs, artifacts, events and notifications may show them."""
from __future__ import annotations

from urllib.parse import urlsplit


def shown_uri(uri: str) -> str:
    """The URI without its query string and fragment, where a signed URL (X-Goog-Signature,
    X-Amz-Signature, a SAS token) carries its credential."""
    parts = urlsplit(uri)
    if not parts.query and not parts.fragment:
        return uri
    return parts._replace(query="", fragment="").geturl() + "?[query withheld]"
