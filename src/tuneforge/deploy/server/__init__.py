"""The OpenAI-compatible HTTP server for a run: app (routes, errors), schemas, engine, batcher."""

from tuneforge.deploy.server.app import create_app
from tuneforge.deploy.server.engine import Limits

__all__ = ["Limits", "create_app"]
