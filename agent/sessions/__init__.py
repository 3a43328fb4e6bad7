"""Conversations: which one a request belongs to, its life in memory, and where it is stored.

:mod:`~agent.sessions.identity` derives conversation ids and verifies restore tokens,
:mod:`~agent.sessions.session` is one conversation in memory, :mod:`~agent.sessions.manager` the table
of them (memory cap, idle expiry, retention), :mod:`~agent.sessions.writer` applies store writes off
the event loop, and :mod:`~agent.sessions.store` keeps them in SQLite, Redis or memory.
"""
