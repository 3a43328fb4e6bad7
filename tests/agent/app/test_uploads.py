"""The upload policy: unit rules of agent/app/uploads.py, then each rule through a real `cmw serve`."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradio_client import Client, handle_file
from hypothesis import given
from hypothesis import strategies as st

from agent.app.admin import token_path
from agent.app.uploads import MAX_NAME_CHARS, attach_upload, kind_problem, safe_name
from agent.sessions.manager import SessionManager
from agent.sessions.store import MemoryStore
from tests.servers import RunningServer, cmw_server

pytestmark = pytest.mark.server

LIMIT = 2_000
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"


def manager(root: Path, max_sessions: int = 10) -> SessionManager:
    return SessionManager(
        idle_ttl_s=60, max_sessions=max_sessions, store=MemoryStore(), upload_root=root,
        default_provider="sim", default_model="m",
    )


# ---------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("notes.txt", "notes.txt"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\win.ini", "win.ini"),
        ("C:\\Users\\me\\report.md", "report.md"),
        ("..", "file"),
        ("", "file"),
        (".bashrc", "bashrc"),
        ("-rf.txt", "rf.txt"),
        ("bell\x07\x00name\u202e.txt", "bellname.txt"),
        ("a;b|c$(d).txt", "a_b_c_(d).txt"),
        ("naïve résumé.md", "naïve résumé.md"),
    ],
)
def test_client_names_become_plain_file_names(raw: str, expected: str) -> None:
    assert safe_name(raw) == expected


def test_very_long_names_are_cut_keeping_the_suffix() -> None:
    name = safe_name("x" * 5_000 + ".txt")
    assert len(name) == MAX_NAME_CHARS
    assert name.endswith(".txt")


@given(st.text(max_size=400))
def test_any_name_stays_inside_its_folder(raw: str) -> None:
    name = safe_name(raw)
    folder = Path("/srv/uploads/session")
    assert name and len(name) <= MAX_NAME_CHARS
    assert not name.startswith((".", "-"))
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert (folder / name).resolve().parent == folder


# ---------------------------------------------------------------------------- kinds


def test_text_content_with_a_text_suffix_or_none_is_accepted() -> None:
    assert kind_problem("notes.md", "# héllo\n".encode()) is None
    assert kind_problem("README", b"plain") is None


def test_binary_content_is_refused_whatever_its_suffix() -> None:
    assert "binary content" in (kind_problem("image.txt", PNG) or "")


def test_a_non_text_suffix_is_refused_and_the_accepted_ones_are_named() -> None:
    problem = kind_problem("tool.exe", b"MZ text-looking")
    assert problem is not None and ".exe is not accepted" in problem and ".txt" in problem


def test_text_that_is_not_utf8_is_refused() -> None:
    assert "not UTF-8" in (kind_problem("latin.txt", "café".encode("latin-1")) or "")


# ---------------------------------------------------------------------------- copies


def test_accepted_file_is_copied_privately_into_the_sessions_folder(tmp_path: Path) -> None:
    sessions = manager(tmp_path / "uploads")
    session = sessions.get_or_create("s1")
    source = tmp_path / "in" / "notes.txt"
    source.parent.mkdir()
    source.write_text("hello")
    result = attach_upload(sessions, session, source, max_bytes=LIMIT, max_files=10, source_root=tmp_path)
    assert result.ok and result.path == sessions.upload_dir(session) / "notes.txt"
    assert result.path.read_text() == "hello"
    assert stat.S_IMODE(result.path.stat().st_mode) == 0o600
    assert session.files == {"notes.txt": "hello"}


def test_files_beyond_the_sessions_cap_are_refused_with_a_message(tmp_path: Path) -> None:
    sessions = manager(tmp_path / "uploads")
    session = sessions.get_or_create("s1")
    results = []
    for n in range(4):
        source = tmp_path / f"n{n}.txt"
        source.write_text(f"note {n}")
        results.append(attach_upload(sessions, session, source, max_bytes=LIMIT, max_files=3, source_root=tmp_path))
    assert [r.ok for r in results] == [True, True, True, False]
    assert "already has 3 files, the limit (sessions.max_files)" in results[3].message
    again = attach_upload(sessions, session, tmp_path / "n0.txt", max_bytes=LIMIT, max_files=3, source_root=tmp_path)
    assert again.ok  # the same name replaces its earlier copy: still 3 files
    assert sorted(session.files) == ["n0.txt", "n1.txt", "n2.txt"]


def test_a_file_over_the_limit_is_refused_and_not_copied(tmp_path: Path) -> None:
    sessions = manager(tmp_path / "uploads")
    session = sessions.get_or_create("s1")
    big = tmp_path / "big.txt"
    big.write_text("a" * (LIMIT + 1))
    result = attach_upload(sessions, session, big, max_bytes=LIMIT, max_files=10, source_root=tmp_path)
    assert not result.ok and "over the 2,000-byte limit" in result.message
    assert session.files == {} and session.upload_dir is None


def test_a_symlink_planted_in_the_folder_is_never_written_through(tmp_path: Path) -> None:
    sessions = manager(tmp_path / "uploads")
    session = sessions.get_or_create("s1")
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    (sessions.upload_dir(session) / "notes.txt").symlink_to(victim)
    source = tmp_path / "notes.txt"
    source.write_text("overwrite?")
    result = attach_upload(sessions, session, source, max_bytes=LIMIT, max_files=10, source_root=tmp_path)
    assert not result.ok and "could not be stored" in result.message
    assert victim.read_text() == "untouched"


def test_only_files_inside_the_upload_cache_are_read(tmp_path: Path) -> None:
    sessions = manager(tmp_path / "uploads")
    session = sessions.get_or_create("s1")
    cache, outside = tmp_path / "cache", tmp_path / "secret.txt"
    cache.mkdir()
    outside.write_text("classified")
    (cache / "link.txt").symlink_to(outside)
    for source in (outside, cache / "link.txt", cache / ".." / "secret.txt"):
        result = attach_upload(sessions, session, source, max_bytes=LIMIT, max_files=10, source_root=cache)
        assert not result.ok and "not a file uploaded to this server" in result.message
    assert session.files == {}


@pytest.mark.parametrize("ending", ["kill", "evict"])
def test_the_sessions_folder_goes_when_the_session_ends(tmp_path: Path, ending: str) -> None:
    sessions = manager(tmp_path / "uploads", max_sessions=1)
    session = sessions.get_or_create("s1")
    source = tmp_path / "notes.txt"
    source.write_text("bye")
    copy = attach_upload(sessions, session, source, max_bytes=LIMIT, max_files=10, source_root=tmp_path).path
    assert copy is not None
    folder = copy.parent
    if ending == "kill":
        sessions.end("s1", "killed")
    else:
        sessions.get_or_create("s2")  # max_sessions=1: s1 is evicted
    assert not folder.exists()


# ---------------------------------------------------------------------------- through the real server


MAX_FILES = 3
PER_UPLOAD = 4
CACHE_TTL_S = 5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("uploads")
    caps = (f"sessions.max_upload_bytes={LIMIT}", f"sessions.max_files={MAX_FILES}",
            f"sessions.max_files_per_upload={PER_UPLOAD}", f"server.upload_cache_ttl_s={CACHE_TTL_S}")
    with cmw_server(tmp, *caps, env={"GRADIO_TEMP_DIR": str(tmp / "gradio-cache")}) as running:
        yield running


def cached_files(server: RunningServer) -> set[Path]:
    """The files in the server's Gradio upload cache."""
    return {p for p in (server.state_dir.parent / "gradio-cache").rglob("*") if p.is_file()}


def upload_raw(server: RunningServer, count: int, size: int = 10) -> httpx.Response:
    files = [("files", (f"f{n}.txt", f"{n}".encode() * size, "text/plain")) for n in range(count)]
    return httpx.post(f"{server.url}/gradio_api/upload", files=files, timeout=30)


def upload_folder(server: RunningServer, session_hash: str) -> Path:
    """Where SessionManager.upload_dir puts this Gradio session's copies in the serving process."""
    token = token_path(server.state_dir).read_text().strip()
    session_id = httpx.get(f"{server.url}/admin/api/sessions/{session_hash}", timeout=10,
                           headers={"Authorization": f"Bearer {token}"}).json()["id"]
    name = hashlib.sha256(session_id.encode("utf-8")).hexdigest()[:32]
    return server.state_dir / "uploads" / str(server.proc.pid) / name


def attach(user: Client, *paths: Path) -> str:
    return user.predict([handle_file(str(p)) for p in paths], api_name="/attach")


def test_server_accepts_a_text_file_and_keeps_a_copy_in_the_sessions_folder(
    server: RunningServer, tmp_path: Path
) -> None:
    note = tmp_path / "plan.md"
    note.write_text("# the plan")
    user = Client(server.url, verbose=False)
    assert "plan.md attached" in attach(user, note)
    assert (upload_folder(server, user.session_hash) / "plan.md").read_text() == "# the plan"


def test_server_refuses_binary_and_oversized_files_with_messages(server: RunningServer, tmp_path: Path) -> None:
    binary, text_ok = tmp_path / "photo.txt", tmp_path / "ok.txt"
    binary.write_bytes(PNG)
    text_ok.write_text("fine")
    user = Client(server.url, verbose=False)
    info = attach(user, binary, text_ok)
    assert "photo.txt: not a text file (binary content)" in info
    assert "ok.txt attached" in info
    assert not (upload_folder(server, user.session_hash) / "photo.txt").exists()


def test_server_refuses_a_file_over_the_size_setting(server: RunningServer, tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    big.write_text("a" * (LIMIT + 500))
    user = Client(server.url, verbose=False)
    with pytest.raises(Exception) as refused:  # Gradio's max_file_size refuses it at the upload route
        attach(user, big)
    assert "big.txt" not in str(user.predict(api_name="/stats"))
    assert "size" in str(refused.value).lower() or "large" in str(refused.value).lower()


def test_traversal_and_very_long_upload_names_are_stored_as_plain_names(server: RunningServer) -> None:
    user = Client(server.url, verbose=False)
    long_name = "n" * 400 + ".txt"
    for raw, content in (("../../../../tmp/escape.txt", b"escape"), (long_name, b"long")):
        answer = httpx.post(f"{server.url}/gradio_api/upload", files={"files": (raw, content, "text/plain")},
                            timeout=10)
        assert answer.status_code == 200
        cached = answer.json()[0]
        info = user.predict([{"path": cached, "meta": {"_type": "gradio.FileData"}}], api_name="/attach")
        assert "attached" in info
    stored = sorted(p.name for p in upload_folder(server, user.session_hash).iterdir())
    assert len(stored) == 2
    assert all(len(name) <= MAX_NAME_CHARS and "/" not in name and not name.startswith(".") for name in stored)
    assert not Path("/tmp/escape.txt").exists() or Path("/tmp/escape.txt").read_bytes() != b"escape"


@pytest.mark.parametrize("name", ["secret.txt", "admin.token"])
def test_attach_cannot_read_a_server_file_outside_the_upload_cache(server: RunningServer, name: str) -> None:
    secret = server.state_dir / name
    if not secret.exists():
        secret.write_text("classified")
    answer = json.dumps(attach_raw(server, {"path": str(secret), "meta": {"_type": "gradio.FileData"}}))
    assert "not uploaded by a user" in answer or "not a file uploaded to this server" in answer
    assert secret.read_text().strip() not in answer and "attached (" not in answer


@pytest.mark.parametrize(
    "target",
    ["/etc/passwd", "{state}/admin.token", "{state}/sessions.db", "{upload}", "../../../../etc/passwd"],
)
def test_nothing_outside_the_upload_cache_is_served(server: RunningServer, tmp_path: Path, target: str) -> None:
    note = tmp_path / "served.txt"
    note.write_text("private copy")
    user = Client(server.url, verbose=False)
    attach(user, note)
    path = target.format(state=server.state_dir, upload=upload_folder(server, user.session_hash) / "served.txt")
    for prefix in ("/gradio_api/file=", "/file="):
        response = httpx.get(f"{server.url}{prefix}{path}", timeout=10)
        assert response.status_code in (403, 404), (prefix, path, response.status_code)
        assert b"private copy" not in response.content and b"root:" not in response.content


def test_killing_a_session_removes_its_upload_folder(server: RunningServer, tmp_path: Path) -> None:
    note = tmp_path / "doomed.txt"
    note.write_text("soon gone")
    user = Client(server.url, verbose=False)
    attach(user, note)
    folder = upload_folder(server, user.session_hash)
    assert (folder / "doomed.txt").exists()
    token = (server.state_dir / "admin.token").read_text().strip()
    killed = httpx.delete(f"{server.url}/admin/api/sessions/{user.session_hash}",
                          headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert killed.status_code in (200, 204)
    assert not folder.exists()


def attach_raw(server: RunningServer, file_value: dict[str, Any]) -> list[dict[str, Any]]:
    """Join the attach event with a hand-made FileData (what a hostile client can send) and read every message."""
    config = httpx.get(f"{server.url}/config", timeout=10).json()
    fn_index = next(i for i, dep in enumerate(config["dependencies"]) if dep.get("api_name") == "attach")
    session_hash = os.urandom(8).hex()
    body = {"data": [[file_value]], "fn_index": fn_index, "session_hash": session_hash, "event_data": None,
            "trigger_id": None}
    joined = httpx.post(f"{server.url}/gradio_api/queue/join", json=body, timeout=10)
    if joined.status_code != 200:
        return [{"join_status": joined.status_code, "body": joined.text}]
    messages: list[dict[str, Any]] = []
    with httpx.stream("GET", f"{server.url}/gradio_api/queue/data", params={"session_hash": session_hash},
                      timeout=20) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                messages.append(message)
                if message.get("msg") in ("process_completed", "close_stream", "unexpected_error"):
                    break
    return messages


def test_server_attaches_at_most_max_files_per_conversation(server: RunningServer, tmp_path: Path) -> None:
    notes = []
    for n in range(MAX_FILES + 1):
        notes.append(tmp_path / f"note{n}.txt")
        notes[-1].write_text(f"note {n}")
    user = Client(server.url, verbose=False)
    info = attach(user, *notes)
    assert all(f"note{n}.txt attached" in info for n in range(MAX_FILES))
    assert f"note{MAX_FILES}.txt: this conversation already has {MAX_FILES} files" in info
    assert not (upload_folder(server, user.session_hash) / f"note{MAX_FILES}.txt").exists()


def test_an_upload_of_too_many_files_is_refused_and_leaves_nothing_in_the_cache(server: RunningServer) -> None:
    before = cached_files(server)
    refused = upload_raw(server, PER_UPLOAD + 1)
    assert refused.status_code == 400
    assert f"Too many files in one upload: at most {PER_UPLOAD} (sessions.max_files_per_upload)" in refused.text
    assert cached_files(server) <= before  # Gradio deleted the parts it had begun
    accepted = upload_raw(server, PER_UPLOAD)
    assert accepted.status_code == 200 and len(accepted.json()) == PER_UPLOAD


def test_an_upload_larger_than_its_files_can_be_is_refused_before_it_is_read(server: RunningServer) -> None:
    files = [("files", ("big.txt", b"a" * (PER_UPLOAD * (LIMIT + 20_000)), "text/plain"))]
    response = httpx.post(f"{server.url}/gradio_api/upload", files=files, timeout=30)
    assert response.status_code == 413
    assert f"{PER_UPLOAD} files of sessions.max_upload_bytes" in response.text  # cmw's cap, before Gradio's own


def test_gradio_deletes_uploads_older_than_the_cache_ttl(server: RunningServer) -> None:
    (uploaded,) = upload_raw(server, 1).json()
    path = Path(uploaded)
    assert path.is_file()
    deadline = time.monotonic() + CACHE_TTL_S + 30
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not path.exists(), f"{path} still cached {CACHE_TTL_S + 30} s after the upload"
