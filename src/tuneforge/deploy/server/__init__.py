"""The OpenAI-compatible HTTP server for a run: app (routes, errors), schemas, engine, batcher."""

from tuneforge.deploy.limits import Limits
from tuneforge.deploy.server.app import create_app

__all__ = ["Limits", "create_app"]
