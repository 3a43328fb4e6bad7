"""Load testing of Gradio chat apps: Gradio's queue protocol, virtual users, isolation canaries, SLOs.

Public API: :func:`agent.loadtest.runner.loadtest`, :func:`~agent.loadtest.runner.compare`,
:func:`~agent.loadtest.runner.smoke` and :func:`~agent.loadtest.runner.verdict`, over the typed results of
:mod:`agent.loadtest.results` (``to_dict()`` is the JSON of ``cmw loadtest --json``); the engine alone is
:func:`agent.loadtest.engine.run_workload` with a :class:`agent.loadtest.workload.Workload`.
"""
