"""The UI's strings in English and Russian: one table per area, merged here.

Static strings (labels, placeholders, buttons, Markdown) go to the browser through Gradio's own ``gr.I18n``:
the page picks the language from the browser unless ``ui.language`` forces one (then every language Gradio
could pick maps to the forced table). Strings made on the server at run time (error notices in the chat,
Stats cards) use :func:`text` with the language of the request (:func:`request_language`). cmw's own page is
served telling Gradio's frontend the language :func:`choose` picked (``gradio_compat.PageLocale``), so the page,
Gradio's own widgets and the server's strings agree.

Each area registers its table with :func:`register` (keys are prefixed by area, e.g. ``chat.send``,
``dashboard.title``); a test walks every table so no key lacks a translation. The app's own tables (``chat.*``,
``files.*``, ``stats.*``, ``logs.*``, ``errors.*``) are registered here, with a few of Gradio's own frontend
keys that its locales lack (:data:`GRADIO_GAPS`).

Static strings are formatted by the browser (ICU MessageFormat), so they hold no ``{placeholder}``; run-time
strings are formatted here with :meth:`str.format` and take their numbers already formatted (:func:`number`,
:func:`seconds`).
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


def known(key: str) -> bool:
    """Whether a table holds ``key`` (every registered key has an English string)."""
    return key in _TABLES[DEFAULT]


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


def static(key: str) -> Any:
    """A static UI string for a Gradio label, placeholder, button or Markdown: the browser shows it in its language.

    Raises KeyError for a key no table holds, so a typo fails when the UI is built, not silently in a browser.
    """
    import gradio as gr

    if not known(key):
        raise KeyError(f"no UI string {key!r}")
    return gr.I18n()(key)


def number(value: int, language: str) -> str:
    """An integer with the language's digit grouping: 12,345 in English, 12 345 (no-break space) in Russian."""
    grouped = f"{value:,}"
    return grouped.replace(",", "\u00a0") if language == "ru" else grouped


def seconds(value: float | None, language: str) -> str:
    """A duration in seconds with two decimals and the unit (``1.25 s``, ``1,25 с``); a dash when unknown."""
    if value is None:
        return "—"
    shown = f"{value:.2f}"
    return text("units.seconds", language, value=shown.replace(".", ",") if language == "ru" else shown)


# -------------------------------------------------------------------------------------------- the app's strings
# Keys used in agent/app/ui.py and agent/app/uploads.py; tests/agent/app/test_i18n.py checks both sides match.

APP: dict[str, dict[str, str]] = {
    "en": {
        "units.seconds": "{value} s",
        "chat.tab": "Chat",
        "chat.conversation": "Conversation",
        "chat.message": "Message",
        "chat.placeholder": "Message the agent…",
        "chat.send": "Send",
        "chat.stop": "Stop",
        "chat.clear": "Clear",
        "chat.provider": "Provider",
        "chat.model": "Model",
        "chat.attach": "Attach text files",
        "chat.stopped": "[stopped]",
        "chat.step_stopped": "Error: stopped before it finished.",
        "chat.too_long": "Your message has {chars} characters; the limit is {limit}.",
        "files.list": "Files in this conversation: {names}",
        "files.none": "none",
        "files.attached": "✅ {name} attached ({size} bytes).",
        "files.refused": "⚠️ {name}: {problem}",
        "files.not_uploaded": "not a file uploaded to this server; attach it again.",
        "files.too_many": "this conversation already has {count} files, the limit (sessions.max_files); Clear the "
                          "conversation to attach others.",
        "files.unreadable": "could not be read.",
        "files.too_big": "{size} bytes is over the {limit}-byte limit (sessions.max_upload_bytes).",
        "files.grew": "it is over the {limit}-byte limit (sessions.max_upload_bytes).",
        "files.not_stored": "could not be stored.",
        "files.bad_suffix": "not a text file ({suffix} is not accepted); attach text files ({accepted}).",
        "files.binary": "not a text file (binary content); attach text files ({accepted}).",
        "files.not_utf8": "not UTF-8 text; save it as UTF-8 and attach it again.",
        "stats.tab": "Stats",
        "stats.refresh": "Refresh",
        "stats.auto": "Refreshes itself every few seconds while this tab is open.",
        "stats.session": "This conversation",
        "stats.turns": "Turns",
        "stats.tokens": "Tokens",
        "stats.last_ttft": "Last time to first token",
        "stats.last_reply": "Last reply time",
        "stats.model": "Provider / model",
        "stats.no_turns": "No turns yet: send a message in the Chat tab.",
        "stats.server": "Server",
        "stats.chats_running": "Chats running",
        "stats.of_limit": "{running} of {limit}",
        "stats.no_limit": "{running}, no limit",
        "stats.chats_waiting": "Chats waiting",
        "stats.sessions": "Active sessions",
        "stats.reply_p": "Reply time p50 / p95",
        "stats.ttft_p": "Time to first token p50 / p95",
        "stats.footer": "Profile {profile} · cmw {version} · up for {hours} h {minutes} min",
        "stats.plot": "Recent turns of this conversation",
        "stats.plot_turn": "Turn",
        "stats.plot_seconds": "Seconds",
        "stats.plot_measure": "Measure",
        "stats.series_ttft": "Time to first token",
        "stats.series_reply": "Reply time",
        "logs.tab": "Logs",
        "logs.refresh": "Refresh",
        "logs.auto": "Refreshes itself every few seconds while this tab is open.",
        "logs.label": "Logs",
        "logs.startup": "# start-up",
        "logs.session": "# this session",
        "logs.empty": "(no events yet)",
        "errors.http_error": "{provider} answered with an error; details are in the server log.",
        "errors.auth": "{provider} did not accept the API key, or none is set: check it and restart.",
        "errors.timeout": "{provider} did not answer in time; the reply was stopped.",
        "errors.disconnect": "The connection to {provider} failed or broke mid-reply.",
        "errors.malformed": "{provider} sent a malformed reply.",
        "errors.too_large": "The message or the reply is over this server's size limits.",
        "errors.config": "{provider} is not available with this server's settings.",
        "errors.app_error": "The agent failed while generating the reply.",
        "errors.max_steps": "The agent stopped at its limit of model calls (agent.max_steps) while it still wanted "
                            "to use tools.",
        "errors.internal": "Internal error while generating the reply.",
    },
    "ru": {
        "units.seconds": "{value} с",
        "chat.tab": "Чат",
        "chat.conversation": "Беседа",
        "chat.message": "Сообщение",
        "chat.placeholder": "Сообщение агенту…",
        "chat.send": "Отправить",
        "chat.stop": "Остановить",
        "chat.clear": "Очистить",
        "chat.provider": "Провайдер",
        "chat.model": "Модель",
        "chat.attach": "Прикрепить текстовые файлы",
        "chat.stopped": "[остановлено]",
        "chat.step_stopped": "Ошибка: остановлено до завершения.",
        "chat.too_long": "Длина сообщения — {chars} симв.; предел — {limit}.",
        "files.list": "Файлы в этой беседе: {names}",
        "files.none": "нет",
        "files.attached": "✅ {name} прикреплён ({size} байт).",
        "files.refused": "⚠️ {name}: {problem}",
        "files.not_uploaded": "этот файл не загружали на этот сервер; прикрепите его снова.",
        "files.too_many": "в беседе уже есть файлов: {count}, это предел (sessions.max_files); очистите беседу, "
                          "чтобы прикрепить другие.",
        "files.unreadable": "не удалось прочитать.",
        "files.too_big": "{size} байт — больше предела в {limit} байт (sessions.max_upload_bytes).",
        "files.grew": "файл больше предела в {limit} байт (sessions.max_upload_bytes).",
        "files.not_stored": "не удалось сохранить.",
        "files.bad_suffix": "не текстовый файл ({suffix} не принимается); прикрепляйте текстовые файлы ({accepted}).",
        "files.binary": "не текстовый файл (двоичное содержимое); прикрепляйте текстовые файлы ({accepted}).",
        "files.not_utf8": "текст не в UTF-8; сохраните его в UTF-8 и прикрепите снова.",
        "stats.tab": "Статистика",
        "stats.refresh": "Обновить",
        "stats.auto": "Обновляется каждые несколько секунд, пока вкладка открыта.",
        "stats.session": "Эта беседа",
        "stats.turns": "Ходы",
        "stats.tokens": "Токены",
        "stats.last_ttft": "Последнее время до первого токена",
        "stats.last_reply": "Последнее время ответа",
        "stats.model": "Провайдер / модель",
        "stats.no_turns": "Ходов пока нет: отправьте сообщение на вкладке «Чат».",
        "stats.server": "Сервер",
        "stats.chats_running": "Чаты в работе",
        "stats.of_limit": "{running} из {limit}",
        "stats.no_limit": "{running}, без предела",
        "stats.chats_waiting": "Чаты в очереди",
        "stats.sessions": "Активные сессии",
        "stats.reply_p": "Время ответа p50 / p95",
        "stats.ttft_p": "Время до первого токена p50 / p95",
        "stats.footer": "Профиль {profile} · cmw {version} · работает {hours} ч {minutes} мин",
        "stats.plot": "Последние ходы этой беседы",
        "stats.plot_turn": "Ход",
        "stats.plot_seconds": "Секунды",
        "stats.plot_measure": "Показатель",
        "stats.series_ttft": "До первого токена",
        "stats.series_reply": "Время ответа",
        "logs.tab": "Журнал",
        "logs.refresh": "Обновить",
        "logs.auto": "Обновляется каждые несколько секунд, пока вкладка открыта.",
        "logs.label": "Журнал",
        "logs.startup": "# запуск",
        "logs.session": "# эта сессия",
        "logs.empty": "(событий пока нет)",
        "errors.http_error": "{provider} ответил ошибкой; подробности — в журнале сервера.",
        "errors.auth": "{provider} не принял API-ключ, или ключ не задан: проверьте его и перезапустите сервер.",
        "errors.timeout": "{provider} не ответил вовремя; ответ остановлен.",
        "errors.disconnect": "Соединение с {provider} не установилось или оборвалось посреди ответа.",
        "errors.malformed": "{provider} прислал ответ в неверном формате.",
        "errors.too_large": "Сообщение или ответ больше пределов размера на этом сервере.",
        "errors.config": "Провайдер {provider} недоступен при настройках этого сервера.",
        "errors.app_error": "Агент дал сбой при подготовке ответа.",
        "errors.max_steps": "Агент остановлен на пределе обращений к модели (agent.max_steps), хотя ещё собирался "
                            "вызывать инструменты.",
        "errors.internal": "Внутренняя ошибка при подготовке ответа.",
    },
}

# Gradio's own frontend keys (gradio 6.31, templates/frontend/assets) that this app shows and Gradio's locales lack:
# a chat's place in the queue ("In queue: 2 of 5"), missing from its Russian one, and the status tracker's
# announcement of a finished event, missing from all (the page showed the raw key "common.complete"). Custom
# translations are merged into Gradio's dictionaries in the browser, so these fill the gaps.
GRADIO_GAPS: dict[str, dict[str, str]] = {
    "en": {
        "status.queue_position": "In queue: {position} of {size}",
        "common.complete": "Complete",
    },
    "ru": {
        "status.queue_position": "В очереди: {position} из {size}",
        "common.complete": "Готово",
    },
}

register(APP)
register(GRADIO_GAPS)
