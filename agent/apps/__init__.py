"""Serving an operator's own Gradio app: loading it (``cmw serve app.py``, ``app.py:demo``, ``pkg.module:attr``)
without letting its own ``launch()`` start a server, so that a profile's limits apply to it."""

from agent.apps.loading import AppLoadError, LoadedApp, app_traceback, load_app

__all__ = ["AppLoadError", "LoadedApp", "app_traceback", "load_app"]
