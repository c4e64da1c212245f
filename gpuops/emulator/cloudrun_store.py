"""What the emulator's stores share: the lock, IDs and etags, create-or-update, lookups and pages."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Callable

from google.protobuf.message import Message

from .cloudrun_common import (
    Name,
    aborted_etag,
    already_exists,
    check_id,
    check_namespaces,
    clone,
    invalid,
    not_found,
    paginate,
    parent_matches,
)

# Builds the http URL a service (or one of its tags) is reachable at.
UriFn = Callable[[Name, "str | None"], str]


@dataclass
class Context:
    """What the stores share: the lock, the caller identity and how URLs are made."""

    lock: threading.RLock
    uri_for: UriFn
    creator: str = "emulator-user@gpuops.invalid"
    extra: dict = field(default_factory=dict)


class TopLevelStore:
    """Services and jobs alike: created under an ID, updated by name (or created when allowed).

    A subclass names its resource (`KIND`, `COLLECTION`, `ID_RE`), exposes its table of
    resources as `table`, and writes a resource in `_write(name, body, old, validate_only)`.
    """

    KIND = ""
    COLLECTION = ""
    ID_RE: re.Pattern

    ctx: Context

    @property
    def table(self) -> dict[str, Message]:
        raise NotImplementedError

    def _write(self, name: str, body: Message, old: Message | None, validate_only: bool) -> Message:
        raise NotImplementedError

    def _merge_masked(self, old: Message, body: Message, mask) -> Message:
        raise invalid(f"update_mask is not supported for {self.COLLECTION}")

    def create(self, parent: str, rid: str, body: Message, validate_only: bool = False) -> Message:
        with self.ctx.lock:
            check_id(rid, self.ID_RE, f"{self.KIND}_id")
            name = f"{parent}/{self.COLLECTION}/{rid}"
            if body.name and body.name != name:
                raise invalid(f"{self.KIND}.name '{body.name}' does not match '{name}'")
            if name in self.table:
                raise already_exists(name)
            check_namespaces(f"{self.KIND}.annotations", body.annotations)
            return self._write(name, body, None, validate_only)

    def update(self, body: Message, allow_missing: bool = False, validate_only: bool = False,
               mask=None) -> Message:
        with self.ctx.lock:
            parsed = Name.parse(body.name)
            old = self.table.get(body.name)
            if old is None:
                if not allow_missing:
                    raise not_found(body.name)
                return self.create(parsed.parent, parsed.id, body, validate_only)
            if body.etag and body.etag != old.etag:
                raise aborted_etag(body.name)
            if mask is not None and mask.paths:
                body = self._merge_masked(old, body, mask)
            return self._write(body.name, body, old, validate_only)

    def exists(self, name: str) -> bool:
        with self.ctx.lock:
            return name in self.table

    def get(self, name: str) -> Message:
        return self._lookup(self.table, name)

    def list(self, parent: str, page_size: int = 0, page_token: str = "") -> tuple[list, str]:
        return self._page(self.table, parent, page_size, page_token)

    def _checked(self, name: str, etag: str) -> Message:
        """The resource, if the caller's etag (when given) is still current."""
        current = self.get(name)
        if etag and etag != current.etag:
            raise aborted_etag(name)
        return current

    def _lookup(self, table: dict, name: str) -> Message:
        with self.ctx.lock:
            if name not in table:
                raise not_found(name)
            return clone(table[name])

    def _page(self, table: dict, parent: str, page_size: int, page_token: str,
              newest_first: bool = False) -> tuple[list, str]:
        with self.ctx.lock:
            names = [n for n in table if parent_matches(parent, Name.parse(n).parent)]
            if newest_first:  # as Google lists revisions and executions
                names.sort(key=lambda n: (table[n].create_time.ToNanoseconds(), n), reverse=True)
            else:
                names.sort()
            page, token = paginate(names, page_size, page_token)
            return [clone(table[n]) for n in page], token
