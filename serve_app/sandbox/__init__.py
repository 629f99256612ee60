"""The sandbox upstream: a local server speaking the Anthropic and OpenAI chat APIs.

It answers deterministically, so the real provider adapters, the tests and the load
tests can run without a provider key. See DESIGN.md, "The sandbox upstream".
"""

from serve_app.sandbox.runner import RunningSandbox, serve_until_signalled, start_sandbox
from serve_app.sandbox.server import create_app

__all__ = ["RunningSandbox", "create_app", "serve_until_signalled", "start_sandbox"]
