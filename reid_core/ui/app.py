"""The search page's web application (Starlette): routes that wire the request to the catalog
of models, the index shelf, the galleries and the reports, and render server-side HTML.

Nothing from a request reaches the file system unchecked: gallery images are served only when
the gallery's manifest lists them (inside its dataset folder), report files only from the
reports folder and only as PNG or HTML; uploads are size-capped while they stream in, then
decoded only as JPEG, PNG, WebP or BMP under a pixel limit. Actions that change the registry
exist only when the operator has set a token, and each request must carry it.
"""

from __future__ import annotations

import hmac
import logging
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from reid_core.config import ReidConfig
from reid_core.data.errors import DatasetError
from reid_core.serving.query import search_filtered
from reid_core.serving.uploads import UploadError, check_upload_size, decode_upload
from reid_core.ui.catalog import ModelCatalog, ModelChoiceError, ModelVersion
from reid_core.ui.galleries import Gallery, UnknownImageError
from reid_core.ui.jobs import Job, Jobs
from reid_core.ui.reports import EvaluationReports, UnknownReportError
from reid_core.ui.shelf import IndexShelf

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
TOKEN_ENV = "REID_UI_TOKEN"
MIN_TOKEN_LENGTH = 16
QUERIES_PER_PAGE = 24
MAX_FORM_BYTES = 4096
# the page's own files only; report.html (inline style, embedded images) gets its own
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox"


@dataclass
class UiState:
    """Everything the routes use; made once by `create_app`."""

    config: ReidConfig
    catalog: ModelCatalog
    shelf: IndexShelf
    galleries: dict[str, Gallery]
    reports: EvaluationReports
    jobs: Jobs
    token: str | None  # the operator's token; None: no actions that change the registry


def create_app(
    config: ReidConfig, reports: Path, catalog: ModelCatalog, token: str | None = None
) -> Starlette:
    """The application over `config.ui`'s galleries, the registered versions `catalog` lists
    and the evaluation reports under `reports`."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(
            f"{TOKEN_ENV} must be at least {MIN_TOKEN_LENGTH} characters (it guards promote "
            "and rollback)"
        )
    ui = config.ui
    state = UiState(
        config=config,
        catalog=catalog,
        shelf=IndexShelf(ui.workdir / "indexes", config.index),
        galleries={name: Gallery(name, g.dataset, g.manifest) for name, g in ui.galleries.items()},
        reports=EvaluationReports(reports),
        jobs=Jobs(),
        token=token or None,
    )
    routes = [
        Route("/", search_page),
        Route("/api/index", index_status),
        Route("/api/search", upload_search, methods=["POST"]),
        Route("/image/{gallery}/{path:path}", gallery_image),
        Route("/models", models_page),
        Route("/models/rollback", rollback_action, methods=["POST"]),
        Route("/models/{version:int}/champion", champion_action, methods=["POST"]),
        Route("/reports", reports_page),
        Route("/reports/{model}", report_page),
        Route("/reports/{model}/file/{path:path}", report_file),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=_allowed_hosts(ui.host))]
    app = Starlette(routes=routes, middleware=middleware)
    app.state.ui = state
    app.add_middleware(_SecurityHeaders)
    return app


templates = Jinja2Templates(directory=HERE / "templates")


def _state(request: Request) -> UiState:
    return request.app.state.ui


def _render(request: Request, name: str, context: dict, status: int = 200) -> Response:
    state = _state(request)
    base = {"actions": state.token is not None, "runtime": state.catalog.runtime}
    return templates.TemplateResponse(request, name, base | context, status_code=status)


def _int(value: str | None, default: int | None = None) -> int | None:
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        return default


# ---- search -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Search:
    """What a search request asks for, read from its query string."""

    gallery: Gallery
    model: ModelVersion
    k: int
    camera: int | None  # only this camera's gallery items
    exclude_same: bool  # without items of the query's camera
    query_camera: int | None  # the query's camera, when the user says it (uploads)

    @classmethod
    def read(cls, request: Request) -> _Search:
        state, params = _state(request), request.query_params
        name = params.get("gallery") or next(iter(state.galleries))
        if name not in state.galleries:
            raise UnknownImageError(f"no gallery {name!r} (known: {', '.join(state.galleries)})")
        model = state.catalog.choose(_int(params.get("model")))
        k = min(max(_int(params.get("k"), state.config.ui.top_k) or 1, 1), 200)
        return cls(
            state.galleries[name],
            model,
            k,
            _int(params.get("camera")),
            params.get("exclude_same") == "on",
            _int(params.get("query_camera")),
        )

    @property
    def job_key(self) -> str:
        """The background job that builds this search's index."""
        return f"{self.gallery.name}/{self.model.name}-v{self.model.version}"

    def form(self) -> dict[str, object]:
        return {
            "gallery": self.gallery.name,
            "model": self.model.version,
            "k": self.k,
            "camera": "" if self.camera is None else self.camera,
            "exclude_same": self.exclude_same,
            "query_camera": "" if self.query_camera is None else self.query_camera,
        }


def _ready_index(state: UiState, search: _Search) -> tuple[object | None, Job | None]:
    """The index of the search's gallery for its model, or the job that is building it."""
    identity = state.catalog.identity(search.model)
    index = state.shelf.find(search.gallery.name, identity)
    if index is not None:
        return index, None

    def build(job: Job) -> None:
        embedder = state.catalog.embedder(search.model)
        state.shelf.build(search.gallery, identity, embedder, job.progress)

    title = (
        f"indexing gallery {search.gallery.name} with {search.model.name} v{search.model.version}"
    )
    return None, state.jobs.start(search.job_key, title, build)


def _matches(state: UiState, search: _Search, index, image, pid=None, camid=None):
    embedder = state.catalog.embedder(search.model)
    feature = embedder.embed(image.transpose(2, 0, 1)[None])
    query_camera = camid if camid is not None else search.query_camera
    return search_filtered(
        index,
        feature,
        search.k,
        camera=search.camera,
        exclude_camera=query_camera if search.exclude_same else None,
        query_pid=pid,
        query_camid=query_camera,
    )


def search_page(request: Request) -> Response:
    state = _state(request)
    try:
        search = _Search.read(request)
        versions = state.catalog.versions()
        queries = search.gallery.split("query")
        cameras = search.gallery.cameras()
    except (ModelChoiceError, UnknownImageError, FileNotFoundError, DatasetError) as err:
        return _render(request, "error.html", {"message": str(err), "title": "Search"}, 404)
    index, job = _ready_index(state, search)
    page = max(_int(request.query_params.get("page"), 0) or 0, 0)
    pages = max((len(queries) + QUERIES_PER_PAGE - 1) // QUERIES_PER_PAGE, 1)
    page = min(page, pages - 1)
    rows = range(page * QUERIES_PER_PAGE, min((page + 1) * QUERIES_PER_PAGE, len(queries)))
    picked = _int(request.query_params.get("query"))
    query = matches = None
    if picked is not None and 0 <= picked < len(queries):
        query = {
            "row": picked,
            "path": str(queries.paths[picked]),
            "pid": int(queries.pids[picked]),
            "camid": int(queries.camids[picked]),
        }
        if index is not None:
            from reid_core.data.images import decode_resized

            embedder = state.catalog.embedder(search.model)
            image = decode_resized(
                search.gallery.image(query["path"]), embedder.height, embedder.width
            )
            matches = _matches(state, search, index, image, query["pid"], query["camid"])
    context = {
        "title": "Search",
        "search": search,
        "form": search.form(),
        "versions": versions,
        "galleries": list(state.galleries),
        "cameras": cameras,
        "index": index,
        "job": job.as_json() if job else None,
        "queries": [
            {"row": r, "path": str(queries.paths[r]), "pid": int(queries.pids[r])} for r in rows
        ],
        "page": page,
        "pages": pages,
        "query": query,
        "matches": matches,
        "max_upload_mb": state.config.ui.max_upload_mb,
    }
    return _render(request, "search.html", context)


def index_status(request: Request) -> Response:
    """JSON: the index of a gallery for a model is ready, or how far its build got."""
    state = _state(request)
    try:
        search = _Search.read(request)
    except (ModelChoiceError, UnknownImageError) as err:
        return JSONResponse({"state": "failed", "message": str(err)}, 404)
    job = state.jobs.get(search.job_key)
    if job is not None:
        return JSONResponse(job.as_json())
    ready = state.shelf.find(search.gallery.name, state.catalog.identity(search.model))
    return JSONResponse({"key": search.job_key, "state": "done" if ready else "absent"})


async def upload_search(request: Request) -> Response:
    """Search with the image in the request body; answers an HTML fragment of results."""
    state = _state(request)
    limit = int(state.config.ui.max_upload_mb * 2**20)
    try:
        search = await run_in_threadpool(_Search.read, request)  # may ask the registry
        body = await _capped_body(request, limit)
    except UploadError as err:
        return _fragment(request, str(err), 413)
    except (ModelChoiceError, UnknownImageError) as err:
        return _fragment(request, str(err), 404)
    return await run_in_threadpool(_search_bytes, request, state, search, body, limit)


async def _capped_body(request: Request, max_bytes: int) -> bytes:
    """The request's body, refused (UploadError) as soon as its announced length or what has
    streamed in so far is over `max_bytes`: an oversize body is never held whole."""
    announced = _int(request.headers.get("content-length"))
    if announced is not None:
        check_upload_size(announced, max_bytes)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        check_upload_size(len(body), max_bytes)
    return bytes(body)


def _search_bytes(request: Request, state: UiState, search: _Search, data: bytes, limit: int):
    index, job = _ready_index(state, search)
    if index is None:
        return _fragment(request, f"the index is not ready yet: {job.title}", 409)
    embedder = state.catalog.embedder(search.model)
    try:
        image = decode_upload(data, embedder.height, embedder.width, limit)
    except UploadError as err:
        return _fragment(request, str(err), 415)
    matches = _matches(state, search, index, image)
    context = {"search": search, "matches": matches, "query": None, "uploaded": True}
    return _render(request, "_results.html", context)


def _fragment(request: Request, message: str, status: int) -> Response:
    return _render(request, "_message.html", {"message": message, "kind": "error"}, status)


def gallery_image(request: Request) -> Response:
    """An image the gallery's manifest lists, from its dataset folder."""
    state = _state(request)
    gallery = state.galleries.get(request.path_params["gallery"])
    if gallery is None:
        return Response("no such gallery", 404)
    try:
        path = gallery.image(request.path_params["path"])
    except (UnknownImageError, DatasetError, FileNotFoundError):
        return Response("no such image", 404)
    if not path.is_file():
        return Response("no such image", 404)
    return FileResponse(path, headers={"Cache-Control": "max-age=3600"})


# ---- models and actions -------------------------------------------------------------------


def models_page(request: Request, message: str = "", kind: str = "", status: int = 200):
    from reid_core.tracking.compare import UnknownVersionError, promotion_report, version_table

    state = _state(request)
    name = state.catalog.model_name
    try:
        table = version_table(name)
    except UnknownVersionError as err:
        return _render(request, "error.html", {"message": str(err), "title": "Models"}, 404)
    indexes = {
        gallery: [v for v in table.versions if state.shelf.built(gallery, name, v)]
        for gallery in state.galleries
    }
    context = {
        "title": "Models",
        "table": table,
        "reports": {
            v: promotion_report(table.tags[v].get("reid.promote_run_id", ""))
            for v in table.versions
        },
        "indexes": indexes,
        "message": message,
        "kind": kind,
    }
    return _render(request, "models.html", context, status)


async def _authorised(request: Request) -> Response | None:
    """None when the request carries the operator's token; else the refusal to send."""
    state = _state(request)
    if state.token is None:  # not exposed at all
        return Response("Not Found", 404)
    try:
        body = await _capped_body(request, MAX_FORM_BYTES)
    except UploadError:
        return Response("form too large", 413)
    form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
    given = request.headers.get("x-reid-token") or (form.get("token") or [""])[0]
    if not hmac.compare_digest(given.encode(), state.token.encode()):
        log.warning("refused %s %s: wrong or missing token", request.method, request.url.path)
        return await run_in_threadpool(
            models_page, request, "refused: the token is wrong or missing", "error", 403
        )
    return None


async def rollback_action(request: Request) -> Response:
    from reid_core.tracking.rollback import rollback

    return await _act(request, rollback)


async def champion_action(request: Request) -> Response:
    from reid_core.tracking.rollback import make_champion

    version = request.path_params["version"]
    return await _act(request, lambda config: make_champion(config, version))


async def _act(request: Request, action) -> Response:
    refused = await _authorised(request)
    if refused is not None:
        return refused
    state = _state(request)
    try:
        done = await run_in_threadpool(action, state.config)
    except Exception as err:  # noqa: BLE001 - shown on the page; the log has the trace
        log.exception("action failed")
        return await run_in_threadpool(models_page, request, f"failed: {err}", "error", 409)
    finally:
        state.catalog.forget()
    message = (
        f"{done.model_name} v{done.restored} is champion"
        + (f" (was v{done.replaced})" if done.replaced else "")
        + f"; served as Triton version {done.triton_version}"
    )
    return await run_in_threadpool(models_page, request, message, "ok")


# ---- evaluation reports -------------------------------------------------------------------


def reports_page(request: Request) -> Response:
    state = _state(request)
    reports, problems = [], []
    for model in state.reports.models():
        try:
            reports.append(state.reports.report(model))
        except UnknownReportError as err:  # a damaged file: say so, show the others
            problems.append(str(err))
    context = {"title": "Reports", "reports": reports, "problems": problems}
    return _render(request, "reports.html", context)


def report_page(request: Request) -> Response:
    state = _state(request)
    try:
        report = state.reports.report(request.path_params["model"])
    except UnknownReportError as err:
        return _render(request, "error.html", {"message": str(err), "title": "Reports"}, 404)
    wanted = request.query_params.get("set")
    shown = [f for f in report.figures if wanted in (None, "", f.test_set)]
    context = {
        "title": f"Report: {report.model}",
        "report": report,
        "figures": shown,
        "set": wanted,
    }
    return _render(request, "report.html", context)


def report_file(request: Request) -> Response:
    state = _state(request)
    try:
        path, media = state.reports.file(request.path_params["model"], request.path_params["path"])
    except UnknownReportError:
        return Response("no such report file", 404)
    headers = {"Content-Security-Policy": REPORT_CSP} if media.startswith("text/html") else {}
    return FileResponse(path, media_type=media, headers=headers)


# ---- headers ------------------------------------------------------------------------------


class _SecurityHeaders:
    """Every response: this CSP unless the route set its own, no sniffing, no referrer."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                extra = {
                    b"content-security-policy": CSP.encode(),
                    b"x-content-type-options": b"nosniff",
                    b"referrer-policy": b"no-referrer",
                    b"x-frame-options": b"DENY",
                }
                headers += [(n, v) for n, v in extra.items() if n not in names]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def _allowed_hosts(host: str) -> list[str]:
    """Host headers accepted: the loopback names when listening on loopback (a page on
    another site cannot reach the app by DNS rebinding), any when the operator opened it."""
    if host in ("127.0.0.1", "localhost", "::1"):
        return ["127.0.0.1", "localhost", "[::1]"]
    return ["*"]
