"""Each service's OpenAPI 3 document: its own ``openapi.yaml`` plus what every service shares.

A service describes only its API (``services/<name>/openapi.yaml``: info and paths); this
module adds the common parts once, so the four documents cannot drift apart: the bearer
token scheme required by default, the open ``/health``, ``/ready``, ``/metrics`` and
``/openapi.json`` paths, the error body and the 401/403 answers of every guarded operation.
Served at ``/openapi.json`` by :func:`shared.service.base_app`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

VERSION = "3.0.3"
ERROR = {"$ref": "#/components/schemas/Error"}
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _open(summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    return {"get": {"summary": summary, "security": [], "tags": ["operations"], "responses": responses}}


STATUS = {"type": "object", "additionalProperties": True}

COMMON_PATHS: dict[str, Any] = {
    "/health": _open(
        "Liveness: the process answers and no consumer is stalled (no token).",
        {"200": _json("alive", STATUS), "503": _json("a consumer is stalled", STATUS)},
    ),
    "/ready": _open(
        "Readiness with the reason of every check (no token).",
        {"200": _json("ready", STATUS), "503": _json("not ready; the body says why", STATUS)},
    ),
    "/metrics": _open(
        "Prometheus metrics (no token).",
        {"200": {"description": "exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}},
    ),
    "/openapi.json": _open("This document (no token).", {"200": _json("OpenAPI 3 document", STATUS)}),
}

COMMON_COMPONENTS: dict[str, Any] = {
    "securitySchemes": {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token from FLOWWATCH_API_TOKENS / FLOWWATCH_API_TOKENS_FILE; roles "
            "viewer < operator < admin.",
        }
    },
    "schemas": {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string", "description": "Why the request was refused."}},
        }
    },
    "responses": {
        "Unauthorized": _json("no token, an unknown token, or no token configured at all (closed)", ERROR),
        "Forbidden": _json("the token's role is too low", ERROR),
    },
}


def document(path: Path) -> dict[str, Any]:
    """The full document: the service's file merged with the common paths, components and auth answers."""
    own = yaml.safe_load(Path(path).read_text())
    doc: dict[str, Any] = {"openapi": VERSION, **copy.deepcopy(own)}
    doc["security"] = [{"bearer": []}]
    paths = doc.setdefault("paths", {})
    for op in (op for item in paths.values() for m, op in item.items() if m in METHODS):
        if op.get("security") != []:
            responses = op.setdefault("responses", {})
            responses.setdefault("401", {"$ref": "#/components/responses/Unauthorized"})
            responses.setdefault("403", {"$ref": "#/components/responses/Forbidden"})
    for name, item in COMMON_PATHS.items():
        paths.setdefault(name, copy.deepcopy(item))
    components = doc.setdefault("components", {})
    for section, entries in COMMON_COMPONENTS.items():
        components.setdefault(section, {}).update(copy.deepcopy(entries))
    return doc
