"""The alerts service's Faust app: `create_app(settings)` and the module-level `app` for the CLI."""

from __future__ import annotations

import faust

from shared.service import base_app
from shared.settings import Settings


def create_app(settings: Settings | None = None) -> faust.App:
    settings = settings or Settings.from_env("alerts")
    app, _state = base_app(settings)
    return app


app = create_app()
