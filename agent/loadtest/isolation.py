"""Session isolation: every virtual user signs its messages with a canary nobody else uses.

A turn violates isolation when its reply, the conversation the server returned or an agent's tool steps in it
(arguments and results) carry another user's canary,
when that conversation lacks this user's own earlier turns, or when the reply's fingerprints header (see
:mod:`agent.fingerprints`) names user turns other than exactly this user's messages so far.
"""

from __future__ import annotations

import secrets
from typing import Any

from agent.fingerprints import CANARY_RE, fingerprint, parse_reply_header
from agent.loadtest.protocol import content_text, is_step, user_texts


def make_canary(user: int) -> str:
    """A per-user tag: the index makes it unique, the random part makes it unlikely in any reply by chance."""
    return f"cw{user}-{secrets.token_hex(2)}"


def foreign_canaries(text: str, own: str) -> list[str]:
    return sorted({m.group(0) for m in CANARY_RE.finditer(text) if m.group(0) != own})


def check_turn(
    *,
    canary: str,
    sent: list[str],
    confirmed: list[str],
    reply: str,
    history: list[dict[str, Any]] | None,
) -> list[str]:
    """Reasons this completed turn breaks isolation (empty when it holds).

    ``sent`` is every message this user submitted so far, the current one last; ``confirmed`` the earlier ones
    the server completed, which it must still hold (a timed-out turn may or may not have reached the history).
    """
    reasons: list[str] = []
    current = sent[-1]
    if history is not None and not user_texts(history) and not any(is_step(m) for m in history):
        history = None  # a chat that shows no user message at all says nothing about whose turns it holds
    if others := foreign_canaries(reply, canary):
        reasons.append(f"reply carries other sessions' canaries {', '.join(others)}")
    if history is not None:
        texts = user_texts(history)
        strangers = [t for t in texts if t not in sent]
        if others := sorted({c for t in texts for c in foreign_canaries(t, canary)}):
            reasons.append(f"history carries other sessions' canaries {', '.join(others)}")
        elif strangers:
            reasons.append(f"history holds {len(strangers)} user message(s) this session never sent")
        steps = [content_text(m.get("content")) + str(m.get("metadata", {}).get("log", "")) for m in history
                 if is_step(m)]
        if others := sorted({c for t in steps for c in foreign_canaries(t, canary)}):
            reasons.append(f"tool steps carry other sessions' canaries {', '.join(others)}")
        expected = [*confirmed, current]
        if not _is_subsequence(expected, texts):
            missing = len([m for m in expected if m not in texts])
            reasons.append(f"history lacks {missing} of this session's {len(expected)} turns" if missing
                           else "history holds this session's turns out of order")
    header = parse_reply_header(reply)
    if header is not None:
        count, fps = header
        seen = {fingerprint(m): m for m in sent}
        expected_fps = [fingerprint(m) for m in [*confirmed, current]]
        foreign = any(fp not in seen for fp in fps)
        if count != len(fps) or len(fps) > len(sent) or foreign or not _is_subsequence(expected_fps, fps):
            reasons.append(f"LLM saw turns fp={','.join(fps)}, expected {','.join(expected_fps)}")
    return reasons


def reflects_session(*, canary: str, sent: list[str], reply: str, history: list[dict[str, Any]] | None) -> bool:
    """Whether a completed turn shows what its session sent, so :func:`check_turn` had something to judge.

    An app whose reply carries neither the user's canary nor a fingerprints header, and that returns no chat
    history holding the user's message, could mix sessions without any turn showing it.
    """
    if canary in reply or parse_reply_header(reply) is not None:
        return True
    return history is not None and sent[-1] in user_texts(history)


def _is_subsequence(needle: list[str], haystack: list[str]) -> bool:
    it = iter(haystack)
    return all(item in it for item in needle)
