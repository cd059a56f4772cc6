"""``cellclf serve``: a model over HTTP, for other programs (a LIMS, a script) and people.

FastAPI and uvicorn (the ``serve`` extra: ``pip install 'cellembed[serve]'``), imported only
here. The model, its embedding network and (unless ``heatmaps=False``) the network of its
heat maps are loaded once, when the app is made. The event loop never runs a network:
uploads are decoded and prepared in a pool of threads (one per core) and the network runs in
one worker thread fed by a small batcher, which stacks the images of requests that arrive
together into one forward pass; so ``/health`` answers while the network is busy.

Endpoints:

- ``POST /predict``: one or more images as a multipart upload (any field name), or one image
  as the raw body (``Content-Type: image/...``). One image in the raw body gets one result;
  a multipart upload gets ``{"results": [...]}``, one per file in order. A result is the
  field's Lambda shape, extended: ``{"image", "predictions": {class: probability},
  "predicted", "confidence", "set": [...], "uncertain", "novelty_p", "unlike_training"}``
  (calibrated probabilities; the conformal prediction set; the drift signal's p-value and
  flag, :mod:`cellclf.novelty`, left out for a model fitted before it; uncertain = a set of
  more than one class, no class reaching the set's threshold, a cell unlike the training
  images, or a confidence under ``--min-confidence``). A multipart answer also holds
  ``"drift"``: the batch test of its images (``fires``, ``message``, counts).
- ``GET /``: an upload page (an HTML form, no script); ``POST /`` shows the results with
  the heat map of each image.
- ``GET /review`` (with ``cellclf serve --review FOLDER``): the review of a predicted folder,
  corrected from the keyboard and saved as it goes (:mod:`cellclf.review_routes`).
- ``GET /health``, ``GET /model`` (classes, spec, calibration, test metrics), and FastAPI's
  ``/docs`` and ``/openapi.json``.

Bad input is a 4xx with a one-line ``detail`` and never stops the server: an empty body or no
file (400), a body that is not an upload or an image (415), a file over ``max_upload_mb`` or a
request over the batch limit (413), a file that does not decode or is a decompression bomb
(422, naming the file).

Memory: the uploads of all requests being served together hold at most ``max_inflight_mb``
(each request counts its Content-Length from before its body is read until it is answered):
a request that does not fit beside the others gets 503 with ``Retry-After``, one larger than
the whole budget 413. The decoded images of a forward pass are bounded by the batcher's
``NETWORK_BATCH``.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations
# (``Request``, imported inside create_app), which must be real objects, not strings.
import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from cellclf.errors import ClassifierInputError
from cellembed.decoding import DEFAULT_MAX_PIXELS

INSTALL_HINT = "pip install 'cellembed[serve]' (in a checkout: pip install -e '.[serve]')"
#: Images one forward pass of the batcher takes at most.
NETWORK_BATCH = 8
#: Bytes a multipart request may hold beyond its files (boundaries, headers, form fields).
MULTIPART_SLACK = 64 * 1024
#: Plain (non-file) form fields a request may hold, and the bytes of each.
FORM_FIELDS = 10
FORM_FIELD_BYTES = 4 * 1024


def import_server() -> tuple[Any, Any]:
    """(fastapi, uvicorn), or a one-line error naming the extra to install."""
    try:
        import fastapi
        import uvicorn

        try:  # FastAPI reads uploads with python-multipart (named python_multipart since 0.0.13)
            import python_multipart  # noqa: F401
        except ImportError:
            import multipart  # noqa: F401
    except ImportError as exc:
        raise ClassifierInputError(
            f"cellclf serve needs FastAPI, uvicorn and python-multipart ({exc.name} is not installed): {INSTALL_HINT}"
        ) from None
    return fastapi, uvicorn


#: Seconds a client refused for a full upload budget (503) is asked to wait (Retry-After).
RETRY_AFTER_S = 2


@dataclass(frozen=True)
class ServeSettings:
    """The limits and choices of a server (the ``cellclf serve`` options).

    ``max_inflight_mb``: the upload bytes all requests being served may hold at once (each
    request counts its declared size from the moment its body is read until it is answered);
    a request that does not fit now gets 503 with Retry-After, one larger than the whole
    budget 413.
    """

    max_upload_mb: float = 20.0
    max_batch: int = 16
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_confidence: float | None = None
    heatmaps: bool = True
    max_inflight_mb: float = 100.0
    novelty_level: float = 0.01  # cellclf.novelty.DEFAULT_NOVELTY_LEVEL (imported with scikit-learn)

    def __post_init__(self) -> None:
        if self.max_inflight_mb < self.max_upload_mb:
            raise ClassifierInputError(
                f"--max-inflight-mb {self.max_inflight_mb:g} is less than --max-upload-mb {self.max_upload_mb:g}: "
                "one largest image would never fit; raise --max-inflight-mb or lower --max-upload-mb"
            )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)



class BadUpload(Exception):
    """A request the server refuses: its HTTP status, a one-line reason and extra headers."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


class UploadBudget:
    """The upload bytes held by the requests being served, bounded by ``limit``. A request
    reserves its declared size before its body is read and releases it when answered;
    everything runs on the event loop, so no lock is needed."""

    def __init__(self, limit_mb: float) -> None:
        self.limit_mb, self.limit = limit_mb, int(limit_mb * 1024 * 1024)
        self.held = self.requests = 0

    def reserve(self, size: int) -> None:
        """Count ``size`` bytes as held.

        Raises:
            BadUpload: 413 when ``size`` exceeds the whole budget, 503 (Retry-After) when it
                does not fit beside the requests being served now.
        """
        mb = self.limit_mb
        if size > self.limit:
            raise BadUpload(413, f"the upload is {size / 1e6:.1f} MB, more than the server holds at once "
                                 f"(--max-inflight-mb {mb:g}); send fewer or smaller images per request")
        if self.held + size > self.limit:
            raise BadUpload(503, f"the server is busy: it holds {self.held / 1e6:.1f} MB of uploads from {self.requests} "
                                 f"request(s) (--max-inflight-mb {mb:g}); retry in {RETRY_AFTER_S} s",
                            {"Retry-After": str(RETRY_AFTER_S)})
        self.held += size
        self.requests += 1

    def release(self, size: int) -> None:
        self.held -= size
        self.requests -= 1


def declared_size(request: Any, settings: ServeSettings) -> int:
    """The bytes a request's body may hold: its Content-Length, or the largest image for a
    raw body sent without one (its stream is cut at that size)."""
    length = request.headers.get("content-length")
    try:
        return max(0, int(length)) if length is not None else settings.max_upload_bytes
    except ValueError:
        raise BadUpload(400, "the Content-Length header is not a number") from None


class Batcher:
    """Runs ``run`` on the stacked images of the requests waiting, one batch at a time, in
    ``executor`` (one thread: the network already uses every core)."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], executor: ThreadPoolExecutor, limit: int) -> None:
        self.run, self.executor, self.limit = run, executor, limit
        self.queue: asyncio.Queue | None = None
        self.busy = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._work())
        self._task.add_done_callback(lambda task: self._fail_waiting("the network worker stopped"))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._fail_waiting("the server is stopping")

    def _fail_waiting(self, why: str) -> None:
        """Answer every queued request (none may wait forever on a worker that is gone)."""
        while self.queue is not None and not self.queue.empty():
            _, future = self.queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError(why))

    async def submit(self, pixels: np.ndarray) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((pixels, future))
        return await future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            while not self.queue.empty() and sum(len(p) for p, _ in items) < self.limit:
                items.append(self.queue.get_nowait())
            self.busy = sum(len(p) for p, _ in items)
            try:
                out = await loop.run_in_executor(self.executor, self.run, np.concatenate([p for p, _ in items]))
            except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                for _, future in items:
                    if not future.done():
                        future.set_exception(exc)
            else:
                start = 0
                for pixels, future in items:
                    if not future.done():
                        future.set_result(out[start : start + len(pixels)])
                    start += len(pixels)
            finally:
                self.busy = 0


class Service:
    """The loaded model, its networks and pools (made once, at start-up)."""

    def __init__(self, predictor: Any, weights: Any = None, settings: ServeSettings | None = None,
                 engine: str | None = None, log: Callable[[str], None] | None = None) -> None:
        from cellclf.classifier import ImageClassifier
        from cellembed.engines import DEFAULT_ENGINE

        self.settings = settings or ServeSettings()
        self.predictor = predictor
        self.classifier = ImageClassifier(predictor, weights=weights, engine=engine or DEFAULT_ENGINE, log=log)
        self.embedder = self.classifier.embedder  # built now, not at the first request
        self.explainer, self.heatmaps_missing = None, None
        if not self.settings.heatmaps:
            self.heatmaps_missing = "the server was started with --no-heatmaps"
        elif getattr(predictor, "reference", None) is None:
            self.heatmaps_missing = "this model has no record of its training statistics (re-run cellclf fit)"
        else:
            from cellclf.heatmap_files import Explainer

            self.explainer = Explainer(predictor, network=self.embedder)  # the same network: one forward pass definition
        self.decoders = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="decode")
        self.network = ThreadPoolExecutor(1, thread_name_prefix="network")
        self.batcher = Batcher(self.embedder.embed, self.network, NETWORK_BATCH)
        self.budget = UploadBudget(self.settings.max_inflight_mb)
        self.started = time.time()
        self.served = 0

    def _decode(self, name: str, data: bytes) -> np.ndarray:
        image = self.embedder.load(data, self.settings.max_pixels)
        if image.pixels is None:
            raise BadUpload(422, f"{name}: {image.error}")
        return image.pixels

    async def decode(self, named: list[tuple[str, bytes]]) -> np.ndarray:
        """(n, S, S, 3) prepared pixels of the uploads, decoded in the pool.

        Raises:
            BadUpload: 422 naming the first file that is not a readable image.
        """
        loop = asyncio.get_running_loop()
        return np.stack(await asyncio.gather(*(loop.run_in_executor(self.decoders, self._decode, n, d) for n, d in named)))

    def results(self, names: list[str], vectors: np.ndarray) -> list[dict[str, Any]]:
        """The JSON result of each image's embedding (see the module docstring)."""
        from cellclf.classifier import prediction_record

        classes = list(self.predictor.classes)
        spec = self.embedder.spec
        proba = self.predictor.predict_proba(vectors, spec=spec)
        novelty = self.predictor.novelty_p(vectors, spec=spec)
        sizes = self.predictor.prediction_sets(proba).sum(axis=1)
        level = self.settings.novelty_level
        unsure = self.predictor.uncertain(proba, self.settings.min_confidence, novelty, level)
        out = [{"image": name, **prediction_record(row, classes, int(size), uncertain,
                                                    None if novelty is None else novelty[i], level)}
               for i, (name, row, size, uncertain) in enumerate(zip(names, proba, sizes, unsure))]
        self.served += len(out)
        return out

    def drift(self, results: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The batch test of a request's results and the shift of their predicted classes
        from the training mix (None: the model has no drift signal)."""
        from cellclf.novelty import batch_report

        values = [r["novelty_p"] for r in results if "novelty_p" in r]
        if not values or len(values) != len(results):
            return None
        detector = self.predictor.novelty
        return batch_report(values, [r["predicted"] for r in results], self.predictor.summary,
                            self.settings.novelty_level, detector.smallest_p if detector is not None else 0.0)

    async def classify(self, named: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
        pixels = await self.decode(named)
        return self.results([n for n, _ in named], await self.batcher.submit(pixels))

    async def explain(self, named: list[tuple[str, bytes]]) -> list[tuple[dict[str, Any], bytes | None]]:
        """Results with the heat-map PNG of each image (None without the heat-map network)."""
        if self.explainer is None:
            return [(result, None) for result in await self.classify(named)]
        from cellclf.heatmap_files import explanation_png

        pixels = await self.decode(named)

        def run() -> list[tuple[np.ndarray, bytes]]:
            done = []
            for (name, _), image in zip(named, pixels):
                result, embedding = self.explainer.explain_embedded(image[None])
                proba = self.predictor.predict_proba(embedding)
                done.append((embedding[0], explanation_png(self.explainer, name, image, result, proba, 0)[0]))
            return done

        done = await asyncio.get_running_loop().run_in_executor(self.network, run)
        results = self.results([n for n, _ in named], np.stack([v for v, _ in done]))
        return list(zip(results, [png for _, png in done]))

    def model_facts(self) -> dict[str, Any]:
        predictor = self.predictor
        calibration = getattr(predictor, "calibration", None)
        test = predictor.summary.get("test") or {}
        return {
            "classes": list(predictor.classes),
            "family": predictor.family,
            "source": str(predictor.source) if predictor.source else None,
            "spec": predictor.spec.to_dict(),
            "calibration": None if calibration is None else {
                "method": calibration.method, "temperature": calibration.temperature, "alpha": calibration.alpha},
            "test": {k: test.get(k) for k in ("n", "accuracy", "accuracy_ci", "macro_f1", "macro_f1_ci") if k in test},
            "limits": {"max_upload_mb": self.settings.max_upload_mb, "max_batch": self.settings.max_batch,
                       "max_pixels": self.settings.max_pixels, "max_inflight_mb": self.settings.max_inflight_mb},
            "heatmaps": self.explainer is not None,
            "heatmaps_missing": self.heatmaps_missing,
        }

    def close(self) -> None:
        self.decoders.shutdown(wait=False, cancel_futures=True)
        self.network.shutdown(wait=False, cancel_futures=True)


async def read_uploads(request: Any, settings: ServeSettings) -> list[tuple[str, bytes]]:
    """The (name, bytes) of a request's images: every file of a multipart form, or the raw
    ``image/*`` body (named ``image``).

    Raises:
        BadUpload: see the module docstring.
    """
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    limit = settings.max_upload_bytes
    length = request.headers.get("content-length")
    if kind == "multipart/form-data":
        # the body's real size must be known before it is parsed (Starlette spools file parts
        # to disk without a limit): a Content-Length, and no chunked transfer (which overrides it)
        if length is None or "transfer-encoding" in request.headers:
            raise BadUpload(411, "a multipart upload needs a Content-Length header and no Transfer-Encoding")
        if int(length) > settings.max_batch * limit + MULTIPART_SLACK:
            raise BadUpload(413, f"the upload is {int(length) / 1e6:.1f} MB, more than --max-batch "
                                 f"{settings.max_batch} images of --max-upload-mb {settings.max_upload_mb:g}")
        try:
            form = await request.form(max_files=settings.max_batch, max_fields=FORM_FIELDS, max_part_size=FORM_FIELD_BYTES)
        except Exception as exc:  # noqa: BLE001 - Starlette's parser errors: a malformed upload
            reason = " ".join(str(getattr(exc, "message", exc)).split())[:120]
            if "too many files" in reason.lower():
                raise BadUpload(413, f"more than --max-batch {settings.max_batch} images in one request") from None
            raise BadUpload(400, f"the multipart upload could not be read ({reason})") from None
        files = [value for _, value in form.multi_items() if hasattr(value, "read") and hasattr(value, "filename")]
        if not files:
            raise BadUpload(400, "the upload holds no file; send images as multipart files (or one image as the body)")
        named = []
        for position, upload in enumerate(files):
            data = await upload.read(limit + 1)
            name = upload.filename or f"#{position}"
            if len(data) > limit:
                raise BadUpload(413, f"{name}: more than --max-upload-mb {settings.max_upload_mb:g} MB")
            if not data:
                raise BadUpload(400, f"{name}: the file is empty")
            named.append((name, data))
        return named
    if kind.startswith("image/") or kind == "application/octet-stream":
        if length is not None and int(length) > limit:
            raise BadUpload(413, f"the image is {int(length) / 1e6:.1f} MB, more than --max-upload-mb {settings.max_upload_mb:g}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadUpload(413, f"the image is more than --max-upload-mb {settings.max_upload_mb:g} MB")
            chunks.append(chunk)
        if not size:
            raise BadUpload(400, "the body is empty; send an image")
        return [("image", b"".join(chunks))]
    if not kind:
        raise BadUpload(400, "no Content-Type; send images as multipart/form-data, or one image with Content-Type image/...")
    raise BadUpload(415, f"Content-Type {kind} is not an upload; send multipart/form-data, or one image as image/...")


def create_app(service: Service, review: Any = None) -> Any:
    """The FastAPI application of a loaded :class:`Service`, with the review of a folder
    (``review``: a :class:`cellclf.review_session.ReviewSession`) when given."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse

    from cellreports.upload_page import result_page, upload_page

    @asynccontextmanager
    async def lifespan(app: Any):
        service.batcher.start()
        yield
        await service.batcher.stop()

    app = FastAPI(
        title="cellclf", lifespan=lifespan,
        description=f"Blood-cell image classification ({service.predictor.family}, classes: "
                    f"{', '.join(service.predictor.classes)}). See POST /predict.",
    )

    @app.exception_handler(BadUpload)
    async def refused(request: Request, exc: BadUpload) -> Any:
        if request.url.path == "/":
            return HTMLResponse(upload_page(service.model_facts(), error=exc.detail), status_code=exc.status,
                                headers=exc.headers)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @asynccontextmanager
    async def holding(request: Request):
        """The request's upload counted in the server's budget until it is answered."""
        size = declared_size(request, service.settings)
        service.budget.reserve(size)
        try:
            yield await read_uploads(request, service.settings)
        finally:
            service.budget.release(size)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Answers at once, also while the network is busy."""
        queue = service.batcher.queue.qsize() if service.batcher.queue is not None else 0
        return {"status": "ok", "busy_images": service.batcher.busy, "queued_requests": queue,
                "inflight_upload_mb": round(service.budget.held / 1024 / 1024, 3),
                "served_images": service.served, "uptime_s": round(time.time() - service.started, 1)}

    @app.get("/model")
    async def model() -> dict[str, Any]:
        """The classes, embedding spec, calibration, test metrics and limits of the model."""
        return service.model_facts()

    upload_body = {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    }}}

    @app.post("/predict", openapi_extra=upload_body)
    async def predict(request: Request) -> Any:
        """Classify images: multipart files (``{"results": [...]}``, one per file) or one image
        as the raw body (one result). Each result: predictions (calibrated probability per
        class), predicted, confidence, set (the conformal prediction set) and uncertain."""
        async with holding(request) as named:
            results = await service.classify(named)
        multipart = request.headers.get("content-type", "").lower().startswith("multipart/")
        if not multipart:
            return results[0]
        drift = service.drift(results)
        return {"results": results, **({"drift": drift} if drift is not None else {})}

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return upload_page(service.model_facts())

    @app.post("/", response_class=HTMLResponse, openapi_extra=upload_body)
    async def page_results(request: Request) -> str:
        async with holding(request) as named:
            explained = await service.explain(named)
            return result_page(service.model_facts(), explained, service.drift([r for r, _ in explained]))

    if review is not None:
        from cellclf.review_routes import add_review

        add_review(app, review, f"{service.predictor.family} ({service.predictor.source})")
    return app


def check_port(host: str, port: int) -> None:
    """Refuse, before the model is loaded, an address that cannot be bound."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise ClassifierInputError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); give another --port or --host"
        ) from None
