"""The key registry: every dotted key with its field, env names and what it allows, derived from the model.

`cmw config show`, the admin config endpoint, `cmw config init`, error messages and the README's
settings table all read :data:`REGISTRY`, so adding a field to the model is all a new key needs.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from agent.settings.masking import MASK, mask_url_passwords
from agent.settings.model import PROVIDER_MODEL_PATTERN, Settings

ENV_PREFIX = "CMW_"
# Env vars with the CMW_ prefix that select *which* settings to load rather than a key.
LOADER_ENV = ("CMW_PROFILE", "CMW_PROFILES_DIR", "CMW_ENV_FILE")


@dataclass(frozen=True)
class KeySpec:
    """One settings key as the registry describes it."""

    key: str
    field: FieldInfo
    env: tuple[str, ...]

    @property
    def description(self) -> str:
        return self.field.description or ""

    @property
    def secret(self) -> bool:
        return "SecretStr" in _type_name(self.field.annotation)

    @property
    def default(self) -> Any:
        return self.field.get_default(call_default_factory=True)

    @property
    def allowed(self) -> str:
        extra = self.field.json_schema_extra if isinstance(self.field.json_schema_extra, dict) else {}
        return str(extra.get("allowed") or describe_allowed(self.field))


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation)


def _iter_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _iter_fields(ann, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", info


def _build_registry() -> dict[str, KeySpec]:
    registry: dict[str, KeySpec] = {}
    for key, info in _iter_fields(Settings):
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        seed = [str(name) for name in extra.get("seed_env", [])]  # type: ignore[union-attr]
        cmw = ENV_PREFIX + key.upper().replace(".", "__")
        env = tuple(dict.fromkeys([*seed, cmw]))
        registry[key] = KeySpec(key, info, env)
    return registry


REGISTRY: dict[str, KeySpec] = _build_registry()
ENV_TO_KEY: dict[str, str] = {name: spec.key for spec in REGISTRY.values() for name in spec.env}


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _bound(info: FieldInfo, kind: type, attr: str) -> float | None:
    for meta in info.metadata:
        if isinstance(meta, kind):
            return getattr(meta, attr)
    return None


def describe_allowed(info: FieldInfo) -> str:
    """Human summary of what a key accepts, derived from its annotation and bounds."""
    ann = info.annotation
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    optional = type(None) in args
    parts = [a for a in args if a is not type(None)] if origin in (Union, types.UnionType) else [ann]
    described: list[str] = []
    for part in parts:
        described.append(_describe_type(part, info if len(parts) == 1 else None))
    text = " or ".join(described)
    return f"{text} or empty" if optional else text


def _describe_type(ann: Any, info: FieldInfo | None) -> str:
    origin = typing.get_origin(ann)
    if origin is Literal:
        return " | ".join(str(a) for a in typing.get_args(ann))
    if origin is Annotated:
        base, *meta = typing.get_args(ann)
        holder = FieldInfo.from_annotation(ann)
        holder.metadata = meta
        return _describe_type(base, holder)
    if origin is list:
        (inner,) = typing.get_args(ann)
        return f"list of {_describe_type(inner, None)}"
    if ann is bool:
        return "true|false"
    if ann in (int, float) and info is not None:
        kind = "integer" if ann is int else "number"
        ge, gt = _bound(info, Ge, "ge"), _bound(info, Gt, "gt")
        le, lt = _bound(info, Le, "le"), _bound(info, Lt, "lt")
        if ge is not None and le is not None:
            return f"{kind} {_num(ge)}–{_num(le)}"
        low = f">{_num(gt)}" if gt is not None else (f"≥{_num(ge)}" if ge is not None else "")
        high = f"<{_num(lt)}" if lt is not None else (f"≤{_num(le)}" if le is not None else "")
        return " ".join(part for part in (kind, low, high) if part)
    if ann in (int, float):
        return "integer" if ann is int else "number"
    if ann is SecretStr:
        return "secret text"
    if ann is Path:
        return "path"
    if ann is str and info is not None:
        for meta in info.metadata:
            pattern = getattr(meta, "pattern", None)
            if pattern:
                if "redis" in pattern:
                    return "sqlite | memory | redis://…"
                return "provider:model" if pattern == PROVIDER_MODEL_PATTERN else f"text matching {pattern}"
        return "text"
    return _type_name(ann)


def display_value(value: Any, spec: KeySpec | None = None) -> Any:
    """JSON-friendly value with secrets masked, passwords inside URLs included."""
    if isinstance(value, SecretStr) or (spec is not None and spec.secret and value is not None):
        return MASK
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str):
        return mask_url_passwords(value)
    return value


GROUPS: frozenset[str] = frozenset(key.partition(".")[0] for key in REGISTRY if "." in key)


# What a key's annotation says about reading it from text (env, .env, --set).


def arms(spec: KeySpec) -> list[Any]:
    """The types a key accepts besides empty: ``int | None`` → [int]; ``Literal[...]`` stays whole."""
    ann = spec.field.annotation
    if typing.get_origin(ann) in (Union, types.UnionType):
        return [a for a in typing.get_args(ann) if a is not type(None)]
    return [ann]


def is_optional(spec: KeySpec) -> bool:
    ann = spec.field.annotation
    return typing.get_origin(ann) in (Union, types.UnionType) and type(None) in typing.get_args(ann)


def is_list(spec: KeySpec) -> bool:
    return any(typing.get_origin(a) is list for a in arms(spec))


def is_table(spec: KeySpec | None) -> bool:
    """Keys whose value is a table of entries (``events.limits``): a higher source adds entries to a lower one's."""
    return spec is not None and any(typing.get_origin(a) is dict for a in arms(spec))


def is_text(spec: KeySpec) -> bool:
    """Keys whose values are free text: `--set llm.model=4o` must not become a number."""
    return all(a in (str, SecretStr, Path) for a in arms(spec))
