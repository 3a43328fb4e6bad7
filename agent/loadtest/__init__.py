"""Load testing of Gradio chat apps: Gradio's queue protocol, virtual users, isolation canaries, SLOs.

Public API: :func:`agent.loadtest.runner.loadtest`, :func:`~agent.loadtest.runner.compare`,
:func:`~agent.loadtest.runner.smoke` and :func:`~agent.loadtest.runner.verdict`; the engine alone is
:func:`agent.loadtest.engine.run_workload`.
"""
