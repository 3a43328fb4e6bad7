"""The UI's strings in English and Russian: one table per area, merged here.

Static strings (labels, placeholders, buttons, Markdown) go to the browser through Gradio's own ``gr.I18n``:
the page picks the language from the browser unless ``ui.language`` forces one (then every language Gradio
could pick maps to the forced table). Strings made on the server at run time (error notices in the chat,
Stats cards) use :func:`text` with the language of the request (:func:`request_language`).

Each area registers its table with :func:`register` (keys are prefixed by area, e.g. ``chat.send``,
``dashboard.title``); a test walks every table so no key lacks a translation.
"""

from __future__ import annotations

from typing import Any

LANGUAGES = ("en", "ru")
DEFAULT = "en"

_TABLES: dict[str, dict[str, str]] = {language: {} for language in LANGUAGES}


def register(table: dict[str, dict[str, str]]) -> None:
    """Add an area's strings (``{"en": {key: text}, "ru": {key: text}}``); a key may be registered once."""
    if set(table) != set(LANGUAGES):
        raise ValueError(f"a table holds exactly {LANGUAGES}, not {sorted(table)}")
    for language, strings in table.items():
        clash = set(strings) & set(_TABLES[language])
        if clash:
            raise ValueError(f"keys registered twice: {sorted(clash)}")
    for language, strings in table.items():
        _TABLES[language].update(strings)


def tables() -> dict[str, dict[str, str]]:
    """Every registered string, by language (a copy)."""
    return {language: dict(strings) for language, strings in _TABLES.items()}


def text(key: str, language: str, **values: Any) -> str:
    """The string ``key`` in ``language`` (English when the language has none), formatted with ``values``."""
    template = _TABLES.get(language, {}).get(key) or _TABLES[DEFAULT][key]
    return template.format(**values) if values else template


def choose(forced: str, accept_language: str | None) -> str:
    """The language to speak: ``ui.language`` when it is not ``auto``, else the browser's first supported one."""
    if forced in LANGUAGES:
        return forced
    for part in (accept_language or "").split(","):
        tag = part.split(";")[0].strip().lower()
        primary = tag.split("-")[0]
        if primary in LANGUAGES:
            return primary
    return DEFAULT


def request_language(forced: str, request: Any) -> str:
    """The language of a Gradio or Starlette request (its ``Accept-Language``), or the forced one."""
    headers = getattr(request, "headers", None) or {}
    return choose(forced, headers.get("accept-language"))


def gradio_i18n(forced: str) -> Any:
    """A ``gr.I18n`` of every registered string; with a forced language, every locale speaks it."""
    import gradio as gr

    if forced in LANGUAGES:
        chosen = tables()[forced]
        return gr.I18n(**{language: chosen for language in LANGUAGES})
    return gr.I18n(**tables())
