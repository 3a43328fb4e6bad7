"""`cmw serve` (being built: issue 3)."""

from cmw_cli.common import fail


def serve() -> None:
    """Serve the agent app (not built yet)."""
    fail("cmw serve is not built yet")
