"""``/v1/models``: the document collections, one "model" each, as OpenAI clients list them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from openai.types import Model

from rag.security.auth import Identity


def add_routes(app: FastAPI, names: list[str], identify: Callable[[Request], Identity]) -> None:
    @app.get("/v1/models")
    def models(request: Request) -> dict[str, Any]:
        identify(request)
        return {"object": "list", "data": [Model(id=n, object="model", created=0, owned_by="onprem-rag").model_dump()
                                           for n in names]}
