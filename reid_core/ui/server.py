"""`reid ui`: the search page served by uvicorn on `ui.host`:`ui.port`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from reid_core.config import ReidConfig
from reid_core.ui.catalog import ModelCatalog, TritonTarget

log = logging.getLogger(__name__)


def serve(
    config: ReidConfig,
    reports: Path,
    *,
    model_name: str | None = None,
    triton: TritonTarget | None = None,
) -> None:
    """Serve the page until interrupted: searches embed through `triton` when given, else
    through ONNX Runtime in this process; the registry is the configured MLflow one."""
    import uvicorn

    from reid_core.tracking.runs import setup_mlflow
    from reid_core.ui.app import TOKEN_ENV, create_app

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    setup_mlflow(config)
    catalog = ModelCatalog(
        model_name or config.promote.model_name, config.ui.workdir / "models", triton
    )
    app = create_app(config, reports, catalog, token=os.environ.get(TOKEN_ENV) or None)
    ui = config.ui
    log.info(
        "search page on http://%s:%d/ (%s; promote and rollback %s)",
        ui.host,
        ui.port,
        catalog.runtime,
        f"enabled by {TOKEN_ENV}" if app.state.ui.token else f"hidden: {TOKEN_ENV} is not set",
    )
    try:
        uvicorn.run(app, host=ui.host, port=ui.port, log_level="info", access_log=False)
    finally:
        catalog.close()
