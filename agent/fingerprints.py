"""Conversation fingerprints: how a reply proves which user turns the LLM actually saw.

The load tester signs every message with a canary (:data:`CANARY_RE`, ``cw<N>-<4 hex>``). When the
latest user message carries one, the simulator opens its reply with a header naming the number of
user turns it received and a short fingerprint of each; the load tester and the tests recompute
them from what each user sent, so a reply built from another session's history is caught. Without
a canary (a person chatting) the reply is readable text with no header: debug output is for the
load tester only.
"""

from __future__ import annotations

import hashlib
import re

HEADER_RE = re.compile(r"\[turns=(\d+) fp=([0-9a-f,]*)\]")
# The load tester's per-user tag; its one home, so the simulator and the isolation checks agree on it.
CANARY_RE = re.compile(r"\bcw(\d+)-[0-9a-f]{4}\b")


def has_canary(text: str) -> bool:
    """Whether a message carries a load-test canary, i.e. its sender wants fingerprinted replies."""
    return CANARY_RE.search(text) is not None


def fingerprint(text: str) -> str:
    """Eight hex digits identifying one user message."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def reply_header(user_messages: list[str]) -> str:
    """The header the simulator puts first in a reply to a conversation with these user turns."""
    return f"[turns={len(user_messages)} fp={','.join(fingerprint(m) for m in user_messages)}]"


def parse_reply_header(reply: str) -> tuple[int, list[str]] | None:
    """(turns, fingerprints) from a reply's header, or None when the reply carries none."""
    match = HEADER_RE.search(reply)
    if match is None:
        return None
    fps = [fp for fp in match.group(2).split(",") if fp]
    return int(match.group(1)), fps
