"""`cmw proxy-config`: the HAProxy configuration for cmw workers running on several hosts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cmw_cli.common import fail


def proxy_config(
    upstream: Annotated[
        list[str],
        typer.Option("--upstream", "-u", metavar="URL", help="A worker's URL, e.g. http://10.0.0.5:7860 (repeat)."),
    ],
    bind: Annotated[str, typer.Option(help="Interface the proxy listens on.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="Port the proxy listens on.", min=1, max=65_535)] = 80,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write to this file instead of stdout.")] = None,
) -> None:
    """Print an HAProxy config that routes each Gradio session to one worker, across hosts.

    Every worker must use the same Redis store (sessions.store = "redis://...") so a session survives
    its worker's restart, and the same admin token, and list this proxy's address in
    server.trusted_proxies (the proxy forwards each client's address for the per-client rate limits).
    Routing hashes the Gradio session hash, found in the join body, the event-stream query and the
    heartbeat path, so it is sticky for browsers, gradio_client and raw-protocol clients alike; a host
    that fails its health check hands its sessions to the others (consistent hashing moves only those).

    \b
    Example usage:
        cmw proxy-config -u http://10.0.0.5:7860 -u http://10.0.0.6:7860 > /etc/haproxy/haproxy.cfg
        cmw proxy-config -u http://app1:7860 -u http://app2:7860 --port 8080 -o haproxy.cfg
    """
    from agent.runtime.proxy import ProxyError, haproxy_config, parse_upstream

    try:
        upstreams = [parse_upstream(url) for url in upstream]
        text = haproxy_config(upstreams, bind_host=bind, bind_port=port, balance="consistent", health_checks=True)
    except ProxyError as exc:
        fail(str(exc))
    if len(set(upstreams)) != len(upstreams):
        fail("--upstream: the same worker is listed twice")
    if out is None:
        typer.echo(text, nl=False)
        return
    try:
        out.write_text(text)
    except OSError as exc:
        fail(f"--out {out}: cannot write: {exc.strerror}")
    typer.echo(f"wrote {out} ({len(upstreams)} upstreams); check it with: haproxy -c -f {out}", err=True)
