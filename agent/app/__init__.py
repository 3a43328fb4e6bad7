"""The web app one process serves: what an HTTP request meets, from the edge to the chat handler.

:mod:`~agent.app.asgi` builds it: :mod:`~agent.app.guard` (caps, rate limits) in front of FastAPI, which
routes ``/admin/api`` (:mod:`~agent.app.admin`), ``/metrics`` (:mod:`~agent.app.metrics`) and the mounted
Gradio Blocks (:mod:`~agent.app.ui`). Gradio's queue (:mod:`~agent.app.queue`) runs the chat handler, which
streams a reply from the provider (:mod:`~agent.app.llm`, :mod:`~agent.app.sse`) through the pacer
(:mod:`~agent.app.streaming`) into the session (:mod:`agent.sessions`). Everything that reaches into
Gradio's internals is in :mod:`~agent.app.gradio_compat`.
"""
