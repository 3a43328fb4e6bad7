"""The process runtime: how many processes serve the app, on which sockets, and how they stop.

:func:`run` is what ``cmw serve`` and ``python -m agent`` call. Like uvicorn's ``run`` choosing between
its ``Server`` and ``Multiprocess``, it serves in this process (:mod:`agent.runtime.server`) or, with
``server.workers > 1``, supervises worker processes behind HAProxy (:mod:`agent.runtime.supervisor`,
:mod:`agent.runtime.worker`, :mod:`agent.runtime.proxy`).
"""

from __future__ import annotations

from typing import Any

from agent.settings import LoadedSettings


def run(loaded: LoadedSettings, *, console: Any = None) -> int:
    """Serve ``loaded`` until SIGINT/SIGTERM; the process exit code (0, 2 bad settings, 4 cannot start)."""
    from rich.console import Console

    console = console or Console(stderr=True)
    if loaded.settings.server.workers > 1:
        from agent.runtime.supervisor import supervise

        return supervise(loaded, console=console)
    from agent.runtime.server import serve

    return serve(loaded, console=console)
