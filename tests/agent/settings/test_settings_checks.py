"""Can-it-take-effect checks: valid settings that cannot work as written are warned about, naming the keys."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

from agent.settings import (
    Settings,
    check_effect,
    load_settings,
)


def _warnings(**groups: Any) -> list[str]:
    return check_effect(Settings(**groups))


@pytest.mark.parametrize(
    ("groups", "fragment"),
    [
        ({"events": {"chat_concurrency_limit": 50}, "server": {"max_threads": 40}},
         "events.chat_concurrency_limit=50 exceeds server.max_threads=40"),
        ({"queue": {"default_concurrency_limit": 50}, "server": {"max_threads": 40}},
         "queue.default_concurrency_limit=50 exceeds server.max_threads=40"),
        ({"server": {"max_threads": 10}}, "events.*_concurrency_limit add up to 15 > server.max_threads=10"),
        ({"enable_concurrent_processing": False}, "enable_concurrent_processing=false: every event runs one at a time"),
        ({"queue": {"max_size": 2}}, "queue.max_size=2 < events.chat_concurrency_limit=3"),
        ({"queue": {"enabled": False}}, "queue.enabled=false: Gradio 6 always queues events"),
        ({"queue": {"max_size": None}}, "queue.status_update_rate='auto' with queue.max_size=unbounded"),
        ({"sessions": {"max_sessions": 2}}, "sessions.max_sessions=2 < events.chat_concurrency_limit=3"),
        ({"server": {"workers": 2}}, "server.workers=2 with sessions.store='sqlite'"),
        ({"server": {"port": 8000}, "sim": {"port": 8000}}, "server.port and sim.port are both 8000"),
        ({"llm": {"provider": "custom", "providers": ["custom"]}}, "llm.provider=custom needs llm.base_url"),
        ({"llm": {"provider": "openai"}}, "llm.provider=openai without llm.api_key"),
        ({"llm": {"provider": "openrouter"}}, "llm.provider=openrouter without llm.openrouter_api_key"),
        ({"llm": {"model": "gpt-4o", "models": ["sim:cmw-sim"], "provider": "sim"}}, "llm.model=gpt-4o is not in"),
        ({"sim": {"error_rate": 0.6, "stall_rate": 0.6}}, "= 1.2 > 1"),
        ({"server": {"host": "0.0.0.0"}}, "server.host=0.0.0.0 exposes the app; set admin.token"),
    ],
)
def test_settings_that_cannot_take_effect_are_warned_about(groups: dict[str, Any], fragment: str) -> None:
    assert any(fragment in warning for warning in _warnings(**groups)), _warnings(**groups)


def test_a_queue_of_waiting_events_below_the_chat_limit_is_fine_when_sequential() -> None:
    assert not any("queue.max_size" in w for w in _warnings(enable_concurrent_processing=False, queue={"max_size": 2}))


def test_gradio_default_concurrency_limit_in_the_environment_is_called_out(settings_env: Path) -> None:
    loaded = load_settings(environ={"GRADIO_DEFAULT_CONCURRENCY_LIMIT": "8"})
    assert any(w.startswith("GRADIO_DEFAULT_CONCURRENCY_LIMIT is ignored") for w in loaded.warnings)


def test_gradio_behaves_as_the_warnings_say() -> None:
    """The facts behind check_effect, checked on the installed Gradio so an upgrade cannot make them stale."""
    gr = pytest.importorskip("gradio")
    from gradio.queueing import EventQueue, Queue

    with gr.Blocks() as demo:
        box = gr.Textbox()
        box.submit(lambda text: text, box, box)
    # Gradio 6 queues every Blocks from construction on: queue.enabled=false cannot turn it off.
    assert demo._queue is not None
    demo.queue(status_update_rate="auto", max_size=3, default_concurrency_limit=5)
    assert demo._queue.live_updates is True  # 'auto' broadcasts estimates as jobs start
    # max_size counts waiting events only: a running job has left its event queue.
    queue = Queue(live_updates=True, concurrency_count=1, update_intervals=1, max_size=1, blocks=demo)
    chat = EventQueue("chat", 1)
    chat.current_concurrency = 1
    queue.event_queue_per_concurrency_id["chat"] = chat
    assert len(queue) == 0
    chat.queue.append(object())  # type: ignore[arg-type]
    assert len(queue) == 1
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        demo.launch(server_name="127.0.0.1", server_port=port, max_threads=7, prevent_thread_lock=True, quiet=True)
        # launch(max_threads) sizes the queue's worker slots: no more jobs run at once, whatever the limits.
        assert demo._queue.max_thread_count == 7
        assert len(demo._queue.active_jobs) == 7
    finally:
        demo.close(verbose=False)
