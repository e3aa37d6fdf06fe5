"""The catalogue's HTTP API and the Artworks page, as one FastAPI app.

Airflow mounts it in its API server (``plugins/artclf_airflow/web.py``, prefix ``/artclf``),
but nothing here imports Airflow: authentication comes in as an :class:`Access`, two FastAPI
dependencies that return the caller's name (one for reading, one for changing labels). That
keeps the app testable without Airflow and keeps the one rule in one place: **no route
without one of the two** (:func:`create_app` checks it at start-up, so a route added later
without authentication fails every test instead of shipping).

Routes (under the mount prefix):

=====================================  ==========================================  ======
``GET  /``                             the Artworks page (static, no CDN)          read
``GET  /static/{name}``                its script and style sheet                  read
``GET  /api/openapi.json``             the API's OpenAPI schema                    read
``POST /api/classify``                 multipart ``image``: label, probabilities,  read
                                       k neighbours (nothing is catalogued)
``GET  /api/artworks``                 filtered, keyset-paginated catalogue        read
``GET  /api/artworks/{id}``            row, probabilities, duplicates, neighbours  read
``GET  /api/artworks/{id}/thumbnail``  WebP, made once and kept under thumbnails/  read
``GET  /api/artworks/{id}/image``      the lake object itself                      read
``GET  /api/review``                   the review queue (of one ``collection``)    read
``POST /api/review/{id}``              confirm or correct a label                  edit
``GET  /api/collections``              each collection and its artworks            read
``GET  /api/lake``                     objects by state and reason, problems       read
``GET  /api/models``                   versions, active, gate decisions            read
``GET  /api/models/{v}/plots/{name}``  a plot or atlas the version recorded        read
=====================================  ==========================================  ======

Pictures are served only for artworks the catalogue knows, looked up by id: no request
names a bucket key, so there is no path to traverse.
"""

# No "from __future__ import annotations": the route signatures name Reader and Editor,
# aliases local to create_app, which FastAPI can only see as evaluated annotations.
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel

from artclf_core import CLASSES
from artclf_core.catalogue import browse, db, registry
from artclf_core.config import Settings
from artclf_core.images import thumbnails
from artclf_core.images.decode import DEFAULT_LIMITS, Limits
from artclf_core.lake import s3 as s3lib
from artclf_core.model import plots

STATIC = Path(__file__).parent / "static"
#: The page's files, by the name the page asks for: nothing else is served from disk.
STATIC_FILES = {"app.js": "text/javascript", "app.css": "text/css"}
CONTENT_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "TIFF": "image/tiff",
    "GIF": "image/gif",
    "BMP": "image/bmp",
}
#: Thumbnails and lake objects never change under an id (a new drop is a new artwork).
IMMUTABLE = "private, max-age=31536000, immutable"


@dataclass(frozen=True)
class Caller:
    """Who is asking: the name recorded with a label change, and whether they may make one."""

    name: str
    can_edit: bool


@dataclass(frozen=True)
class Access:
    """Authentication and authorization, as FastAPI dependencies returning a :class:`Caller`.

    ``reader`` admits any authenticated user allowed to see the catalogue; ``editor`` only
    those allowed to change labels. Each raises ``HTTPException`` (401 / 403) otherwise.
    ``login_url`` (optional) returns where a browser without a session is sent from the page.
    """

    reader: Callable[..., Any]
    editor: Callable[..., Any]
    login_url: Callable[[], str] | None = None


class LabelChange(BaseModel):
    """Body of ``POST /api/review/{id}``: the label a curator confirms (or corrects to)."""

    label: str


class Backend:
    """What the routes share: settings (resolved on first use), an S3 client and the model
    for classification (loaded on the first ``classify``, reloaded when another version
    becomes active: the page never pays TensorFlow's start-up unless someone asks)."""

    def __init__(self, settings: Callable[[], Settings]) -> None:
        self._settings_source = settings
        self._settings: Settings | None = None
        self._s3: Any = None
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = self._settings_source()
        return self._settings

    def connect(self) -> Any:
        return db.connect(self.settings.db_url)

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = s3lib.client(self.settings, max_pool=16)
        return self._s3

    def model(self, active: str | None) -> Any:
        from artclf_core.catalogue import ask

        with self._lock:
            if self._model is None or (active and self._model.version != active):
                self._model = ask.load_model(self.settings)
            return self._model


def create_app(
    access: Access,
    settings: Callable[[], Settings] = Settings.from_env,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> FastAPI:
    """The app; ``settings`` is called once, on the first request that needs the stack."""
    backend = Backend(settings)
    app = FastAPI(
        title="artclf",
        summary="The art image catalogue: classify by image, browse, review, lake health.",
        docs_url=None,  # Swagger UI loads from a CDN; the schema is served authenticated
        redoc_url=None,
        openapi_url=None,
    )
    Reader = Annotated[Caller, Depends(access.reader)]
    Editor = Annotated[Caller, Depends(access.editor)]

    @app.exception_handler(HTTPException)
    async def _login_redirect(request: Request, exc: HTTPException) -> Response:
        # A browser opening the page without a session goes to the login, not to JSON.
        page = request.url.path.rstrip("/") == request.scope.get("root_path", "").rstrip("/")
        if exc.status_code == 401 and page and access.login_url:
            here = str(request.url.path)
            return RedirectResponse(f"{access.login_url()}?next={here}", status_code=303)
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)

    @app.get("/", include_in_schema=False)
    def page(_user: Reader) -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str, _user: Reader) -> FileResponse:
        if name not in STATIC_FILES:
            raise HTTPException(404, "no such file")
        return FileResponse(
            STATIC / name, media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"}
        )

    @app.get("/api/openapi.json", include_in_schema=False)
    def openapi(_user: Reader) -> dict:
        return app.openapi()

    @app.get("/api/whoami", summary="The caller and whether they may change labels")
    def whoami(user: Reader) -> dict:
        return {"user": user.name, "can_edit": user.can_edit}

    @app.post("/api/classify", summary="Label, probabilities and neighbours of an uploaded image")
    async def classify_image(
        _user: Reader,
        image: Annotated[UploadFile, File(description="an image file, as ingest accepts")],
        k: Annotated[int, Query(ge=1, le=50)] = 5,
        any_label: bool = False,
    ) -> dict:
        data = await image.read(limits.max_bytes + 1)
        if len(data) > limits.max_bytes:
            raise HTTPException(413, f"upload over the {limits.max_bytes} byte limit")
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(
            _classify, backend, image.filename or "upload", data, k, not any_label, limits
        )

    @app.get("/api/artworks", summary="The catalogue, newest first (keyset pagination)")
    def artworks(
        _user: Reader,
        label: str | None = None,
        model_version: str | None = None,
        min_probability: Annotated[float | None, Query(ge=0, le=1)] = None,
        max_probability: Annotated[float | None, Query(ge=0, le=1)] = None,
        dropped_after: datetime | None = None,
        dropped_before: datetime | None = None,
        collection: str | None = None,
        before_id: int | None = None,
        limit: Annotated[int, Query(ge=1, le=browse.MAX_PAGE)] = 60,
    ) -> dict:
        where = browse.ArtworkFilter(
            label,
            model_version,
            min_probability,
            max_probability,
            dropped_after,
            dropped_before,
            collection,
        )
        with backend.connect() as conn:
            try:
                return browse.list_artworks(conn, where, before_id=before_id, limit=limit)
            except ValueError as exc:
                raise HTTPException(422, str(exc)) from exc

    @app.get("/api/artworks/{artwork_id}", summary="One artwork, its duplicates and neighbours")
    def artwork(artwork_id: int, _user: Reader, k: Annotated[int, Query(ge=1, le=50)] = 5) -> dict:
        with backend.connect() as conn:
            row = browse.artwork(conn, artwork_id, k=k)
        if row is None:
            raise HTTPException(404, f"no artwork with id {artwork_id}")
        return row

    @app.get("/api/artworks/{artwork_id}/thumbnail", summary="A small WebP of the artwork")
    def thumbnail(artwork_id: int, request: Request, _user: Reader) -> Response:
        obj = _known_object(backend, artwork_id)
        tag = thumbnails.etag(obj["sha256"])
        headers = {"ETag": tag, "Cache-Control": IMMUTABLE}
        if request.headers.get("if-none-match") == tag:
            return Response(status_code=304, headers=headers)
        webp = browse.thumbnail(backend.s3, obj)
        return Response(webp, media_type="image/webp", headers=headers)

    @app.get("/api/artworks/{artwork_id}/image", summary="The artwork's object in the lake")
    def image(artwork_id: int, _user: Reader) -> Response:
        obj = _known_object(backend, artwork_id)
        data = s3lib.get_bytes(backend.s3, obj["bucket"], obj["key"])
        return Response(
            data,
            media_type=CONTENT_TYPES.get(obj["format"], "application/octet-stream"),
            headers={"Cache-Control": IMMUTABLE, "ETag": f'"{obj["sha256"][:32]}"'},
        )

    @app.get("/api/review", summary="Predictions below the review threshold, least sure first")
    def review(
        _user: Reader,
        limit: Annotated[int, Query(ge=1, le=browse.MAX_PAGE)] = 60,
        collection: str | None = None,
    ) -> dict:
        with backend.connect() as conn:
            return browse.review_queue(conn, limit=limit, collection=collection)

    @app.get("/api/collections", summary="Each collection and its artworks, largest first")
    def collections(_user: Reader) -> list[dict]:
        with backend.connect() as conn:
            return browse.collections(conn)

    @app.post("/api/review/{artwork_id}", summary="Confirm or correct a label (edit role)")
    def confirm(artwork_id: int, change: LabelChange, user: Editor) -> dict:
        if change.label not in CLASSES:
            raise HTTPException(
                422, f"unknown label {change.label!r}; expected one of {', '.join(CLASSES)}"
            )
        with backend.connect() as conn:
            try:
                return browse.confirm_label(conn, artwork_id, change.label, user.name)
            except Exception as exc:
                if getattr(exc, "sqlstate", None) == "P0002":  # no_data_found
                    raise HTTPException(404, f"no artwork with id {artwork_id}") from exc
                raise

    @app.get("/api/lake", summary="Objects by state and reason; quarantined and failed ones")
    def lake(_user: Reader, limit: Annotated[int, Query(ge=1, le=browse.MAX_PAGE)] = 100) -> dict:
        with backend.connect() as conn:
            return browse.lake(conn, limit=limit)

    @app.get("/api/models", summary="Model versions, the active one, gate decisions")
    def models(_user: Reader) -> list[dict]:
        with backend.connect() as conn:
            return browse.models(conn)

    @app.get("/api/retrain-runs", summary="Retraining runs: verdict, reasons, training set")
    def retrain_runs(
        _user: Reader, limit: Annotated[int, Query(ge=1, le=browse.MAX_PAGE)] = 20
    ) -> list[dict]:
        with backend.connect() as conn:
            return browse.retrain_runs(conn, limit=limit)

    @app.get("/api/models/{version}/plots/{name}", summary="A plot or atlas a version recorded")
    def plot(version: str, name: str, _user: Reader) -> Response:
        with backend.connect() as conn:
            url = browse.model_plot(conn, version, name)
            metrics = browse.model_metrics_for_plots(conn, version) if url is None else None
        if url is None and (png := plots.derived(metrics, name, title=version)) is not None:
            return Response(
                png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"}
            )
        if url is None or not url.startswith("s3://"):
            raise HTTPException(404, f"model {version} recorded no plot {name!r}")
        bucket, _, key = url[5:].partition("/")
        data = s3lib.get_bytes(backend.s3, bucket, key)
        kind = "text/html" if key.endswith(".html") else "image/png"
        return Response(data, media_type=kind, headers={"Cache-Control": "private, max-age=300"})

    _require_auth_everywhere(app, access)
    return app


def _known_object(backend: Backend, artwork_id: int) -> dict:
    with backend.connect() as conn:
        obj = browse.artwork_object(conn, artwork_id)
    if obj is None:
        raise HTTPException(404, f"no artwork with id {artwork_id}")
    return obj


def _classify(
    backend: Backend, name: str, data: bytes, k: int, same_label: bool, limits: Limits
) -> dict:
    from artclf_core.catalogue import ask

    with backend.connect() as conn:
        model = backend.model(registry.active_version(conn))
        conn.commit()
        answer = ask.classify(
            model, conn, [(name, data)], k=k, same_label=same_label, limits=limits
        )[0]
    if answer.reason:
        raise HTTPException(422, {"reason": answer.reason, "message": answer.message})
    return answer.as_dict()


def _require_auth_everywhere(app: FastAPI, access: Access) -> None:
    """Refuse to build an app with a route that neither dependency guards."""
    guards = {access.reader, access.editor}
    for route in app.routes:
        if not isinstance(route, APIRoute):
            continue
        used = {d.call for d in route.dependant.dependencies}
        if not used & guards:
            raise RuntimeError(f"route {route.path} has no authentication dependency")
