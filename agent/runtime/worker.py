"""One worker of ``cmw serve --workers N`` (``python -m agent.runtime.worker``, started by the supervisor).

It serves the single-process app on the loopback socket the supervisor bound and passed down, with the
admin fan-out (:class:`~agent.app.peers.PeerAdmin`) around it, trusting the supervisor's HAProxy.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path

from agent.settings import LoadedSettings


def run_worker(loaded: LoadedSettings, sock: socket.socket, index: int, peers: list[int]) -> int:
    """Serve as worker ``index`` of ``peers`` (their ports) until a signal; the exit code."""
    from rich.console import Console

    from agent.app.admin import admin_token
    from agent.app.peers import PeerAdmin
    from agent.runtime.server import serve_on
    from agent.sessions.store import StoreError, state_dir

    console = Console(stderr=True)
    try:
        token = admin_token(loaded.settings, state_dir(loaded.settings))
    except (StoreError, OSError) as exc:
        console.print(f"[bold red]error:[/] worker {index}: {exc}", highlight=False)
        return 4

    def with_peers(app: object, ctx: object) -> PeerAdmin:
        ctx.startup_log.append(f"worker {index} of {len(peers)} (pid {os.getpid()})")  # type: ignore[attr-defined]
        return PeerAdmin(app, ctx, index, peers, token)

    # The supervisor's HAProxy (option forwardfor) reaches every worker from loopback: trust it.
    trusted = [*loaded.settings.server.trusted_proxies, "127.0.0.1"]
    name = f"worker {index} (pid {os.getpid()})"
    return serve_on(loaded, sock, console, wrap=with_peers, trusted=trusted, worker=name, processes=len(peers))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.runtime.worker", description="One cmw worker (started by "
                                     "`cmw serve --workers N`; not meant to be run by hand).")
    parser.add_argument("--plan", required=True, type=Path)
    parser.add_argument("--index", required=True, type=int)
    parser.add_argument("--fd", required=True, type=int)
    args = parser.parse_args(argv)
    from agent.settings import ConfigError, load_settings

    plan = json.loads(args.plan.read_text())
    overrides = {key: (value, "--set") for key, value in plan["overrides"].items()}
    overrides.update({"server.workers": (1, "--set"), "server.host": ("127.0.0.1", "--set")})
    sock = socket.socket(fileno=args.fd)
    overrides["server.port"] = (sock.getsockname()[1], "--set")
    try:
        loaded = load_settings(plan["profile"], overrides)
    except ConfigError as exc:
        print(f"error: worker {args.index}: {exc}", file=sys.stderr)
        return 2
    return run_worker(loaded, sock, args.index, list(plan["peers"]))


if __name__ == "__main__":
    sys.exit(main())
