"""`gptlab serve`: an HTTP API (OpenAI's completions shape, plus explanation traces) and a web page.

Needs the `serve` extra (fastapi, uvicorn, prometheus_client): `pip install 'gptlab[serve]'`. Importing this package
needs none of them; `create_app` imports them when first used, so `gptlab --help` works without them.
"""

from gptlab.serve.settings import ServeSettings

__all__ = ["create_app", "ServeSettings"]


def __getattr__(name):
    if name == "create_app":
        from gptlab.serve.app import create_app
        return create_app
    raise AttributeError(name)
