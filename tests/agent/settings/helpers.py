"""Shared by the settings tests: the design's table, a sample generator per key, profile writing."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from annotated_types import Ge, Gt, Le
from pydantic import SecretStr

from agent.settings import ConfigError, KeySpec

# The settings table of DESIGN.md, verbatim: key → (balanced, high-performance, constrained).
DESIGN_TABLE: dict[str, tuple[Any, Any, Any]] = {
    "queue.enabled": (True, True, True),
    "queue.default_concurrency_limit": (5, 10, 2),
    "queue.status_update_rate": ("auto", 2.0, "auto"),
    "queue.max_size": (100, 500, 20),
    "server.max_threads": (100, 200, 40),
    "events.chat_concurrency_limit": (3, 5, 1),
    "events.file_upload_concurrency_limit": (2, 3, 1),
    "events.file_processing_queue_id": ("file_processing",) * 3,
    "events.stats_refresh_concurrency_limit": (5, 10, 3),
    "events.logs_refresh_concurrency_limit": (5, 10, 3),
    "enable_concurrent_processing": (True, True, True),
}


PROFILES = ("balanced", "high-performance", "constrained")


SEED_ENV = {
    "GRADIO_ENABLE_QUEUE": "queue.enabled",
    "GRADIO_CONCURRENCY_LIMIT": "queue.default_concurrency_limit",
    "GRADIO_STATUS_UPDATE_RATE": "queue.status_update_rate",
    "GRADIO_QUEUE_MAX_SIZE": "queue.max_size",
    "GRADIO_MAX_THREADS": "server.max_threads",
    "CHAT_CONCURRENCY_LIMIT": "events.chat_concurrency_limit",
    "FILE_CONCURRENCY_LIMIT": "events.file_upload_concurrency_limit",
    "FILE_QUEUE_ID": "events.file_processing_queue_id",
    "STATS_CONCURRENCY_LIMIT": "events.stats_refresh_concurrency_limit",
    "LOGS_CONCURRENCY_LIMIT": "events.logs_refresh_concurrency_limit",
    "ENABLE_CONCURRENT_PROCESSING": "enable_concurrent_processing",
    "OPENAI_API_KEY": "llm.api_key",
    "OPENROUTER_API_KEY": "llm.openrouter_api_key",
    "CMW_ADMIN_TOKEN": "admin.token",
}


def _arms(spec: KeySpec) -> list[Any]:
    args = [a for a in typing.get_args(spec.field.annotation) if a is not type(None)]
    union = typing.get_origin(spec.field.annotation) in (typing.Union, type(int | None))
    return args if union else [spec.field.annotation]


def _bounds(spec: KeySpec) -> tuple[float, float]:
    low: float = 0
    high: float = 1000
    for meta in spec.field.metadata:
        if isinstance(meta, Ge):
            low = float(meta.ge)  # type: ignore[arg-type]
        elif isinstance(meta, Gt):
            low = float(meta.gt) + 0.5  # type: ignore[operator]
        elif isinstance(meta, Le):
            high = float(meta.le)  # type: ignore[arg-type]
    return low, high


def samples(spec: KeySpec) -> list[Any]:
    """Five valid values, each different from the default and from its neighbours in the list."""
    arms = _arms(spec)
    default = spec.default
    if arms == [bool]:
        return [not default, default, not default, default, not default]
    if spec.key == "queue.status_update_rate":
        return [1.5, 2.5, 3.5, 4.5, 5.5]
    if spec.key == "sessions.store":
        return ["memory", "redis://h2", "redis://h3", "memory", "redis://h5"]
    if spec.key == "llm.providers":
        return [["sim"], ["openai"], ["custom"], ["openrouter"], ["sim", "custom"]]
    if spec.key == "llm.models":
        return [["sim:a"], ["openai:gpt-4o"], ["custom:qwen2.5:7b"], ["openrouter:x/y"], ["sim:a", "custom:b"]]
    if spec.key == "sim.error_statuses":
        return [[401], [402], [403], [404], [405]]
    if spec.key == "server.trusted_proxies":
        return [["10.0.0.1"], ["10.0.0.0/8"], ["192.168.1.1", "::1"], ["fd00::/8"], ["172.16.0.9"]]
    if spec.key == "events.limits":  # one entry: a higher source's table merges over a lower one's
        return [{"chat": n} for n in range(1, 6)]
    if spec.key == "events.groups":
        return [{"g": [f"e{n}"]} for n in range(1, 6)]
    if spec.key == "agent.factory":
        return [f"pkg.mod{i}:agent" for i in range(4)] + ["path/to/agent.py:make"]
    if spec.key == "agent.tools":
        return [["calculator"], ["files"], ["current_time"], ["calculator", "files"], []]
    if spec.key == "admin.token":
        return [f"token-{i}-{'x' * 32}" for i in range(5)]
    arm = arms[0]
    if typing.get_origin(arm) is typing.Literal:
        options = [o for o in typing.get_args(arm) if o != default]
        return [options[i % len(options)] for i in range(5)]
    if arm in (int, float):
        low, high = _bounds(spec)
        step = 1 if arm is int else min(1.0, (high - low) / 10)
        values: list[Any] = []
        candidate = low
        while len(values) < 5:
            candidate += step
            if candidate != default:
                values.append(int(candidate) if arm is int else round(candidate, 6))
        return values
    if arm is Path:
        return [Path(f"/tmp/state{i}") for i in range(5)]
    return [f"/v{i}" if spec.key.endswith("root_path") else f"v{i}" for i in range(5)]


def as_text(value: Any) -> str:
    """How a person writes the value in an env var or --set."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    if isinstance(value, dict):  # a TOML inline table
        return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items()) + "}"
    return str(value)


def plain(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def write_profile(path: Path, flat: dict[str, Any]) -> Path:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *groups, leaf = key.split(".")
        node = nested
        for group in groups:
            node = node.setdefault(group, {})
        node[leaf] = str(value) if isinstance(value, Path) else value
    top = {k: v for k, v in nested.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in nested.items() if isinstance(v, dict)}
    path.write_text(tomli_w.dumps({**top, **tables}), encoding="utf-8")
    return path


def problems_of(exc: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return [str(p) for p in exc.value.problems]
