"""Hiding secrets in what cmw shows: the mask, and passwords inside URLs."""

from __future__ import annotations

import re

MASK = "********"

# scheme://user:PASSWORD@host: the password runs to the last "@" before the path (people leave "@" unescaped).
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*):(?P<password>[^/\s]*)@")


def mask_url_passwords(text: str) -> str:
    """``text`` with the password of every URL in it masked (``redis://:********@host``): the one place
    that hides passwords inside URLs, for ``cmw config show``, the admin API, banners, logs and errors."""
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@", text)
