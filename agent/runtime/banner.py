"""What a starting server prints: where it listens, with which profile, limits, store and provider."""

from __future__ import annotations

from typing import Any

from agent import __version__
from agent.settings import LoadedSettings, mask_url_passwords


def display_host(host: str) -> str:
    """A host to put in a URL someone can open (a wildcard bind is reached on loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)


def provider_text(settings: Any, sim_url: str | None) -> str:
    """The default provider and where it is, for banners (a password in llm.base_url masked)."""
    from agent.settings.providers import PROVIDERS

    name = settings.llm.provider
    provider = PROVIDERS[name]
    if provider.embedded and sim_url:
        return f"{name} (simulator at {sim_url})"
    if provider.url_setting:
        return f"{name} at {mask_url_passwords(str(settings.get(provider.url_setting) or '(not set)'))}"
    return name


def print_banner(console: Any, loaded: LoadedSettings, ctx: Any, url: str, sim_url: str | None) -> None:
    from rich.panel import Panel
    from rich.table import Table

    settings = loaded.settings
    table = Table.grid(padding=(0, 2))
    table.add_row("URL", f"[bold]{url}[/]")
    table.add_row("profile", f"{loaded.profile_name} ({loaded.profile_path})")
    mode = "concurrent" if settings.enable_concurrent_processing else "sequential (master switch off)"
    table.add_row("processing", mode)
    limits = ctx.monitor.as_dict()
    table.add_row("limits", "  ".join(f"{event}={fig['limit']}" for event, fig in limits.items()))
    table.add_row("queue", f"max_size={settings.queue.max_size}  status_update_rate={settings.queue.status_update_rate}"
                  f"  max_threads={settings.server.max_threads}")
    table.add_row("store", mask_url_passwords(settings.sessions.store))
    if settings.server.app:
        table.add_row("app", settings.server.app)
    else:
        table.add_row("provider", provider_text(settings, sim_url))
    table.add_row("admin", f"{url.rstrip('/')}/admin/api/health  metrics: /metrics")
    console.print(Panel(table, title=f"cmw {__version__}", expand=False))
    for warning in loaded.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)


def print_workers_banner(console: Any, loaded: LoadedSettings, url: str, ports: list[int]) -> None:
    from rich.panel import Panel
    from rich.table import Table

    settings = loaded.settings
    table = Table.grid(padding=(0, 2))
    table.add_row("URL", f"[bold]{url}[/]  (HAProxy, sticky per Gradio session)")
    table.add_row("workers", f"{len(ports)} on 127.0.0.1 ports {', '.join(str(port) for port in ports)}")
    table.add_row("profile", f"{loaded.profile_name} ({loaded.profile_path})")
    table.add_row("store", mask_url_passwords(settings.sessions.store))
    shown = ("app", settings.server.app) if settings.server.app else ("provider", provider_text(settings, None))
    table.add_row(*shown)
    table.add_row("admin", f"{url.rstrip('/')}/admin/api/health")
    console.print(Panel(table, title=f"cmw {__version__}", expand=False))
    for warning in loaded.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
