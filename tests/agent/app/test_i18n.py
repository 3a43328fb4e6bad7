"""The UI's languages: the string tables walked key by key, the keys the code uses, and the app over ASGI answering
in the request's language (or the one ``ui.language`` forces).

The browser side (Gradio's frontend picking the tables, its own strings in Russian) is in
tests/browser/test_ui_languages.py.
"""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import re
import string
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

import agent
import agent.app
from agent.app import i18n
from agent.app.uploads import attach_upload
from agent.sessions.manager import SessionManager
from agent.sessions.store import MemoryStore
from agent.settings import SimSettings, load_settings
from agent.simulator import Simulator, running_simulator
from tests.asgi import InProcess, in_process

ROOT = Path(agent.__file__).resolve().parent
USERS_OF_STRINGS = [ROOT / "app" / "ui.py", ROOT / "app" / "uploads.py", ROOT / "app" / "i18n.py"]
STATIC_CALLS = {"static"}  # i18n.static(key): formatted by the browser, never here
TEXT_CALLS = {"text", "say"}  # i18n.text(key, language, **values) and ui.py's say(key, **values)


def all_tables() -> dict[str, dict[str, str]]:
    """Every table, with every area that registers one imported (the dashboard registers its own)."""
    for module in pkgutil.iter_modules(agent.app.__path__):
        importlib.import_module(f"agent.app.{module.name}")
    return i18n.tables()


def placeholders(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}


def called(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def literal_keys(path: Path, names: set[str]) -> list[tuple[str, ast.Call]]:
    """(key, call) for every call of one of ``names`` in ``path`` whose key is a literal."""
    return [(node.args[0].value, node) for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and called(node) in names and node.args
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)]


# ---------------------------------------------------------------------------------------------- the tables


def test_every_key_has_every_language_none_empty_with_the_same_placeholders() -> None:
    tables = all_tables()
    assert set(tables) == set(i18n.LANGUAGES) == {"en", "ru"}
    english = tables["en"]
    assert len(english) > 50
    for language, strings in tables.items():
        assert set(strings) == set(english), f"{language}: keys missing or extra: {set(strings) ^ set(english)}"
        for key, template in strings.items():
            assert template.strip(), f"{language} {key} is empty"
            assert placeholders(template) == placeholders(english[key]), f"{language} {key}: placeholders differ"


def test_the_app_registers_its_areas() -> None:
    areas = {key.split(".")[0] for key in all_tables()["en"]}
    assert {"chat", "files", "stats", "logs", "errors"} <= areas


def test_a_key_cannot_be_registered_twice_nor_without_both_languages() -> None:
    with pytest.raises(ValueError, match="registered twice"):
        i18n.register({"en": {"chat.send": "Send"}, "ru": {"chat.send": "Отправить"}})
    with pytest.raises(ValueError, match="exactly"):
        i18n.register({"en": {"test.only_english": "x"}})


def test_static_strings_hold_no_placeholder_the_browser_would_have_to_fill() -> None:
    tables = all_tables()
    keys = {key for path in USERS_OF_STRINGS for key, _ in literal_keys(path, STATIC_CALLS)}
    assert len(keys) >= 15
    for key in keys:
        for language in i18n.LANGUAGES:
            assert not re.search(r"[{}]", tables[language][key]), f"{language} {key} holds a brace"


def test_every_key_the_ui_uses_exists_and_gets_exactly_its_placeholders() -> None:
    tables = all_tables()
    used = [(path, key, node)
            for path in USERS_OF_STRINGS for key, node in literal_keys(path, TEXT_CALLS | STATIC_CALLS)]
    assert len(used) >= 50
    for path, key, node in used:
        assert key in tables["en"], f"{path.name}:{node.lineno} uses {key!r}, which no table holds"
        if called(node) in TEXT_CALLS:
            given = {kw.arg for kw in node.keywords}
            assert given == placeholders(tables["en"][key]), f"{path.name}:{node.lineno} {key}: gives {given}"


def test_every_llm_error_class_has_a_notice() -> None:
    """ui.llm_notice shows ``errors.<kind>`` for a failed turn: every kind raised anywhere has one."""
    kinds = set()
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "LLMError" and node.args \
                    and isinstance(node.args[0], ast.Constant):
                kinds.add(node.args[0].value)
    assert {"http_error", "auth", "timeout", "disconnect", "malformed", "too_large", "config"} <= kinds
    assert all(i18n.known(f"errors.{kind}") for kind in kinds), kinds


def test_gradios_frontend_still_takes_its_locale_from_navigator_language() -> None:
    """The assumption gradio_compat.PageLocale rests on, checked in the installed Gradio's frontend bundle: its
    i18n setup reads ``navigator.language``, and it ships a Russian locale."""
    import gradio

    assets = Path(gradio.__file__).parent / "templates" / "frontend" / "assets"
    bundles = [path.read_text(errors="replace") for path in assets.glob("*.js") if path.stat().st_size < 2_000_000]
    assert any("window.navigator.language" in text for text in bundles)
    assert any("setupi18n" in text for text in bundles)
    assert list(assets.glob("ru-*.js"))


# ---------------------------------------------------------------------------------------------- choosing a language


@pytest.mark.parametrize(("forced", "header", "expected"), [
    ("auto", "ru-RU,ru;q=0.9,en;q=0.8", "ru"),
    ("auto", "de-DE,de;q=0.9,ru;q=0.5", "ru"),
    ("auto", "de-DE,fr", "en"),
    ("auto", None, "en"),
    ("ru", "en-US", "ru"),
    ("en", "ru", "en"),
])
def test_the_language_is_the_forced_one_else_the_browsers_first_supported(
    forced: str, header: str | None, expected: str
) -> None:
    assert i18n.choose(forced, header) == expected


def test_numbers_and_seconds_are_written_the_languages_way() -> None:
    assert i18n.number(1234567, "en") == "1,234,567"
    assert i18n.number(1234567, "ru") == "1\u00a0234\u00a0567"
    assert i18n.seconds(1.234, "en") == "1.23 s"
    assert i18n.seconds(1.234, "ru") == "1,23 с"
    assert i18n.seconds(None, "ru") == "—"


def test_upload_messages_follow_the_language_and_english_stays_as_it_was(tmp_path: Path) -> None:
    sessions = SessionManager(idle_ttl_s=60, max_sessions=10, store=MemoryStore(), upload_root=tmp_path / "uploads",
                              default_provider="sim", default_model="m")
    session = sessions.get_or_create("s1")
    big = tmp_path / "big.txt"
    big.write_text("a" * 3000)
    binary = tmp_path / "image.txt"
    binary.write_bytes(b"\x89PNG\x00\x00")
    note = tmp_path / "note.txt"
    note.write_text("hello")

    def attach(path: Path, language: str) -> str:
        return attach_upload(sessions, session, path, max_bytes=2000, max_files=10, source_root=tmp_path,
                             language=language).message

    assert attach(big, "en") == "⚠️ big.txt: 3,000 bytes is over the 2,000-byte limit (sessions.max_upload_bytes)."
    assert attach(big, "ru") == "⚠️ big.txt: 3\u00a0000 байт — больше предела в 2\u00a0000 байт " \
                                "(sessions.max_upload_bytes)."
    assert "двоичное содержимое" in attach(binary, "ru")
    assert attach(note, "ru") == "✅ note.txt прикреплён (5 байт)."
    assert attach(note, "en") == "✅ note.txt attached (5 bytes)."


# ---------------------------------------------------------------------------------------------- the app over ASGI


@pytest.fixture(scope="module")
def failing_sim() -> Iterator[Simulator]:
    """Every request answered with an HTTP error: each chat turn ends in a provider notice."""
    with running_simulator(SimSettings(ttft_ms=0, reply_tokens=3, error_rate=1.0), port=0) as sim:
        yield sim


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def auto(failing_sim: Simulator, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcess]:
    loaded = load_settings("balanced", ["sessions.store=memory", "llm.max_retries=0"], environ={}, env_file=None)
    async with in_process(loaded, tmp_path_factory.mktemp("auto"), failing_sim.base_url) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def forced(failing_sim: Simulator, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[InProcess]:
    loaded = load_settings("balanced", ["sessions.store=memory", "llm.max_retries=0", "ui.language=ru"], environ={},
                           env_file=None)
    async with in_process(loaded, tmp_path_factory.mktemp("forced"), failing_sim.base_url) as running:
        yield running


async def outputs(app: InProcess, api_name: str, data: list[Any], session_hash: str, accept_language: str) -> list[Any]:
    """An event's outputs, joined the way a browser with this Accept-Language joins."""
    body = {"data": data, "fn_index": app.fn_index[api_name], "session_hash": session_hash, "event_data": None,
            "trigger_id": None}
    joined = await app.http.post("/gradio_api/queue/join", json=body, headers={"accept-language": accept_language})
    assert joined.status_code == 200, joined.text
    stream = await app.http.get("/gradio_api/queue/data", params={"session_hash": session_hash})
    for line in stream.text.splitlines():
        message = json.loads(line[5:]) if line.startswith("data:") else {}
        if message.get("msg") == "process_completed":
            assert message["success"], message
            return message["output"]["data"]
    raise AssertionError(stream.text[-500:])


def last_reply(history: list[dict[str, Any]]) -> str:
    return "".join(part["text"] for part in history[-1]["content"])


def marked_keys(config: dict[str, Any]) -> set[str]:
    """The keys of every ``gr.I18n`` marker in a Gradio config (its static strings)."""
    return set(re.findall(r'__i18n__\{"__type__": "translation_metadata", "key": "([^"]+)"\}',
                          json.dumps(config).replace('\\"', '"')))


@pytest.mark.asyncio(loop_scope="session")
async def test_the_page_config_marks_every_static_string_and_carries_both_tables(auto: InProcess) -> None:
    config = (await auto.http.get("/config")).json()
    keys = marked_keys(config)
    assert {"chat.tab", "chat.send", "chat.placeholder", "stats.tab", "logs.tab", "stats.refresh"} <= keys
    translations = config["i18n_translations"]
    assert translations["en"]["chat.send"] == "Send" and translations["ru"]["chat.send"] == "Отправить"
    assert all(key in translations[language] for key in keys for language in ("en", "ru"))


async def page_language(app: InProcess, accept_language: str) -> str:
    """The language the page tells Gradio's frontend, from the script that starts its ``<head>``."""
    response = await app.http.get("/", headers={"accept-language": accept_language, "accept-encoding": "br, gzip"})
    assert response.headers["vary"] == "Accept-Language"
    page = response.text
    head = page[page.index("<head>"):page.index("<meta charset")]  # before any of Gradio's scripts
    found = re.search(r'<script>\(function\(\)\{var l="(\w+)";.*Navigator\.prototype.*</script>', head)
    assert found, head
    return found.group(1)


@pytest.mark.asyncio(loop_scope="session")
async def test_the_page_starts_in_the_language_the_server_chose(auto: InProcess) -> None:
    assert await page_language(auto, "ru-RU,ru;q=0.9,en;q=0.8") == "ru"
    assert await page_language(auto, "de-DE,de;q=0.9,ru;q=0.5") == "ru"  # Gradio alone would pick German
    assert await page_language(auto, "de-DE,fr") == "en"  # not German widgets around English labels
    assert await page_language(auto, "en-US") == "en"


@pytest.mark.asyncio(loop_scope="session")
async def test_a_forced_language_is_every_table_and_starts_the_page_in_it(forced: InProcess) -> None:
    translations = (await forced.http.get("/config")).json()["i18n_translations"]
    assert translations["en"] == translations["ru"] == i18n.tables()["ru"]
    assert await page_language(forced, "en-US,en;q=0.9") == "ru"


@pytest.mark.asyncio(loop_scope="session")
async def test_a_provider_error_is_told_in_the_requests_language(auto: InProcess) -> None:
    [russian, _] = await outputs(auto, "chat", ["привет"], "ru-user", "ru-RU,ru;q=0.9")
    assert last_reply(russian) == "⚠️ sim ответил ошибкой; подробности — в журнале сервера."
    [english, _] = await outputs(auto, "chat", ["hello"], "en-user", "en-US,en;q=0.9")
    assert re.fullmatch(r"⚠️ sim answered HTTP \d{3} \(.+\); details are in the server log\.", last_reply(english))


@pytest.mark.asyncio(loop_scope="session")
async def test_a_forced_language_wins_over_the_browsers(forced: InProcess) -> None:
    [history, _] = await outputs(forced, "chat", ["hello"], "english-browser", "en-US,en;q=0.9")
    assert last_reply(history) == "⚠️ sim ответил ошибкой; подробности — в журнале сервера."
    [logs] = await outputs(forced, "logs", [], "english-browser", "en-US")
    assert logs.startswith("# запуск\n") and "# эта сессия" in logs


@pytest.mark.asyncio(loop_scope="session")
async def test_the_stats_tab_is_cards_in_the_language_and_the_api_keeps_its_data(auto: InProcess) -> None:
    await outputs(auto, "chat", ["one"], "stats-user", "ru")
    await outputs(auto, "chat", ["two"], "stats-user", "ru")
    cards, plot = await outputs(auto, "stats_view", [], "stats-user", "ru")
    assert re.search(r'data-figure="turns"><div class="label">Ходы</div><div class="value">2</div>', cards)
    assert "Чаты в работе" in cards and "Turns" not in cards
    assert "{" not in cards and '"this_session"' not in cards  # cards, not JSON
    assert plot["x_title"] == "Ход" and plot["y_title"] == "Секунды"
    value = plot["value"]
    series = {dict(zip(value["columns"], row, strict=True))["series"] for row in value["data"]}
    assert series == {"Время ответа"}  # the turns failed before a first token: no TTFT points
    english, _ = await outputs(auto, "stats_view", [], "stats-user", "en-US")
    assert re.search(r'<div class="label">Turns</div><div class="value">2</div>', english)
    [data] = await outputs(auto, "stats", [], "stats-user", "ru")
    assert data["this_session"]["turns"] == 2 and data["server"]["events"]["chat"]["limit"] == 3
