"""The HTTP server: Label Studio's ML-backend protocol plus the pipeline and admin endpoints.

- `app`: the app factory (`create_app`) and the app as served (`build_app`)
- `guard`: authentication (Basic auth, the `/train` trigger token) and the body-size limit
- `schemas`: request and response models, `ApiError`, project-id parsing
- `deps`: the collaborators endpoints receive as FastAPI dependencies
- routers: `protocol` (/health, /setup, /predict, /webhook), `pipelines` (/train, /jobs,
  /projects/...), `metrics` (/metrics)
"""

from backend.server.app import build_app, create_app
from backend.server.guard import Guard
from backend.server.protocol import UNTRAINED
from backend.server.schemas import ApiError, parse_project

__all__ = ["UNTRAINED", "ApiError", "Guard", "build_app", "create_app", "parse_project"]
