"""Fixtures for the hub's tests."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest


def _pg_bin(name: str) -> str | None:
    """Debian keeps the server binaries in /usr/lib/postgresql/<major>/bin, off the PATH."""
    found = shutil.which(name)
    return found or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)


def _fast_tmp_dir(prefix: str) -> Path:
    """A new directory on tmpfs where there is one: these tests check claims, leases and commits, and on a
    busy disk each fsync costs milliseconds (a commit is still a commit there; only a power cut tells)."""
    shm = "/dev/shm"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=shm if os.access(shm, os.W_OK | os.X_OK) else None))


@pytest.fixture
def fast_tmp_path():
    path = _fast_tmp_dir("gpuops-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL cluster for the session: initdb into a temporary directory, started on a free
    127.0.0.1 port (socket in that directory, trust auth for its own superuser), stopped at the end.
    Yields the server URL without a database. Skips, saying why, where PostgreSQL cannot start."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed: Debian's postgresql package")
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the cluster as the postgres user
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run PostgreSQL as")
        as_user = ["runuser", "-u", "postgres", "--"]
    # Not under pytest's tmp_path: root's pytest-of-root is 0700, so the postgres user could not reach it.
    home = _fast_tmp_dir("gpuops-pg-")
    if as_user:
        shutil.chown(home, user="postgres")
    data, log, port = home / "data", home / "server.log", _free_port()

    def run(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *cmd], cwd=home, capture_output=True, text=True, timeout=timeout)

    started = False
    try:
        # --no-sync: the test cluster's files need no fsync at creation; the server itself keeps fsync on.
        made = run(initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        if made.returncode != 0:
            pytest.skip(f"initdb failed: {(made.stderr or made.stdout).strip()[-300:]}")
        options = f"-c listen_addresses=127.0.0.1 -c port={port} -k {home}"
        start = run(pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options, "start", timeout=90)
        if start.returncode != 0:
            tail = log.read_text()[-300:] if log.exists() else start.stderr
            pytest.skip(f"PostgreSQL did not start: {tail.strip()}")
        started = True
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        if started:
            run(pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def postgres_database(postgres_server):
    """A new, empty database on the session's PostgreSQL cluster; yields its URL, drops it after."""
    import psycopg

    name = f"hub_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"{postgres_server}/{name}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
