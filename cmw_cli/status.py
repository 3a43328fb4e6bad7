"""`cmw status` (being built)."""

from cmw_cli.common import fail


def status() -> None:
    """Health and queue figures of a running server (not built yet)."""
    fail("cmw status is not built yet")
