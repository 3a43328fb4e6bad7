"""Which concurrency limit each event of a served app runs with, and why: one answer for `cmw serve` and `cmw inspect`.

An event is known by its api name. ``events.limits`` maps an api name, a glob (``gen_*``) or a group of
``events.groups`` to a limit; the most specific match wins: an exact name, then the glob with the most literal
characters. An event in a group shares that group's pool of slots (one Gradio concurrency id) and its limit.
A limit the app's own code set (``concurrency_limit=`` on the event) wins unless ``events.override_app_limits``;
an event nothing names runs with ``queue.default_concurrency_limit``. The master switch off makes every event 1.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from agent.app.gradio_compat import event_functions, set_event_limit
from agent.settings import Settings

GROUP_PREFIX = "cmw-group:"


@dataclass(frozen=True)
class EventLimit:
    """One event of the app with the limit it runs with and where that came from."""

    fn_index: int
    api_name: str | None
    triggers: tuple[str, ...]  # "send.click", "msg.submit", "load"
    limit: int | None  # None: unlimited
    source: str  # "events.limits[gen_*]", "group slow", "app", "queue.default_concurrency_limit", …
    concurrency_id: str

    def to_dict(self) -> dict[str, Any]:
        return {"fn_index": self.fn_index, "api_name": self.api_name, "triggers": list(self.triggers),
                "limit": self.limit, "source": self.source, "concurrency_id": self.concurrency_id}


def _specificity(pattern: str) -> tuple[int, int]:
    """Exact names first; then globs by how many literal characters they pin down."""
    wild = any(c in pattern for c in "*?[")
    return (0 if wild else 1, sum(1 for c in pattern if c not in "*?[]!"))


def best_match(name: str, patterns: list[str]) -> str | None:
    """The most specific of ``patterns`` matching ``name`` (case-sensitive, as api names are)."""
    matching = [p for p in patterns if fnmatch.fnmatchcase(name, p)]
    return max(matching, key=_specificity) if matching else None


def event_limits(demo: Any, settings: Settings) -> list[EventLimit]:
    """Every event of ``demo`` (its BlockFunctions) with the limit the profile gives it."""
    events = settings.events
    groups = events.groups
    group_patterns = {pattern: group for group, members in groups.items() for pattern in members}
    limit_patterns = [p for p in events.limits if p not in groups]
    out: list[EventLimit] = []
    for fn in event_functions(demo):
        fn_index, name = fn.fn_index, fn.api_name
        triggers = tuple(_trigger(demo, block_id, event) for block_id, event in fn.targets)
        concurrency_id = fn.concurrency_id
        own = fn.concurrency_limit  # "default", an int, or None (unlimited) as the app's code set it
        limit: int | None
        source: str
        group_pattern = best_match(name, list(group_patterns)) if name else None
        pattern = best_match(name, limit_patterns) if name else None
        if group_pattern is not None and group_patterns[group_pattern] in events.limits:
            group = group_patterns[group_pattern]
            limit, source, concurrency_id = events.limits[group], f"events.groups[{group}]", GROUP_PREFIX + group
        elif pattern is not None:
            limit, source = events.limits[pattern], f"events.limits[{pattern}]"
        else:
            limit, source = None, ""
        if own != "default" and not (source and events.override_app_limits):
            limit, source = own, "app"
        elif not source:
            limit, source = settings.default_limit, "queue.default_concurrency_limit"
        if not settings.enable_concurrent_processing:
            limit, source = 1, "enable_concurrent_processing=false"
        out.append(EventLimit(fn_index, name, triggers, limit, source, concurrency_id))
    return out


def apply_event_limits(demo: Any, settings: Settings) -> list[EventLimit]:
    """Set each event's limit and pool before the queue first sees it (Gradio builds its per-pool queues lazily)."""
    limits = event_limits(demo, settings)
    for item in limits:
        set_event_limit(demo, item.fn_index, item.limit, item.concurrency_id)
    return limits


def _trigger(demo: Any, block_id: int | None, event: str) -> str:
    """``label.event`` for a trigger, as an operator recognises it (``send.click``, ``load``)."""
    if block_id is None or block_id == getattr(demo, "_id", None):
        return event
    block = demo.blocks.get(block_id)
    label = getattr(block, "label", None) or getattr(block, "value", None) if block is not None else None
    kind = type(block).__name__.lower() if block is not None else "block"
    return f"{kind}({label}).{event}" if isinstance(label, str) and label else f"{kind}.{event}"
