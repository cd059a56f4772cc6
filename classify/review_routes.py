"""The served review's HTTP routes (``cellclf serve RUN_DIR --review FOLDER``) over a
:class:`cellclf.review_session.ReviewSession`:

- ``GET /review``: the page (:mod:`cellreports.review_app`): the cells in review order, keys to
  move and to set a class, the counts and the differential as they change.
- ``GET /review/state``: the cells, their saved corrections, counts and differential (JSON;
  the page polls it to show another reviewer's saves).
- ``POST /review/corrections``: ``{"sha256", "label", "reviewer", "revision"}``; 200 with the
  saved row and the new counts, 409 with the other reviewer's row when the cell changed since
  ``revision``, 400/404 for a bad label or an unknown cell.
- ``GET /review/image/{index}``: the image of a cell of this review (nothing else is served).
- ``GET /review/corrections.csv``: the corrections file as saved.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations
# (``Request``, imported inside add_review), which must be real objects, not strings.
import asyncio
from typing import Any

from cellclf.review_session import Conflict, ReviewSession


def add_review(app: Any, session: ReviewSession, model_name: str) -> None:
    """Add the review's routes to the FastAPI ``app``."""
    from fastapi import HTTPException, Request
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

    from cellreports.review_app import review_app_page

    @app.get("/review", response_class=HTMLResponse)
    async def review_page() -> str:
        return review_app_page(session.state(), model_name)

    @app.get("/review/state")
    async def review_state() -> dict[str, Any]:
        return session.state()

    @app.post("/review/corrections")
    async def review_save(request: Request) -> Any:
        try:
            body = await request.json()
            sha256, label = str(body["sha256"]), str(body["label"])
            reviewer, revision = str(body.get("reviewer") or ""), int(body.get("revision") or 0)
        except (ValueError, KeyError, TypeError):
            raise HTTPException(400, "send JSON with sha256, label, reviewer and revision") from None
        try:  # a thread: the file is written and fsynced there, not on the event loop
            saved = await asyncio.to_thread(session.save, sha256, label, reviewer, revision)
        except KeyError:
            raise HTTPException(404, f"no cell {sha256} in this review") from None
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        except Conflict as exc:
            return JSONResponse({"detail": str(exc), "current": _jsonable(exc.current)}, status_code=409)
        state = session.state()
        return {"saved": saved, "counts": state["counts"], "reviewed": state["reviewed"],
                "excluded": state["excluded"], "differential": state["differential"]}

    @app.get("/review/image/{index}")
    async def review_image(index: int) -> Any:
        if not 0 <= index < len(session.cells):
            raise HTTPException(404, "no such cell in this review")
        path = session.image(index)
        if not path.is_file():
            raise HTTPException(404, f"{path} is gone")
        return FileResponse(path)

    @app.get("/review/corrections.csv")
    async def review_file() -> Any:
        if not session.path.is_file():
            return Response("", media_type="text/csv")
        return FileResponse(session.path, media_type="text/csv", filename=session.path.name)


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {key: (None if value != value else value) if isinstance(value, float) else value for key, value in row.items()}
