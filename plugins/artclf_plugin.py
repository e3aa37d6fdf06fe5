"""artclf's Airflow plugin: the Artworks page in the navigation and the catalogue API.

Airflow imports this file in every one of its processes (scheduler, triggerer, workers,
API server), so it stays light: the FastAPI app (``artclf_airflow.web``, which imports the
catalogue code) is built on the first HTTP request, in the API server only. Everything
else under ``plugins/artclf_airflow/`` is imported by the DAGs and the triggerer by name
(``.airflowignore`` keeps the plugin manager out of it).
"""

from __future__ import annotations

import threading

from airflow.plugins_manager import AirflowPlugin

PREFIX = "/artclf"


class LazyApp:
    """An ASGI app that builds :data:`artclf_airflow.web.app` when first called."""

    def __init__(self) -> None:
        self._app = None
        self._lock = threading.Lock()

    async def __call__(self, scope, receive, send) -> None:
        if self._app is None:
            with self._lock:
                if self._app is None:
                    from artclf_airflow.web import app

                    self._app = app
        await self._app(scope, receive, send)


class ArtclfPlugin(AirflowPlugin):
    name = "artclf"
    fastapi_apps = [{"app": LazyApp(), "url_prefix": PREFIX, "name": "artclf catalogue"}]
    external_views = [
        {
            "name": "Artworks",
            "href": f"{PREFIX}/",
            "destination": "nav",
            "url_route": "artworks",
            "category": "browse",
        }
    ]
