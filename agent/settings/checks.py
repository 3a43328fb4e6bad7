"""Can-it-take-effect checks: settings that validate but cannot work as written, each a warning naming its keys.

`cmw config validate` and `show` print them; the server logs them at start-up.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.settings.model import EventSettings, Settings
from agent.settings.providers import PROVIDERS
from agent.settings.registry import REGISTRY


def _limits(settings: Settings) -> dict[str, int]:
    return {
        "queue.default_concurrency_limit": settings.queue.default_concurrency_limit,
        **{
            f"events.{name}": getattr(settings.events, name)
            for name in EventSettings.model_fields
            if name.endswith("_limit")
        },
    }


def check_effect(settings: Settings) -> list[str]:
    """Valid settings that cannot take effect as written; each warning names its keys.

    Each rule restates what Gradio 6 does (gradio/queueing.py, gradio/blocks.py): `launch(max_threads)`
    sizes the queue's worker slots, so no more jobs run at once across all events; `max_size` counts
    waiting events of every event, not running ones; 'auto' status updates broadcast an estimate to
    every waiting client of an event each time one of its jobs starts.
    """
    warnings: list[str] = []
    threads = settings.server.max_threads
    limits = _limits(settings)
    if settings.enable_concurrent_processing:
        for key, limit in limits.items():
            if limit > threads:
                warnings.append(
                    f"{key}={limit} exceeds server.max_threads={threads}: Gradio never runs more than "
                    f"{threads} jobs at once, so the limit acts as {threads}."
                )
        total = sum(v for k, v in limits.items() if k.startswith("events."))
        if total > threads:
            warnings.append(
                f"events.*_concurrency_limit add up to {total} > server.max_threads={threads}: under mixed load "
                "events wait for one of Gradio's worker slots even below their own limits."
            )
    elif any(v > 1 for v in limits.values()):
        warnings.append(
            "enable_concurrent_processing=false: every event runs one at a time; the queue.* and events.* "
            "concurrency limits are not applied."
        )
    max_size = settings.queue.max_size
    chat = settings.event_limit("chat")
    if max_size is not None and max_size < chat:
        warnings.append(
            f"queue.max_size={max_size} < events.chat_concurrency_limit={chat}: Gradio refuses joins once "
            f"{max_size} events wait, so a burst of more than {max_size} simultaneous chats can be refused while "
            "chat slots are free."
        )
    if not settings.queue.enabled:
        warnings.append(
            "queue.enabled=false: Gradio 6 always queues events; queue.default_concurrency_limit, "
            "queue.max_size and queue.status_update_rate are not applied (Gradio's defaults are)."
        )
    if settings.queue.status_update_rate == "auto" and (max_size is None or max_size > 200):
        warnings.append(
            f"queue.status_update_rate='auto' with queue.max_size={max_size if max_size is not None else 'unbounded'}: "
            "every job that starts sends an estimate to every client waiting for that event; a number such as "
            "2.0 keeps that traffic bounded."
        )
    if settings.enable_concurrent_processing and settings.sessions.max_sessions < chat:
        warnings.append(
            f"sessions.max_sessions={settings.sessions.max_sessions} < events.chat_concurrency_limit={chat}: "
            "more chats can run than sessions are kept, so sessions are evicted while they reply."
        )
    if settings.server.workers > 1 and not settings.sessions.store.startswith("redis"):
        warnings.append(
            f"server.workers={settings.server.workers} with sessions.store={settings.sessions.store!r}: workers do "
            "not share sessions; use a redis:// store."
        )
    if settings.server.port and settings.server.port == settings.sim.port:
        warnings.append(
            f"server.port and sim.port are both {settings.server.port}: the second server to start cannot bind it."
        )
    llm = settings.llm
    provider = PROVIDERS[llm.provider]
    if provider.url_setting and not settings.get(provider.url_setting):
        warnings.append(f"llm.provider={llm.provider} needs {provider.url_setting} (an OpenAI-compatible URL).")
    if provider.key_required and provider.key_setting and settings.get(provider.key_setting) is None:
        env = REGISTRY[provider.key_setting].env[0]
        warnings.append(
            f"llm.provider={llm.provider} without {provider.key_setting} ({env}): requests will be refused."
        )
    if llm.model and any(m.startswith(f"{llm.provider}:") for m in llm.models) and \
            f"{llm.provider}:{llm.model}" not in llm.models:
        warnings.append(f"llm.model={llm.model} is not in llm.models for {llm.provider}: the first model listed "
                        "there is the default instead.")
    sim = settings.sim
    faults = sim.error_rate + sim.disconnect_rate + sim.stall_rate + sim.malformed_rate
    if faults > 1:
        warnings.append(
            f"sim.error_rate + disconnect_rate + stall_rate + malformed_rate = {faults:g} > 1: "
            "the rates cannot all hold; at most every request gets a fault."
        )
    if settings.server.host not in ("127.0.0.1", "localhost", "::1") and settings.admin.token is None:
        warnings.append(
            f"server.host={settings.server.host} exposes the app; set admin.token explicitly rather than relying on "
            "the generated one."
        )
    return warnings


def environment_warnings(settings: Settings, environ: Mapping[str, str]) -> list[str]:
    """Gradio's own env var that cmw's settings override, so setting it does nothing."""
    if settings.queue.enabled and "GRADIO_DEFAULT_CONCURRENCY_LIMIT" in environ:
        return [
            "GRADIO_DEFAULT_CONCURRENCY_LIMIT is ignored: cmw passes queue.default_concurrency_limit to Gradio; "
            "set GRADIO_CONCURRENCY_LIMIT or CMW_QUEUE__DEFAULT_CONCURRENCY_LIMIT instead."
        ]
    return []
