"""Configuration problems: each phrased for a person on one line, naming the key, its source, the bad value
and what is allowed; :class:`ConfigError` carries every problem of every source at once."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from agent.settings.masking import MASK, mask_url_passwords
from agent.settings.registry import REGISTRY


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration, already phrased for a person."""

    message: str

    def __str__(self) -> str:
        return self.message


class ConfigError(Exception):
    """Settings could not be loaded; every problem is listed, one per line."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def short_value(value: Any) -> str:
    """repr() of a bad value, cut so one problem stays one readable line; URL passwords masked."""
    text = mask_url_passwords(repr(value))
    return text if len(text) <= 60 else text[:57] + "..."


def _split_name(name: str) -> tuple[str, str]:
    """(group, leaf) of a dotted key or a CMW_GROUP__KEY env name, lower-cased."""
    sep = "." if "." in name else "__"
    group, _, leaf = name.rpartition(sep)
    return group.lower(), leaf.lower()


def suggest(word: str, candidates: Any) -> str:
    """' (did you mean X?)' for a misspelt, shortened or misplaced name, else ''."""
    names = [n for n in candidates if n != word]
    group, leaf = _split_name(word)
    # A right name in the wrong section (`[queue] chat_concurrency_limit`) is the commonest slip.
    moved = [n for n in names if _split_name(n)[1] == leaf]
    siblings = [n for n in names if _split_name(n)[0] == group]
    started = [n for n in siblings if leaf and _split_name(n)[1].startswith(leaf)]
    match = (
        moved
        or started
        or difflib.get_close_matches(word, siblings, n=1, cutoff=0.5)
        or difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    )
    return f" (did you mean {match[0]}?)" if match else ""


class _Supplied(Protocol):
    """A raw value and where exactly it came from (:class:`agent.settings.sources.Raw`)."""

    value: Any
    origin: str


def explain(exc: ValidationError, merged: Mapping[str, _Supplied]) -> list[Problem]:
    """Pydantic's errors as problems: one per key, with the source that supplied the bad value."""
    by_key: dict[str, list[Any]] = {}
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"]]
        key = next((".".join(loc[:n]) for n in range(len(loc), 0, -1) if ".".join(loc[:n]) in REGISTRY), ".".join(loc))
        by_key.setdefault(key, []).append(error)
    problems: list[Problem] = []
    for key, errors in by_key.items():
        # A union reports one error per branch; the branch that was not a plain mismatch says most.
        error = next((e for e in errors if e["type"] != "literal_error"), errors[0])
        raw = merged.get(key)
        spec = REGISTRY.get(key)
        shown = MASK if spec is not None and spec.secret else short_value(raw.value if raw else error.get("input"))
        where = raw.origin if raw else "default"
        item = next((int(p) for p in error["loc"][len(key.split(".")) :] if isinstance(p, int)), None)
        reason = _reason(error) if item is None else f"item {item + 1}: {_reason(error)}"
        allowed = spec.allowed if spec else "see `cmw config show`"
        problems.append(Problem(f"{key} = {shown} (from {where}): {reason}; allowed: {allowed}"))
    return problems


def _reason(error: Any) -> str:
    msg = str(error["msg"]).removeprefix("Value error, ")
    return msg[0].lower() + msg[1:] if msg else "invalid"

