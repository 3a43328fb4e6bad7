"""Every touch of Gradio's internals, in one place, each with why no public API does it.

Written against gradio 6.31 (pyproject pins the 6.31 series); tests/agent/app/test_gradio_compat.py
checks each assumption on real Gradio objects, so an upgrade that breaks one fails there, not in
production. Gradio is imported inside the functions (``gradio`` costs ~4 s to import), except where a
class must subclass one of Gradio's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterator
from copy import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Read by Gradio when it is imported / when a queue is built. Telemetry off; and the monitoring records:
# after every finished event Gradio rebuilds a summary of its last ANALYTICS_MAX_EVENTS events (a pandas
# DataFrame in a worker thread competing for the GIL, ~10 ms at 10,000 events, and a ~0.5 s pandas
# import on the first) for its monitoring dashboard, which cmw mounts off: keep one record and never
# rebuild the summary.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "1")
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", str(10**12))

from gradio.state_holder import SessionState, StateHolder  # noqa: E402 - after the environment above

# ---------------------------------------------------------------------------------------------- session state
# On a session's first event Gradio builds a SessionState whose config_values holds the config of every
# block (get_config, inspect.signature, API info): ~10 ms and ~30 KB per new session, on the event loop.
# The values only serve deep links (closed by cmw) and Gradio fills in a missing entry itself when an event
# updates a block, so the lean state starts empty. No public option skips the copy.


class LeanSessionState(SessionState):
    """A SessionState whose block configs are filled in on first use."""

    def __init__(self, blocks: Any):  # the attributes of SessionState.__init__ (checked by a canary test)
        self.blocks_config = copy(blocks.default_config)
        self.config_values: dict[int, Any] = {}
        self.state_data: dict[int, Any] = {}
        self._state_ttl: dict[int, Any] = {}
        self.is_closed = False
        self.STATE_TTL_WHEN_CLOSED = 3600


class LeanStateHolder(StateHolder):
    """Gradio's StateHolder (LRU of session states), making lean states."""

    def __getitem__(self, session_id: str) -> SessionState:
        if session_id not in self.session_data:
            self.session_data[session_id] = LeanSessionState(self.blocks)
        return super().__getitem__(session_id)


def use_lean_session_state(demo: Any) -> None:
    """Make the mounted app's state holder (shared by Gradio's App and ``demo``) build lean states."""
    holder = demo.state_holder
    if holder.session_data:
        raise RuntimeError("use_lean_session_state must run before the app serves a session")
    holder.__class__ = LeanStateHolder


def cap_session_states(demo: Any, capacity: int) -> None:
    """Keep at most ``capacity`` per-session states. Gradio keeps one per session hash in an LRU of
    ``state_session_capacity`` (10,000), a ``launch()`` argument that a mounted app cannot pass."""
    demo.state_session_capacity = capacity


# ---------------------------------------------------------------------------------------------- mounting


def mark_launched(demo: Any) -> None:
    """Tell Gradio the app is served. ``launch()`` sets ``has_launched``; a mounted app never does, and
    without it Gradio skips its check that a file reference names a file a user uploaded, so any server
    path could be copied into the cache. ``mount_gradio_app`` has no option for it."""
    demo.has_launched = True


def skip_login_check_thread_hop(app: Any) -> int:
    """Answer Gradio's login check on the event loop when the app has no Gradio login; overrides made.

    Every queue join, event stream and config request depends on Gradio's ``login_check``, a plain
    function, so FastAPI runs it in a worker thread: two thread hops per request for a check that always
    passes without auth. The check is a closure inside Gradio's ``App.create_app``, not importable; it is
    found by identity as the endpoint of Gradio's own ``/login_check`` route, and only it is overridden,
    so any other dependency Gradio adds stays in force. With a login configured, nothing changes.
    """
    from fastapi.routing import APIRoute
    from gradio.routes import App as GradioApp

    made = 0
    for mount in app.routes:
        gradio_app = getattr(mount, "app", None)
        if not isinstance(gradio_app, GradioApp) or gradio_app.auth or gradio_app.auth_dependency:
            continue
        routes = list(gradio_app.router.routes)
        while routes:
            route = routes.pop()
            nested = getattr(route, "original_router", None)  # FastAPI keeps included routers whole
            if nested is not None:
                routes.extend(nested.routes)
            elif isinstance(route, APIRoute) and route.path.rstrip("/").endswith("/login_check") \
                    and route.endpoint not in gradio_app.dependency_overrides:
                gradio_app.dependency_overrides[route.endpoint] = _no_login_needed
                made += 1
    return made


async def _no_login_needed() -> None:
    return None


def upload_folder() -> Path:
    """Gradio's upload cache (``GRADIO_TEMP_DIR`` or the temp dir's ``gradio``): where real uploads land.

    Gradio resolves it in ``gradio.utils.get_upload_folder``; no public name says where uploads go.
    """
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder())


def upload_refusal(message: str) -> Exception:
    """The exception Gradio's upload route answers with 413 (deleting the files it had begun).

    Raised from inside the multipart body stream, where only Gradio's own exception type is turned into
    an answer rather than a 500.
    """
    from gradio.route_utils import MultiPartException

    return MultiPartException(message)


# ---------------------------------------------------------------------------------------------- the queue


def coalesce_estimations(demo: Any) -> None:
    """Send the queue's rank/ETA broadcasts once per burst of job starts instead of once per start.

    With ``status_update_rate="auto"`` Gradio tells every waiting client its new rank each time a job
    starts; when a burst of N users joins and N slots are free, that is N²/2 messages for ranks that are
    gone before the clients read them (14 per turn at 16 users, more than the streamed updates
    themselves). Gradio starts every startable job in one pass of its loop, so a broadcast deferred with
    ``call_soon`` runs once after the pass and reaches only events still waiting. A joining event still
    learns its rank at once. The queue's ``broadcast_estimations`` has no public switch.
    """
    queue = demo._queue
    broadcast_now = queue.broadcast_estimations
    due: set[str] = set()

    def flush(concurrency_id: str) -> None:
        due.discard(concurrency_id)
        if concurrency_id in queue.event_queue_per_concurrency_id:
            broadcast_now(concurrency_id)

    def broadcast_estimations(concurrency_id: str, after: int | None = None) -> None:
        if after is not None:  # a join: only the new event is told, and at once
            broadcast_now(concurrency_id, after)
        elif concurrency_id not in due:
            due.add(concurrency_id)
            asyncio.get_running_loop().call_soon(flush, concurrency_id)

    queue.broadcast_estimations = broadcast_estimations


@dataclass
class QueueLoad:
    """One event's share of Gradio's queue now."""

    waiting: int
    running: int
    limit: int | None


def event_load(demo: Any, fn_index: int) -> QueueLoad:
    """Waiting and running jobs of one event, and its limit, as Gradio's queue holds them.

    Gradio keeps per-concurrency-id queues (``event_queue_per_concurrency_id``) and exposes no figures;
    an id's queue exists from the event's first join.
    """
    fn = demo.fns[fn_index]
    queue = getattr(demo, "_queue", None)
    # `is not None`: Gradio's Queue has a __len__, so an idle queue is falsy.
    per_id = getattr(queue, "event_queue_per_concurrency_id", {}) if queue is not None else {}
    event_queue = per_id.get(fn.concurrency_id)
    if event_queue is None:
        return QueueLoad(0, 0, fn.concurrency_limit if isinstance(fn.concurrency_limit, int) else None)
    waiting = sum(1 for e in event_queue.queue if e.fn is fn)
    limit = event_queue.concurrency_limit
    return QueueLoad(waiting, event_queue.current_concurrency, limit if isinstance(limit, int) else None)


def queue_length(demo: Any) -> int:
    """Events waiting in Gradio's queue, over every event."""
    queue = getattr(demo, "_queue", None)
    return len(queue) if queue is not None else 0


def forget_ended_sessions(demo: Any, is_live: Callable[[str], bool]) -> int:
    """Drop Gradio's per-session queue entries of sessions that have ended; the number dropped.

    Gradio keeps, for every session hash it ever saw, a set of event ids (emptied, never removed) and,
    in an LRU of 2,000, a message queue of ~3 KB: ~9 MB after 10,000 sessions have come and gone
    (bench/session_churn.py), with no API to release them. An entry goes only when nothing of it is
    queued or running and cmw has freed its session, so no stream can still be delivering to it; a later
    join by the same hash recreates both, as for a new session. Call it on the event loop, where Gradio
    mutates them.
    """
    queue = demo._queue
    forgotten = 0
    for session_hash, event_ids in list(queue.pending_event_ids_session.items()):
        if event_ids or is_live(session_hash):
            continue
        messages = queue.pending_messages_per_session.get(session_hash)
        if messages is not None and not messages.empty():
            continue
        del queue.pending_event_ids_session[session_hash]
        if messages is not None:
            del queue.pending_messages_per_session[session_hash]
        forgotten += 1
    return forgotten


# ---------------------------------------------------------------------------------------------- operators' apps
# Written against Gradio 6.31. An app written for `python app.py` may call launch() at import; no public
# option stops it from starting a server, so while cmw imports the app launch() records its arguments and
# returns, and block_thread() (which it would call after) returns too. Both are restored on the way out.


@contextlib.contextmanager
def intercepted_launch() -> Iterator[list[tuple[Any, dict[str, Any]]]]:
    """While open, ``Blocks.launch`` records (blocks, explicit arguments) and starts nothing."""
    import inspect

    import gradio as gr

    blocks_cls = gr.Blocks
    original_launch, original_block = blocks_cls.launch, blocks_cls.block_thread
    signature = inspect.signature(original_launch)
    launched: list[tuple[Any, dict[str, Any]]] = []

    def launch(self: Any, *args: Any, **kwargs: Any) -> tuple[None, str, str]:
        bound = signature.bind(self, *args, **kwargs)  # a wrong argument raises as the real launch() would
        arguments = dict(bound.arguments)
        arguments.pop(next(iter(signature.parameters)), None)  # self
        if not any(b is self for b, _ in launched):
            launched.append((self, arguments))
        return None, "", ""

    def block_thread(self: Any) -> None:
        return None

    blocks_cls.launch, blocks_cls.block_thread = launch, block_thread  # type: ignore[method-assign]
    try:
        yield launched
    finally:
        blocks_cls.launch, blocks_cls.block_thread = original_launch, original_block  # type: ignore[method-assign]


# Per-event limits of an app that is already built: Gradio takes concurrency_limit/concurrency_id only as
# arguments of the event listener, and keeps them on each BlockFunction, whose per-pool queue it creates
# on the event's first join (Queue.create_event_queue_for_fn). Set before serving, they are what it uses.


@dataclass(frozen=True)
class EventFunction:
    """What cmw reads of one event of a built app."""

    fn_index: int
    api_name: str | None
    targets: tuple[tuple[int | None, str], ...]
    concurrency_limit: int | None | str  # "default", an int, or None (unlimited), as the app's code set it
    concurrency_id: str


def event_functions(demo: Any) -> list[EventFunction]:
    return [
        EventFunction(fn_index, fn.api_name if isinstance(fn.api_name, str) else None,
                      tuple((block_id, event) for block_id, event in fn.targets), fn.concurrency_limit,
                      fn.concurrency_id)
        for fn_index, fn in demo.fns.items()
    ]


def set_event_limit(demo: Any, fn_index: int, limit: int | None, concurrency_id: str) -> None:
    """The limit and pool one event runs with, set before its first join."""
    fn = demo.fns[fn_index]
    fn.concurrency_limit = limit
    fn.concurrency_id = concurrency_id


# ---------------------------------------------------------------------------------------------- an app's sessions
# An operator's app has no cmw sessions: its sessions are Gradio's session hashes, seen as events join the queue
# (Queue.push, awaited by Gradio's join and /call routes) and running in its workers (Queue.active_jobs) or
# waiting in its per-pool queues. Gradio reports none of this and has no hook for a join.


def observe_joins(demo: Any, on_join: Callable[[str, int], None]) -> None:
    """Call ``on_join(session_hash, fn_index)`` for every event the queue accepts (after it is queued)."""
    queue = demo._queue
    push = queue.push

    async def observed_push(body: Any, request: Any, username: str | None) -> Any:
        accepted = await push(body=body, request=request, username=username)
        if accepted[0] and body.session_hash is not None and body.fn_index is not None:
            on_join(body.session_hash, body.fn_index)
        return accepted

    queue.push = observed_push


@dataclass
class SessionJobs:
    """The fn indices one session has running and waiting in the queue now."""

    running: list[int]
    waiting: list[int]


def session_jobs(demo: Any) -> dict[str, SessionJobs]:
    """Every session with an event in the queue now: what runs and what waits, by fn index."""
    queue = demo._queue
    jobs: dict[str, SessionJobs] = {}
    for job in list(queue.active_jobs):
        for event in job or ():
            jobs.setdefault(event.session_hash, SessionJobs([], [])).running.append(event.fn._id)
    for event_queue in list(queue.event_queue_per_concurrency_id.values()):
        for event in list(event_queue.queue):
            jobs.setdefault(event.session_hash, SessionJobs([], [])).waiting.append(event.fn._id)
    return jobs


async def cancel_session_events(demo: Any, session_hash: str, reason: str) -> int:
    """Cancel every event of one session, running or waiting; the number cancelled.

    What Gradio's own ``/cancel`` route does for one event (cancel its task, take it off the queue, tell the
    client it is over, close its iterator), for all of the session's events, with ``reason`` as the error its
    client sees. Call it on the event loop.
    """
    from gradio.server_messages import ProcessCompletedMessage
    from gradio.utils import cancel_tasks, safe_aclose_iterator

    queue = demo._queue
    events = [e for e in list(queue.event_ids_to_events.values()) if e.session_hash == session_hash]
    if not events:
        return 0
    await cancel_tasks({f"{session_hash}_{event.fn._id}" for event in events})  # Gradio names tasks so
    app = queue.server_app
    for event in events:
        await queue.remove_from_queue(event._id)
        messages = queue.pending_messages_per_session.get(session_hash)
        if messages is not None and event._id in queue.pending_event_ids_session.get(session_hash, ()):
            messages.put_nowait(ProcessCompletedMessage(output={"error": reason}, success=False, event_id=event._id))
        if app is not None and event._id in app.iterators:
            async with app.lock:
                with contextlib.suppress(Exception):
                    await safe_aclose_iterator(app.iterators[event._id])
                app.iterators.pop(event._id, None)
                app.iterators_to_reset.add(event._id)
    return len(events)


def pace_streaming_events(demo: Any, wrap: Callable[[Any], Any]) -> int:
    """Replace each generator event's function by ``wrap(fn)`` (a generator function of the same kind, keeping
    the signature through ``__wrapped__``); the number wrapped. Gradio keeps the function on its BlockFunction
    and decides how to run it (thread or loop, streaming or not) from that function when it calls it."""
    wrapped = 0
    for fn in demo.fns.values():
        if fn.types_generator and fn.fn is not None:
            fn.fn = wrap(fn.fn)
            wrapped += 1
    return wrapped


# ---------------------------------------------------------------------------------------------- live limits
# Gradio takes an event's limit only as a listener argument; nothing changes it once the app serves. Its queue
# reads the limit in two places (6.31, gradio/queueing.py): each pool (an EventQueue per concurrency id, made on
# the first join of one of its events) holds the ``concurrency_limit`` its loop compares ``current_concurrency``
# with before starting a job (Queue.get_events), and every join lowers the pool's limit to its BlockFunction's
# own when that is lower (Queue.create_event_queue_for_fn). So both are set, for every BlockFunction of the pool.
# Raised, waiting jobs start on the loop's next pass: it polls every millisecond while anything waits, with no
# other event needed. Lowered, running jobs finish and none starts until fewer than the new limit run.


def pool_members(demo: Any, fn_index: int) -> list[int]:
    """The fn indices sharing ``fn_index``'s pool of slots (its concurrency id), itself included."""
    pool = demo.fns[fn_index].concurrency_id
    return [index for index, fn in demo.fns.items() if fn.concurrency_id == pool]


def set_pool_limit(demo: Any, fn_index: int, limit: int) -> list[int]:
    """Set the limit of ``fn_index``'s pool now, for its running queue and for joins to come; the fn indices
    changed. Call it on the event loop, where Gradio's queue reads the limit."""
    members = pool_members(demo, fn_index)
    for index in members:
        fn = demo.fns[index]
        fn.concurrency_limit = limit
    queue = getattr(demo, "_queue", None)
    per_id = getattr(queue, "event_queue_per_concurrency_id", {}) if queue is not None else {}
    event_queue = per_id.get(demo.fns[fn_index].concurrency_id)
    if event_queue is not None:
        event_queue.concurrency_limit = limit
    return members


# ---------------------------------------------------------------------------------------------- the page's language
# Gradio's frontend (6.31, templates/frontend/assets/core-*.js `setupi18n`) picks its locale once, as the page
# starts, from `navigator.language` (then its primary subtag, then English), before any `head=` or `js=` of the app
# runs; no config key, URL or header sets it. So the language the server chose for a request (ui.language, else
# the first supported one of Accept-Language) reaches Gradio's own strings (upload widget, Chatbot buttons, toasts,
# footer) and the app's gr.I18n strings only by the page starting with a script that makes navigator.language say it.


class PageLocale:
    """ASGI middleware: the Gradio page (``GET /``) starts with ``navigator.language`` set to the language
    ``language_of(accept_language_header)`` chooses, so the page and the server speak one language.

    The page is asked for uncompressed so the script can go in after ``<head>``; it varies with Accept-Language.
    """

    def __init__(self, app: Any, language_of: Callable[[str | None], str]):
        self.app = app
        self.language_of = language_of

    @staticmethod
    def script(language: str) -> bytes:
        import json

        return (f"<script>(function(){{var l={json.dumps(language)};function d(n,v){{try{{Object.defineProperty("
                "Navigator.prototype,n,{configurable:true,get:function(){return v}})}catch(e){}}"
                "d('language',l);d('languages',[l]);})();</script>").encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        root = scope.get("root_path", "")
        path = scope.get("path", "")
        path = path[len(root):] if root and path.startswith(root) else path
        if scope["type"] != "http" or scope.get("method") != "GET" or path not in ("", "/"):
            await self.app(scope, receive, send)
            return
        accept = next((v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"accept-language"), None)
        script = self.script(self.language_of(accept))
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"accept-encoding"]
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def edited(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = b"".join(chunks)
            kept = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            if any(k.lower() == b"content-type" and v.startswith(b"text/html") for k, v in kept):
                at = body.find(b"<head>")
                body = body[: at + 6] + script + body[at + 6:] if at >= 0 else script + body
                kept.append((b"vary", b"Accept-Language"))
            await send({**start, "headers": [*kept, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        await self.app({**scope, "headers": headers}, receive, edited)


# ---------------------------------------------------------------------------------------------- the dashboard
# The operator dashboard (agent/app/dashboard.py) is a second Blocks with its own queue, mounted at /admin/dashboard.


def slow_idle_polling(demo: Any, idle_poll_s: float) -> None:
    """Let a rarely used queue look for work every ``idle_poll_s`` instead of every millisecond.

    Gradio's queue loop sleeps 1 ms between looks when it has nothing to do, and its progress loop 10 ms: ~1,100
    wake-ups a second for a queue that sees one event every second or two, on the event loop the chat streams
    from. Its events then start up to ``idle_poll_s`` later. ``Queue.sleep_when_free`` and
    ``progress_update_sleep_when_free`` are read on every pass; no public option sets them.
    """
    queue = demo._queue
    queue.sleep_when_free = idle_poll_s
    queue.progress_update_sleep_when_free = idle_poll_s
