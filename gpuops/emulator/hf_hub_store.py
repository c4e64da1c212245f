"""The Hugging Face Hub emulator's repositories on disk: one folder per commit, refs swapped atomically."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path, PurePosixPath
from typing import Any, Callable

# Regular (non-LFS) uploads only. Above this the Hub wants LFS/Xet, which the emulator does not serve:
# preupload refuses such a file with the Hub's error shape instead of pretending.
REGULAR_FILE_LIMIT = 10 * 1024 * 1024
REPO_TYPES = ("model", "dataset", "space")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
OID_RE = re.compile(r"^[0-9a-f]{40}$")
DEFAULT_NAMESPACE = "emulator-user"


class HubError(Exception):
    """An answer in the Hub's error shape: {"error": message}, with X-Error-Code / X-Error-Message."""

    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.extra = extra or {}  # more fields of the body (a 409 on create names the repo's url)

    def headers(self) -> dict[str, str]:
        headers = {"X-Error-Message": self.message.encode("ascii", "replace").decode()[:500]}
        if self.code:
            headers["X-Error-Code"] = self.code
        return headers


def git_blob_oid(data: bytes) -> str:
    """git's blob id (what the Hub returns as a regular file's oid, and what the client compares)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def check_repo_path(path: Any) -> str:
    """A path inside a repository: relative, no '..', nothing under .git (the Hub refuses those too)."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path:
        raise HubError(400, f"Invalid path in repo: {path!r}")
    parts = PurePosixPath(path).parts
    if any(p in ("", ".", "..") for p in parts) or parts[0] == ".git":
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


def _write_json(path: Path, doc: Any) -> None:
    """Write-then-rename: a reader sees the old document or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    os.replace(tmp, path)


class HubStore:
    """Repositories under `root/<type>s/<namespace>/<name>/`: `repo.json`, `refs.json` (branch -> commit)
    and `commits/<oid>/` holding `commit.json` and `tree/` (the whole tree at that commit).

    A commit is built in a temporary folder, renamed into place, and only then does its branch move:
    a commit lands whole or not at all, and every commit a client made is exactly one folder.
    """

    def __init__(self, root: str | Path, url: Callable[[], str]):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._url = url
        self._lock = threading.RLock()

    # ------------------------------------------------------------ repositories

    def repo_dir(self, repo_type: str, repo_id: str) -> Path:
        return self.root / f"{repo_type}s" / repo_id

    def _existing(self, repo_type: str, repo_id: str) -> Path:
        path = self.repo_dir(repo_type, repo_id)
        if repo_type not in REPO_TYPES or not (path / "repo.json").is_file():
            raise HubError(404, "Repository not found", "RepoNotFound")
        return path

    def create_repo(self, body: dict) -> dict:
        name, namespace = body.get("name"), body.get("organization") or DEFAULT_NAMESPACE
        repo_type = body.get("type") or "model"
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"Invalid repo type {repo_type!r}: expected one of {list(REPO_TYPES)}")
        for part in (name, namespace):
            if not isinstance(part, str) or not NAME_RE.match(part) or ".." in part:
                raise HubError(400, f"Invalid repo name {part!r}: letters, digits, '-', '_', '.' (at most 96)")
        repo_id = f"{namespace}/{name}"
        with self._lock:
            path = self.repo_dir(repo_type, repo_id)
            if (path / "repo.json").is_file():
                raise HubError(409, f"You already created this {repo_type} repo: {repo_id}",
                               extra={"url": self.repo_url(repo_type, repo_id)})
            self._new_repo(path, repo_type, repo_id, body.get("visibility") == "private" or bool(body.get("private")))
        return {"url": self.repo_url(repo_type, repo_id), "name": repo_id, "id": repo_id}

    def _new_repo(self, path: Path, repo_type: str, repo_id: str, private: bool) -> None:
        (path / "commits").mkdir(parents=True, exist_ok=True)
        _write_json(path / "refs.json", {})
        # Like the Hub: a new repository starts with one commit holding .gitattributes on main.
        oid = self._land(path, None, {"summary": "initial commit", "description": ""},
                         {".gitattributes": b"*.bin filter=lfs diff=lfs merge=lfs -text\n"}, set(), "main")
        _write_json(path / "refs.json", {"main": oid})
        _write_json(path / "repo.json", {"id": repo_id, "type": repo_type, "private": private,
                                         "createdAt": _now()})

    def repo_url(self, repo_type: str, repo_id: str) -> str:
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return f"{self._url()}/{prefix}{repo_id}"

    # ------------------------------------------------------------ refs and commits

    def refs(self, repo_type: str, repo_id: str) -> dict[str, str]:
        return json.loads((self._existing(repo_type, repo_id) / "refs.json").read_text())

    def resolve(self, repo_type: str, repo_id: str, revision: str) -> str:
        """A branch name or a full commit id -> the commit id (404 RevisionNotFound otherwise)."""
        path, refs = self._existing(repo_type, repo_id), self.refs(repo_type, repo_id)
        if revision in refs:
            return refs[revision]
        if OID_RE.match(revision) and (path / "commits" / revision / "commit.json").is_file():
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def commit_meta(self, repo_type: str, repo_id: str, oid: str) -> dict:
        return json.loads((self._existing(repo_type, repo_id) / "commits" / oid / "commit.json").read_text())

    def tree_dir(self, repo_type: str, repo_id: str, oid: str) -> Path:
        return self._existing(repo_type, repo_id) / "commits" / oid / "tree"

    def history(self, repo_type: str, repo_id: str, revision: str) -> list[dict]:
        """Commits reachable from `revision`, newest first."""
        oid: str | None = self.resolve(repo_type, repo_id, revision)
        out = []
        while oid:
            meta = self.commit_meta(repo_type, repo_id, oid)
            out.append(meta)
            oid = meta["parent"]
        return out

    def files(self, repo_type: str, repo_id: str, oid: str) -> dict[str, bytes]:
        tree = self.tree_dir(repo_type, repo_id, oid)
        return {p.relative_to(tree).as_posix(): p.read_bytes() for p in sorted(tree.rglob("*")) if p.is_file()}

    def create_branch(self, repo_type: str, repo_id: str, branch: str, starting_point: str | None) -> None:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$", branch) or ".." in branch or OID_RE.match(branch):
            raise HubError(400, f"Invalid branch name: {branch!r}")
        with self._lock:
            refs = self.refs(repo_type, repo_id)
            if branch in refs:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            refs[branch] = self.resolve(repo_type, repo_id, starting_point or "main")
            _write_json(self._existing(repo_type, repo_id) / "refs.json", refs)

    # ------------------------------------------------------------ preupload and commit

    def preupload(self, repo_type: str, repo_id: str, revision: str, files: Any) -> list[dict]:
        if not isinstance(files, list):
            raise HubError(400, "Invalid body: 'files' must be a list")
        existing = self.files(repo_type, repo_id, self.resolve(repo_type, repo_id, revision))
        return [self._upload_mode(f, existing) for f in files]

    @staticmethod
    def _upload_mode(entry: Any, existing: dict[str, bytes]) -> dict:
        if not isinstance(entry, dict) or not isinstance(entry.get("size"), int):
            raise HubError(400, "Invalid body: each file needs 'path' and an integer 'size'")
        path = check_repo_path(entry.get("path"))
        if entry["size"] > REGULAR_FILE_LIMIT:
            raise HubError(400, f"{path}: {entry['size']} bytes is over this emulator's regular-file limit "
                                f"({REGULAR_FILE_LIMIT} bytes); LFS/Xet uploads are not emulated")
        oid = git_blob_oid(existing[path]) if path in existing else None
        return {"path": path, "uploadMode": "regular", "shouldIgnore": False, "oid": oid}

    def commit(self, repo_type: str, repo_id: str, branch: str, header: dict, ops: list[dict]) -> dict:
        """Apply one parsed commit atomically; answer as the Hub does ({"commitOid", "commitUrl", ...})."""
        adds, deletes = _decode_ops(ops)
        with self._lock:
            refs = self.refs(repo_type, repo_id)
            if branch not in refs:
                raise HubError(404 if not OID_RE.match(branch) else 400, f"Invalid rev id: {branch}",
                               "RevisionNotFound" if not OID_RE.match(branch) else None)
            head = refs[branch]
            parent = header.get("parentCommit")
            if parent and not head.startswith(parent):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            oid = self._land(self._existing(repo_type, repo_id), head, header, adds, deletes, branch)
            refs = self.refs(repo_type, repo_id)
            refs[branch] = oid
            _write_json(self._existing(repo_type, repo_id) / "refs.json", refs)
        url = self.repo_url(repo_type, repo_id)
        return {"success": True, "commitOid": oid, "commitUrl": f"{url}/commit/{oid}", "hookOutput": ""}

    def _land(self, repo: Path, parent: str | None, header: dict, adds: dict[str, bytes],
              deletes: set[str], branch: str) -> str:
        """Build the commit's folder aside, then rename it into place (the only visible step)."""
        oid = hashlib.sha1(f"{parent}:{uuid.uuid4().hex}:{time.time_ns()}".encode()).hexdigest()
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=repo / "commits"))
        try:
            tree = staging / "tree"
            if parent:
                shutil.copytree(repo / "commits" / parent / "tree", tree)
            tree.mkdir(exist_ok=True)
            _apply(tree, adds, deletes)
            meta = {"oid": oid, "parent": parent, "branch": branch, "title": header.get("summary", ""),
                    "message": header.get("description", ""), "date": _now(),
                    "added": sorted(adds), "deleted": sorted(deletes)}
            (staging / "commit.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
            os.rename(staging, repo / "commits" / oid)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return oid

    # ------------------------------------------------------------ info

    def info(self, repo_type: str, repo_id: str, revision: str) -> dict:
        repo = json.loads((self._existing(repo_type, repo_id) / "repo.json").read_text())
        oid = self.resolve(repo_type, repo_id, revision)
        meta = self.commit_meta(repo_type, repo_id, oid)
        return {"_id": repo_id, "id": repo_id, "modelId": repo_id, "sha": oid, "private": repo["private"],
                "createdAt": repo["createdAt"], "lastModified": meta["date"], "tags": [], "downloads": 0,
                "likes": 0, "siblings": [{"rfilename": p} for p in self.files(repo_type, repo_id, oid)]}

    def reset(self) -> None:
        with self._lock:
            for child in self.root.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()


def _decode_ops(ops: list[dict]) -> tuple[dict[str, bytes], set[str]]:
    """Every operation checked and decoded before anything is written."""
    adds: dict[str, bytes] = {}
    deletes: set[str] = set()
    for op in ops:
        key, value = op.get("key"), op.get("value")
        if not isinstance(value, dict):
            raise HubError(400, f"Invalid commit line: 'value' must be an object (key {key!r})")
        path = check_repo_path(value.get("path", "").rstrip("/") if key == "deletedFolder" else value.get("path"))
        if key == "file":
            adds[path] = _b64(value, path)
        elif key in ("deletedFile", "deletedFolder"):
            deletes.add(path + ("/" if key == "deletedFolder" else ""))
        elif key == "lfsFile":
            raise HubError(400, f"{path}: LFS files are not emulated (regular uploads only)")
        else:
            raise HubError(400, f"Invalid commit line key {key!r}: expected header, file, deletedFile, deletedFolder")
    return adds, deletes


def _b64(value: dict, path: str) -> bytes:
    if value.get("encoding") != "base64" or not isinstance(value.get("content"), str):
        raise HubError(400, f"{path}: file content must be a base64 string with encoding 'base64'")
    try:
        data = base64.b64decode(value["content"], validate=True)
    except ValueError as exc:
        raise HubError(400, f"{path}: content is not valid base64") from exc
    if len(data) > REGULAR_FILE_LIMIT:
        raise HubError(400, f"{path}: over this emulator's regular-file limit ({REGULAR_FILE_LIMIT} bytes)")
    return data


def _apply(tree: Path, adds: dict[str, bytes], deletes: set[str]) -> None:
    for path in sorted(deletes):
        target = tree / path.rstrip("/")
        if path.endswith("/") and target.is_dir():
            shutil.rmtree(target)
        elif not path.endswith("/") and target.is_file():
            target.unlink()
        else:
            raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
    for path, data in adds.items():
        target = tree / path
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
            raise HubError(400, f"{path}: a file and a folder would share this path") from exc


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
