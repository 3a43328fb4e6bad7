"""cmw's Gradio agent app: settings, sessions, LLM providers, simulator and admin API.

Importing this package is cheap; gradio and langchain load only in the modules that serve.
"""

__version__ = "0.1.0"
