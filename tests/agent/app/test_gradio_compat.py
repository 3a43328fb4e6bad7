"""Canaries for every Gradio internal cmw touches (agent/app/gradio_compat.py), on real Gradio objects.

A Gradio upgrade that renames, reshapes or stops calling one of them fails here, not in production.
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from gradio.queueing import EventQueue, Queue
from gradio.state_holder import SessionState, StateHolder

from agent.app.gradio_compat import (
    LeanSessionState,
    LeanStateHolder,
    cap_session_states,
    coalesce_estimations,
    event_functions,
    event_load,
    forget_ended_sessions,
    intercepted_launch,
    mark_launched,
    pool_members,
    queue_length,
    set_event_limit,
    set_pool_limit,
    skip_login_check_thread_hop,
    upload_folder,
    upload_refusal,
    use_lean_session_state,
)


def blocks(limit: int = 2) -> gr.Blocks:
    with gr.Blocks() as demo:
        text = gr.Textbox()
        out = gr.Textbox()
        text.submit(lambda value: value, text, out, concurrency_limit=limit, api_name="echo")
    return demo


@pytest.fixture(scope="module")
def demo() -> gr.Blocks:
    return blocks()


# ---------------------------------------------------------------------------------------------- session state


def test_lean_state_has_every_attribute_gradio_sets(demo: gr.Blocks) -> None:
    assert set(vars(LeanSessionState(demo))) == set(vars(SessionState(demo)))


def test_block_configs_are_built_only_for_blocks_an_event_touched(demo: gr.Blocks) -> None:
    full, lean = SessionState(demo), LeanSessionState(demo)
    assert lean.config_values == {} and len(full.config_values) >= 2
    out_id = max(full.config_values)
    lean._update_value_in_config(out_id, "hello")
    full._update_value_in_config(out_id, "hello")
    assert lean.config_values == {out_id: full.config_values[out_id]}


def test_holder_makes_lean_states_and_keeps_gradios_lru() -> None:
    demo = blocks()
    holder = StateHolder()
    holder.set_blocks(demo)
    use_lean_session_state(demo)
    assert demo.state_holder is holder and isinstance(holder, LeanStateHolder)
    holder.capacity = 2
    for session in ("a", "b", "c"):
        assert isinstance(holder[session], LeanSessionState)
    assert list(holder.session_data) == ["b", "c"]
    with pytest.raises(RuntimeError):
        use_lean_session_state(demo)  # too late once sessions exist


def test_session_state_capacity_is_the_attribute_launch_sets() -> None:
    assert "state_session_capacity" in inspect.signature(gr.Blocks.launch).parameters
    assert "self.state_session_capacity = state_session_capacity" in inspect.getsource(gr.Blocks.launch)
    demo = blocks()
    cap_session_states(demo, 123)
    holder = StateHolder()
    holder.set_blocks(demo)
    assert holder.capacity == 123  # the holder reads it from the Blocks


# ---------------------------------------------------------------------------------------------- the queue


def queued(limit: int = 2) -> gr.Blocks:
    demo = blocks(limit)
    demo.queue()
    return demo


def test_queue_is_built_with_the_blocks_max_threads() -> None:
    demo = blocks()
    demo.max_threads = 7
    demo.queue()
    assert demo._queue.max_thread_count == 7  # why apply_queue sets no internal for it


def test_the_queue_calls_broadcast_estimations_as_coalesce_assumes() -> None:
    assert list(inspect.signature(Queue.broadcast_estimations).parameters) == ["self", "concurrency_id", "after"]
    source = inspect.getsource(Queue)
    assert "self.broadcast_estimations(event.concurrency_id, len(event_queue.queue) - 1)" in source  # a join
    assert "self.broadcast_estimations(concurrency_id)" in source  # a job start


async def test_a_burst_of_job_starts_broadcasts_once_after_the_burst() -> None:
    demo = queued()
    queue = demo._queue
    queue.create_event_queue_for_fn(demo.fns[0])
    sent: list[tuple[str, int | None]] = []
    queue.broadcast_estimations = lambda concurrency_id, after=None: sent.append((concurrency_id, after))
    coalesce_estimations(demo)
    concurrency_id = demo.fns[0].concurrency_id
    for _ in range(16):  # Gradio's start loop: one broadcast per started job, no await in between
        queue.broadcast_estimations(concurrency_id)
    queue.broadcast_estimations(concurrency_id, 3)  # a join learns its rank at once
    assert sent == [(concurrency_id, 3)]
    await asyncio.sleep(0)
    assert sent == [(concurrency_id, 3), (concurrency_id, None)]


def test_event_load_reads_gradios_event_queue() -> None:
    demo = queued(limit=2)
    assert event_load(demo, 0).limit == 2 and queue_length(demo) == 0  # before the event's first join
    queue = demo._queue
    queue.create_event_queue_for_fn(demo.fns[0])
    event_queue = queue.event_queue_per_concurrency_id[demo.fns[0].concurrency_id]
    assert isinstance(event_queue, EventQueue)
    assert {"queue", "current_concurrency", "concurrency_limit"} <= set(vars(event_queue))
    event_queue.current_concurrency = 1
    load = event_load(demo, 0)
    assert (load.waiting, load.running, load.limit) == (0, 1, 2)


def test_forget_ended_sessions_drops_only_ended_idle_entries() -> None:
    demo = queued()
    queue = demo._queue
    assert isinstance(queue.pending_event_ids_session, dict)

    def add(session_hash: str, *event_ids: str, undelivered: bool = False) -> None:
        queue.pending_event_ids_session[session_hash] = set(event_ids)
        queue.pending_messages_per_session[session_hash] = messages = asyncio.Queue()
        if undelivered:
            messages.put_nowait("process_completed")

    add("ended")
    add("live")
    add("ended-running", "event-1")
    add("ended-undelivered", undelivered=True)
    queue.pending_event_ids_session["evicted-from-lru"] = set()  # its message queue already gone
    assert forget_ended_sessions(demo, lambda session_hash: session_hash == "live") == 2
    assert set(queue.pending_event_ids_session) == {"live", "ended-running", "ended-undelivered"}
    assert set(queue.pending_messages_per_session) == {"live", "ended-running", "ended-undelivered"}


# ---------------------------------------------------------------------------------------------- mounting


def test_has_launched_is_what_gates_gradios_file_check() -> None:
    import gradio.processing_utils

    demo = blocks()
    assert demo.has_launched is False
    mark_launched(demo)
    assert demo.has_launched is True
    assert "has_launched" in inspect.getsource(gradio.processing_utils)  # still read where files are moved


def test_upload_helpers_name_gradios_own_pieces() -> None:
    from gradio.route_utils import MultiPartException

    assert isinstance(upload_refusal("too big"), MultiPartException)
    assert upload_folder().is_absolute()


def mounted(**mount: Any) -> tuple[Any, Any]:
    from fastapi import FastAPI
    from gradio.routes import App as GradioApp

    app = gr.mount_gradio_app(FastAPI(), blocks(), path="/", **mount)
    gradio_app = next(route.app for route in app.routes if isinstance(getattr(route, "app", None), GradioApp))
    return app, gradio_app


def test_only_gradios_login_check_is_overridden_and_by_identity() -> None:
    app, gradio_app = mounted()
    assert skip_login_check_thread_hop(app) == 1
    ((check, replacement),) = gradio_app.dependency_overrides.items()
    assert check.__name__ == "login_check" and check.__module__ == "gradio.routes"
    assert inspect.iscoroutinefunction(replacement)
    # The queue join depends on that very check; anything else it depends on (one Gradio adds later,
    # say) is left in force.
    routes = list(gradio_app.router.routes)
    joins = []
    while routes:
        route = routes.pop()
        routes.extend(getattr(getattr(route, "original_router", None), "routes", []))
        if getattr(route, "path", "").endswith("/queue/join"):
            joins.append(route)
    assert joins and all(any(d.call is check for d in join.dependant.dependencies) for join in joins)
    assert skip_login_check_thread_hop(app) == 0  # idempotent


def test_an_app_with_a_gradio_login_keeps_its_check() -> None:
    app, gradio_app = mounted(auth=("user", "pass"))
    assert skip_login_check_thread_hop(app) == 0 and not gradio_app.dependency_overrides


def test_create_app_uses_lean_states_and_the_async_login_check(tmp_path: Path) -> None:
    from gradio.routes import App as GradioApp

    from agent.app.asgi import create_app
    from agent.settings import load_settings

    loaded = load_settings("balanced", ["sessions.store=memory"], environ={}, env_file=None)
    app, _ = create_app(loaded, sim_base_url="http://127.0.0.1:9/v1", state_dir=tmp_path)
    gradio_app = next(route.app for route in app.routes if isinstance(getattr(route, "app", None), GradioApp))
    assert isinstance(gradio_app.state_holder, LeanStateHolder)
    assert len(gradio_app.dependency_overrides) == 1


def test_an_intercepted_launch_records_its_arguments_starts_nothing_and_is_restored() -> None:
    original = gr.Blocks.launch
    demo = blocks()
    with intercepted_launch() as launched:
        assert demo.launch(server_port=1234, auth=("u", "p")) == (None, "", "")
        demo.block_thread()  # returns at once too
    assert launched == [(demo, {"server_port": 1234, "auth": ("u", "p")})]
    assert gr.Blocks.launch is original and not demo.is_running
    with pytest.raises(TypeError), intercepted_launch():
        demo.launch(no_such_argument=1)  # a wrong argument fails as the real launch() would
    assert gr.Blocks.launch is original


def test_an_events_limit_and_pool_set_before_its_first_join_are_what_the_queue_uses() -> None:
    demo = blocks(limit=2)
    [echo] = event_functions(demo)
    assert (echo.api_name, echo.concurrency_limit) == ("echo", 2)
    set_event_limit(demo, echo.fn_index, 7, "shared-pool")
    demo.queue()
    queue: Queue = demo._queue
    queue.create_event_queue_for_fn(demo.fns[echo.fn_index])  # what Queue.push does on the first join
    assert queue.event_queue_per_concurrency_id["shared-pool"].concurrency_limit == 7


# ---------------------------------------------------------------------------------------------- live limits


def test_a_pools_limit_changes_for_its_running_queue_and_for_joins_to_come() -> None:
    with gr.Blocks() as demo:
        text = gr.Textbox()
        out = gr.Textbox()
        text.submit(lambda value: value, text, out, concurrency_limit=2, concurrency_id="pool", api_name="a")
        text.change(lambda value: value, text, out, concurrency_limit=2, concurrency_id="pool", api_name="b")
        text.blur(lambda value: value, text, out, concurrency_limit=2, api_name="alone")
    demo.queue()
    queue: Queue = demo._queue
    queue.create_event_queue_for_fn(demo.fns[0])  # the pool exists once one of its events has joined
    assert pool_members(demo, 1) == [0, 1]
    assert set_pool_limit(demo, 1, 6) == [0, 1]
    assert queue.event_queue_per_concurrency_id["pool"].concurrency_limit == 6
    assert [fn.concurrency_limit for fn in demo.fns.values()] == [6, 6, 2]
    queue.create_event_queue_for_fn(demo.fns[1])  # every join lowers the pool to the joining event's own limit
    assert queue.event_queue_per_concurrency_id["pool"].concurrency_limit == 6  # which is the new one too
    set_pool_limit(demo, 2, 9)  # a pool with no join yet: its first join builds it with the new limit
    queue.create_event_queue_for_fn(demo.fns[2])
    assert queue.event_queue_per_concurrency_id[demo.fns[2].concurrency_id].concurrency_limit == 9


def test_the_queue_starts_jobs_by_the_pools_limit_and_polls_while_any_wait() -> None:
    """Why a live change needs nothing else: the start loop re-reads the limit on every pass."""
    starts = inspect.getsource(Queue.get_events)
    assert "event_queue.current_concurrency < event_queue.concurrency_limit" in starts
    loop = inspect.getsource(Queue.start_processing)
    assert "self.get_events()" in loop and "await asyncio.sleep(self.sleep_when_free)" in loop
    joins = inspect.getsource(Queue.create_event_queue_for_fn)
    assert "concurrency_limit < existing_event_queue.concurrency_limit" in joins  # why every member is set
