"""The upload policy: which files a chat may attach, under which name, and where the copy lives.

Gradio stores an upload in its own cache and hands the handler a path. This module decides what the
session gets from it:

- **count**: at most ``sessions.max_files`` files per conversation (re-attaching a name replaces it);
- **size**: at most ``sessions.max_upload_bytes`` (Gradio's ``max_file_size`` refuses bigger ones at the
  route already; the check here also holds when that route is not the way in);
- **kind**: text only: a known text suffix (or none), no NUL byte, valid UTF-8; anything else is refused
  with a message that names what is accepted;
- **name**: the client chooses it, so it is reduced to a plain file name (no folders, no ``..``, no
  control or shell characters, no leading dot, at most :data:`MAX_NAME_CHARS` characters, suffix kept);
- **source**: only a file inside Gradio's upload cache is read (a hostile client can name any server path);
- **copy**: written into the session's own folder (:meth:`SessionManager.upload_dir`, removed when the
  session ends), never following a symlink, never outside that folder. The folder is not one of
  Gradio's served paths, so nothing in it is served back over HTTP.
"""

from __future__ import annotations

import os
import re
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from agent.app.i18n import number, text
from agent.sessions.manager import SessionManager
from agent.sessions.session import Session

TEXT_SUFFIXES = frozenset(
    {".txt", ".md", ".csv", ".json", ".py", ".log", ".yaml", ".yml", ".toml", ".xml", ".html", ".rst"}
)
MAX_NAME_CHARS = 120
_UNSAFE = re.compile(r"[^\w.\- ()\[\]+=,@]")  # \w is Unicode-aware: names in any script stay readable


@dataclass(frozen=True)
class UploadResult:
    """What one attach did: ``ok`` with the stored name, or a refusal; ``message`` is shown to the user."""

    ok: bool
    name: str
    message: str
    path: Path | None = None


def safe_name(raw: str) -> str:
    """A plain file name derived from what the client sent; never a path, never empty."""
    # Both separators: a Windows browser may send "C:\\Users\\x\\notes.txt".
    base = re.split(r"[\\/]", raw or "")[-1]
    base = unicodedata.normalize("NFC", base)
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C")  # control, format, unassigned
    base = _UNSAFE.sub("_", base).strip(" .")
    base = base.lstrip("-")  # a leading dash reads as an option to any tool that meets the file later
    if not base or set(base) <= {".", "_"}:
        base = "file"
    stem, suffix = os.path.splitext(base)
    if len(suffix) > 16:  # not a real suffix: keep it in the stem so the cut below treats it fairly
        stem, suffix = base, ""
    if len(base) > MAX_NAME_CHARS:
        stem = stem[: MAX_NAME_CHARS - len(suffix)].rstrip(" .") or "file"
        base = stem + suffix
    return base


def kind_problem(name: str, data: bytes, language: str = "en") -> str | None:
    """Why this content is not an attachable text file (in ``language``), or None when it is."""
    suffix = os.path.splitext(name)[1].lower()
    accepted = ", ".join(sorted(TEXT_SUFFIXES))
    if suffix and suffix not in TEXT_SUFFIXES:
        return text("files.bad_suffix", language, suffix=suffix, accepted=accepted)
    if b"\x00" in data:
        return text("files.binary", language, accepted=accepted)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return text("files.not_utf8", language)
    return None


def read_limited(path: Path, limit: int) -> bytes | None:
    """At most ``limit`` bytes of the file, or None when it holds more (checked while reading, not by stat)."""
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    return None if len(data) > limit else data


def store_copy(folder: Path, name: str, data: bytes) -> Path:
    """Write ``data`` as ``folder/name`` (0600), refusing symlinks and anything that resolves elsewhere."""
    target = folder / name
    if target.resolve(strict=False).parent != folder.resolve():
        raise ValueError(f"{name!r} does not stay inside the session's upload folder")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(target, flags, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return target


def gradio_upload_root() -> Path:
    """Gradio's upload cache (``GRADIO_TEMP_DIR`` or the temp dir's ``gradio``): where real uploads land."""
    from agent.app.gradio_compat import upload_folder

    return upload_folder()


def attach_upload(
    manager: SessionManager,
    session: Session,
    source: Path,
    *,
    max_bytes: int,
    max_files: int,
    source_root: Path | None = None,
    original_name: str | None = None,
    language: str = "en",
) -> UploadResult:
    """Apply the policy to one uploaded file and, when it passes, add it to the session's context.

    ``source`` must lie in ``source_root`` (Gradio's upload cache by default): a client can hand the event a
    FileData with any server path, and Gradio passes it through, so only files that were uploaded are read.
    The message is in ``language`` (the request's); the session's log line stays English, as the server's log.
    """
    name = safe_name(original_name if original_name is not None else source.name)

    def refused(problem: str) -> UploadResult:
        return UploadResult(False, name, text("files.refused", language, name=name, problem=problem))

    root = (source_root or gradio_upload_root()).resolve()
    if not source.resolve().is_relative_to(root):
        return refused(text("files.not_uploaded", language))
    if name not in session.files and len(session.files) >= max_files:
        return refused(text("files.too_many", language, count=number(len(session.files), language)))
    try:
        size = source.stat().st_size
        data = read_limited(source, max_bytes) if size <= max_bytes else None
    except OSError:
        return refused(text("files.unreadable", language))
    if data is None:
        limit = number(max_bytes, language)
        if size > max_bytes:
            return refused(text("files.too_big", language, size=number(size, language), limit=limit))
        return refused(text("files.grew", language, limit=limit))  # it grew while being read
    problem = kind_problem(name, data, language)
    if problem is not None:
        return refused(problem)
    try:
        copy = store_copy(manager.upload_dir(session), name, data)
    except (OSError, ValueError):
        return refused(text("files.not_stored", language))
    manager.attach_file(session, name, data.decode("utf-8"))
    session.log.append((time.time(), f"file attached: {name} ({len(data):,} bytes)"))
    return UploadResult(True, name, text("files.attached", language, name=name, size=number(len(data), language)), copy)
