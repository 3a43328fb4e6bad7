"""`cmw loadtest` and `cmw smoke` (being built)."""

from cmw_cli.common import fail


def loadtest() -> None:
    """Load-test a Gradio chat app (not built yet)."""
    fail("cmw loadtest is not built yet")


def smoke() -> None:
    """CI preset (not built yet)."""
    fail("cmw smoke is not built yet")
