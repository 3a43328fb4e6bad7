"""`cmw serve`: turn flags into settings and hand them to agent.runtime.run."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from agent.settings.providers import PROVIDER_NAMES
from cmw_cli.common import Exit, ProfileOption, SetOption, fail, load_or_exit


def serve(
    app: Annotated[
        str | None,
        typer.Argument(help="Your Gradio app: path/to/app.py[:attr] or module:attr [default: server.app, else cmw's "
                            "own agent app].", show_default=False),
    ] = None,
    profile: ProfileOption = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind [default: server.host, 127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: server.port, 7860; 0 = any free port].")] = None,
    llm: Annotated[
        str | None,
        typer.Option(
            "--llm", help=f"Provider ({', '.join(PROVIDER_NAMES)}) or an OpenAI-compatible base URL (= custom there)."
        ),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Default model [default: the provider's].")] = None,
    workers: Annotated[
        str | None,
        typer.Option(help="App processes behind HAProxy, or 'auto' (one per core) [default: server.workers, 1]."),
    ] = None,
    agent: Annotated[
        str | None,
        typer.Option("--agent", help="Your own agent: module:attr or path/to/file.py:attr [default: agent.factory, "
                                     "else the built-in tool-calling agent]."),
    ] = None,
    set_: SetOption = None,
) -> None:
    """Serve the agent app, or your own Gradio app, with the queue and concurrency limits of a profile.

    \b
    Example usage:
        cmw serve                          # balanced profile, embedded simulator, http://127.0.0.1:7860
        cmw serve -p high-performance --port 8080
        cmw serve --llm http://127.0.0.1:8000/v1 --model qwen2.5
        cmw serve --set events.chat_concurrency_limit=8
        cmw serve --workers 2 --set sessions.store=redis://127.0.0.1:6379/0
        cmw serve --agent examples/word_stats_agent.py:agent
        cmw serve examples/chat_app.py -p balanced      # any Gradio app
        cmw serve app.py:demo --set events.limits.generate=4
    """
    flags: dict[str, Any] = {}
    if host is not None:
        flags["server.host"] = (host, "--host")
    if port is not None:
        flags["server.port"] = (port, "--port")
    if llm is not None:
        flags["llm.provider"] = (llm, "--llm")  # a base URL: the settings model makes it the custom provider there
    if model is not None:
        flags["llm.model"] = (model, "--model")
    if workers is not None:
        flags["server.workers"] = (_workers(workers), "--workers")
    if agent is not None:
        flags["agent.factory"] = (agent, "--agent")
    if app is not None:
        flags["server.app"] = (app, "APP")
    loaded = load_or_exit(profile, set_, flags, show_warnings=False)
    if loaded.settings.agent.factory:  # a bad --agent is exit 2 now, before the web stack is imported
        from agent.agents.custom import load
        from agent.settings import ConfigError

        try:
            load(loaded.settings.agent.factory)
        except ConfigError as exc:
            fail(str(exc))

    from agent.runtime import run as run_server

    code = run_server(loaded)
    if code:
        raise typer.Exit(code)
    raise typer.Exit(int(Exit.OK))


def _workers(value: str) -> int:
    """``auto`` is one worker per core (at most 64, the setting's bound)."""
    if value == "auto":
        import os

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, min(64, cores))
    try:
        return int(value)
    except ValueError:
        fail(f"--workers {value!r}: expected a number of processes (1–64) or 'auto'")
