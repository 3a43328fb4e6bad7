"""`cmw sim` (being built)."""

from cmw_cli.common import fail


def sim() -> None:
    """Run the OpenAI-compatible simulator (not built yet)."""
    fail("cmw sim is not built yet")
