"""What every route of the server shares: its limits, its models and its workers, with the checks on them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from gptlab.serve.engines import Engines
from gptlab.serve.errors import APIError
from gptlab.serve.limits import Gate
from gptlab.serve.metrics import Metrics
from gptlab.serve.registry import ModelRegistry
from gptlab.serve.settings import ServeSettings


@dataclass
class ServeState:
    """One per app (on `app.state.serve`); the routes get it as a FastAPI dependency."""

    settings: ServeSettings
    registry: ModelRegistry
    gate: Gate
    engines: Engines
    metrics: Metrics

    @property
    def in_flight(self) -> int:
        """Requests admitted and not finished: on the gate's workers and in the engines."""
        return self.gate.in_flight + self.engines.in_flight

    def model_name(self, requested: str | None) -> str:
        """The model a request names, or the only one served; raised before the request takes a worker."""
        if requested:
            self.registry.path_of(requested)  # ModelNotFound -> 404
            return requested
        names = self.registry.names()
        if len(names) == 1:
            return names[0]
        folder = self.registry.root.name
        raise APIError(400, f"model is required: pick one of {names[:20]} (GET /v1/models)" if names
                       else f"no models in {folder}/: train one with `gptlab train --out {folder}/NAME`",
                       param="model")

    def check_prompt(self, prompt: str, param: str = "prompt") -> None:
        limit = self.settings.max_prompt_chars
        if len(prompt) > limit:
            raise APIError(400, f"{param} has {len(prompt)} characters, more than this server's limit of "
                                f"{limit}: shorten it", param=param)

    def model_card(self, name: str) -> dict[str, Any]:
        """OpenAI's model object, with what config.json says under "gptlab" (blocking: reads the disk)."""
        info = self.registry.info(name)
        return {"id": name, "object": "model", "created": info.get("created", 0), "owned_by": "gptlab",
                "gptlab": {k: v for k, v in info.items() if k not in ("id", "created")}}


def serve_state(request: Request) -> ServeState:
    """The state `create_app` put on the app (a FastAPI dependency of the routes)."""
    return request.app.state.serve
