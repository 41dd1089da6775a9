"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import time

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from api import metrics
from api.deps import LookupDep
from api.errors import Unavailable
from api.models import ErrorBody, Health, Ready
from api.responses import OrjsonResponse

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, response_class=OrjsonResponse)
async def healthz() -> OrjsonResponse:
    """The process is alive (does not touch Redis)."""
    return OrjsonResponse({"status": "ok"})


@router.get(
    "/readyz",
    response_model=Ready,
    response_class=OrjsonResponse,
    responses={503: {"model": ErrorBody, "description": "Not ready; `error` says why."}},
)
async def readyz(lookup: LookupDep) -> OrjsonResponse:
    """Redis answers and a version this API can read is live (503 with the reason if not)."""
    try:
        await lookup.ping()
        live = await lookup.refresh(force=True)
    except Unavailable as exc:
        return OrjsonResponse(exc.body(), status_code=503)
    age = live.age_seconds()
    return OrjsonResponse(
        {
            "status": "ready",
            "version": live.version,
            "generated_at": live.generated_at,
            "age_seconds": None if age is None else round(age, 3),
        }
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def metrics_endpoint(lookup: LookupDep) -> Response:
    """Prometheus metrics: latency histogram, lookups by source, Redis errors, version age."""
    live = lookup.last_known
    age = live.age_seconds(time.time()) if live is not None else None
    metrics.VERSION_AGE.set(-1.0 if age is None else age)
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)
