"""The HTTP search service: `create_app(searcher, settings)` -> a FastAPI app, served by
`deepembed serve RUN_DIR` (uvicorn) with its web page at `/`."""

from deepembed.service.app import create_app
from deepembed.service.settings import ServiceSettings

__all__ = ["ServiceSettings", "create_app"]
