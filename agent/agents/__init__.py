"""The agent behind the chat: cmw's built-in LangChain tool-calling agent, or an operator's own (``agent.factory``).

Whatever the agent, a turn is a stream of events the app shows and stores:

- :class:`~agent.app.llm.Delta` — reply text as it arrives (``text``), and the completion token count;
- :class:`~agent.agents.steps.Step` — a tool call: yielded when it starts (``pending``) and again when it ends
  (``done`` or ``error``, with its duration and a bounded result).

Steps are shown as collapsible messages above the streamed answer and kept in the session's history, so
the model sees each tool call with its result on the next turns.
"""
