"""Which conversation a request belongs to: ids derived from session hashes, and signed restore tokens."""

from __future__ import annotations

import hashlib
import hmac


class SessionKeys:
    """Conversation ids derived from Gradio session hashes, and the tokens that restore a conversation.

    Both are HMACs with a key no client sees (kept in the store, so every worker agrees). A token binds
    the conversation id and its current nonce; checking the MAC first means a forged token costs no
    store read.
    """

    def __init__(self, key: bytes):
        self._key = key

    def _mac(self, purpose: str, value: str) -> str:
        return hmac.new(self._key, f"{purpose}\0{value}".encode("utf-8", "replace"), hashlib.sha256).hexdigest()

    def conversation_id(self, session_hash: str) -> str:
        return "c" + self._mac("conversation", session_hash)[:32]

    def token(self, session_id: str, nonce: str) -> str:
        return f"{session_id}.{nonce}.{self._mac('restore', f'{session_id}.{nonce}')}"

    def verify(self, token: object) -> tuple[str, str] | None:
        """(conversation id, nonce) of a token this server issued, else None (the store still decides)."""
        if not isinstance(token, str) or len(token) > 200 or token.count(".") != 2:
            return None
        session_id, nonce, mac = token.split(".")
        if hmac.compare_digest(mac, self._mac("restore", f"{session_id}.{nonce}")):
            return session_id, nonce
        return None

