"""Serve a model over HTTP with LitServe: a page to draw a digit on, and a JSON API for programs.

    python -m mnist_lit serve --model checkpoints/cnn/model.pt      # then open http://127.0.0.1:8000/
    curl -F image=@digit.png http://127.0.0.1:8000/predict       # JSON: class, index, probability, probabilities, classes

The image is framed as `classify` frames it; a request that cannot be answered gets a 4xx with {"error": "<one
line>"}. GET / is the page, /health "ok" once every worker is ready, /info the model's metadata, /openapi.json and
/docs the API's description and Swagger UI. With an API key, every route but /health needs the header X-API-Key.
"""

import argparse
import ctypes
import gc
import hmac
import io
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import torch

from mnist_lit import classify
from mnist_lit.errors import UserError
from mnist_lit.model_files import load_model

try:
    import anyio
    import fastapi_offline  # Swagger UI's files, served from here: /docs works offline, as the page does
    import litserve as ls
    import python_multipart  # noqa: F401  (FastAPI reads the form with it, and says so only when the server is built)
    from fastapi import Depends, File, HTTPException, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from pydantic import BaseModel, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as e:  # `python -m mnist_lit serve` answers this in one line
    raise UserError(f"serving needs the serve extra ({e.name} is not installed): pip install 'mnist-lit[serve]'")

MAX_BODY = 10 * 1024 * 1024  # bytes in one request; larger ones are answered 413, never kept
TOO_BIG = f"request body over {MAX_BODY // (1024 * 1024)} MB"
# A refused request's body is read and dropped, up to this many bytes and seconds, before the answer: a client still
# sending (Python's do, without waiting for 100-continue) would otherwise see a reset instead of the answer.
DRAIN_BYTES, DRAIN_SECONDS = 64 * 1024 * 1024, 30
KEY_ENV = "MNIST_LIT_API_KEY"  # the key from the environment, so that it stays out of `ps`
KEY_HEADER = "X-API-Key"
NO_KEY = f"this server needs its API key in the header {KEY_HEADER}"
DOCS_ASSETS = "/docs-assets"  # Swagger UI's own files (no data of this server): open, as a browser loads them
MAX_BATCH = 128  # --max-batch-size at most: each size up to it is run at start-up
HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServe binds
HOW = "send the image file in the multipart form field 'image', e.g. curl -F image=@digit.png URL/predict"


class Prediction(BaseModel):  # POST /predict's answer
    class_: str = Field(alias="class", description="the predicted class")
    index: int = Field(ge=0, description="its index in `classes`")
    probability: float = Field(ge=0, le=1)
    probabilities: list[float] = Field(description="one per class, in the order of `classes`")
    classes: list[str]


def framed(request: Request, image: Annotated[UploadFile, File(description="an image file: PNG, JPEG, GIF, "
                                                                       "BMP, TIFF, WebP, PGM...")]) -> bytes:
    """POST /predict's request as FastAPI reads it for LitServe: the form's file `image` framed as `classify`
    frames it (1 x 28 x 28), or refused. FastAPI runs it in its thread pool, in the HTTP process: a 9 MP photo
    being framed holds up no other request (in the inference worker, its batch and those behind it wait)."""
    data = image.file.read()
    if not data:
        raise HTTPException(400, "the file in the field 'image' is empty")
    try:
        # its 784 float32 as bytes: a tensor would go to the worker through shared memory (an fd each), and be
        # formatted as text for LitServe's debug log line, which took longer than the framing (docs/serving.md)
        return classify.frame(request.app.state.meta, io.BytesIO(data)).numpy().tobytes()
    except classify.NotAnImage as e:
        raise HTTPException(415, str(e)) from None
    except classify.ImageError as e:
        raise HTTPException(422, str(e)) from None
    except Exception as e:  # a bug: this request's 500 in one line, the traceback in the log
        logging.getLogger(__name__).exception("framing an image failed")
        raise HTTPException(500, f"the server could not frame this image ({e.__class__.__name__})") from None


class DigitAPI(ls.LitAPI):
    """The model, in LitServe's inference worker(s), on batches of framed images."""

    def __init__(self, model: str, max_batch_size: int = 1, batch_timeout: float = 0.0) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path="/predict")
        self.model_path = model

    def setup(self, device: str) -> None:
        if parent := multiprocessing.parent_process():  # a worker LitServe spawned (no fork hook runs in it)
            die_with_parent(parent.pid)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches every process; the server stops this one
        self.model, self.meta = load_model(self.model_path)
        torch.set_num_threads(1)  # many small requests: one thread each worker, the HTTP side keeps a core
        # every batch size twice: TorchScript profiles a new input shape on its first call, optimises on the second
        for size in range(2 * self.max_batch_size):
            self.model(torch.zeros(size // 2 + 1, 1, 28, 28))
        gc.freeze()  # as in main: torch's objects are not scanned by the collector

    async def authorize(self) -> None:
        """Nothing: Gate checks the key, in front of every route. Defined, it takes the place of LitServe's
        own check of LIT_SERVER_API_KEY, which would close /health too."""

    # LitServe builds POST /predict from these two type hints: FastAPI reads and describes the form and the answer
    def decode_request(self, request: Annotated[bytes, Depends(framed)]) -> torch.Tensor:
        return torch.frombuffer(bytearray(request), dtype=torch.float32).reshape(1, 28, 28)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.reshape(-1, 1, 28, 28))  # a batch LitServe stacked (N x 1 x 28 x 28), or one image

    def encode_response(self, output: torch.Tensor) -> Prediction:
        return {**classify.answer(self.meta, output.reshape(-1)), "classes": self.meta["classes"]}


class Gate:
    """In front of every route, LitServe's too (passed in LitServer's middlewares): the pages at / (where
    LitServe answers itself) and /docs; the key on every route but /health and Swagger UI's files; the size
    limit. LitServe's max_payload_size answers mid-body, unread: a client still sending sees a reset."""

    def __init__(self, app: Any, api_key: str | None = None, page: str = "", docs: str = "") -> None:
        self.app, self.api_key = app, api_key.encode() if api_key else None
        self.pages = {"/": page, "/docs": docs}  # with a key, sent to a browser without it too, as a 401

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers, path, answer = dict(scope["headers"]), scope["path"], None
        length = headers.get(b"content-length", b"").strip()  # not a number: uvicorn has answered 400
        page = self.pages.get(path) if scope["method"] in ("GET", "HEAD") else None
        if (self.api_key and path != "/health" and not path.startswith(DOCS_ASSETS + "/")
                and not hmac.compare_digest(headers.get(KEY_HEADER.lower().encode(), b""), self.api_key)):
            answer = HTMLResponse(page, 401) if page and b"text/html" in headers.get(b"accept", b"") else error(401, NO_KEY)
        elif length.isdigit() and int(length) > MAX_BODY:
            answer = error(413, TOO_BIG)
        elif page:
            answer = HTMLResponse(page)
        if answer:  # refused before the body was read: read and drop it first, or close the connection after
            expects = b"100-continue" in headers.get(b"expect", b"").lower()  # then it sends none before the answer
            if expects or (length.isdigit() and int(length) > DRAIN_BYTES) or not await drained(receive):
                answer.headers["Connection"] = "close"  # uvicorn closes the connection after this answer
            return await answer(scope, receive, send)
        seen = 0

        async def counted() -> dict:  # a body sent in chunks, without a length
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_BODY:
                drained_too = not message.get("more_body") or await drained(receive, seen)
                raise HTTPException(413, TOO_BIG, headers=None if drained_too else {"Connection": "close"})
            return message

        await self.app(scope, counted, send)


async def drained(receive: Any, seen: int = 0) -> bool:
    """Reads and drops the rest of a request's body: True once all of it came, False when the client went,
    or it was over DRAIN_BYTES or took over DRAIN_SECONDS."""
    with anyio.move_on_after(DRAIN_SECONDS):  # anyio: the async library Starlette is built on
        while seen <= DRAIN_BYTES:
            message = await receive()
            seen += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body"):
                return message["type"] == "http.request"
    return False


def error(status: int, text: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": text}, status_code=status, headers=headers)


def error_as_json(request: Any, exc: Exception) -> JSONResponse:
    """Every HTTP error as {"error": "<one line>"}, LitServe's and FastAPI's too; a POST /predict without a
    file in `image` (FastAPI's validation of the form) as 400, or as 415 when it is not a multipart form."""
    kind, path = request.headers.get("content-type", ""), request.url.path
    if isinstance(exc, RequestValidationError):
        multipart = kind.partition(";")[0].strip().lower() == "multipart/form-data"
        return error(400, f"no image: {HOW}") if multipart else error(415, f"not a multipart form ({kind or 'no content type'}): {HOW}")
    text = (f"{request.method} /predict: use POST; {HOW}" if exc.status_code == 405 and path == "/predict" else
            f"no such path: {path}" if exc.status_code == 404 else str(exc.detail).splitlines()[0])
    return error(exc.status_code, text, exc.headers)


def pages(meta: dict[str, Any], keyed: bool) -> tuple[str, str]:
    """The drawing page, with this model's class names and data set written in (with a key, nothing of the
    model: the page asks for the key and reads them from /info with it), and Swagger UI on /openapi.json."""
    fashion = meta.get("dataset") == "fashion_mnist" and not keyed
    settings = json.dumps({"classes": None if keyed else meta["classes"], "fashion": fashion, "key": keyed})
    page, docs = (Path(__file__).with_name(name).read_text(encoding="utf-8") for name in ("serve_page.html", "serve_docs.html"))
    return (page.replace("{{TITLE}}", "Draw a piece of clothing" if fashion else "Draw a digit")
            .replace("{{SETTINGS}}", settings.replace("<", "\\u003c")),
            docs.replace("{{ASSETS}}", DOCS_ASSETS).replace("{{KEYED}}", json.dumps(keyed)))


def openapi(app: Any, meta: dict[str, Any], keyed: bool) -> dict[str, Any]:
    """FastAPI's OpenAPI description of the routes (the form and the answer from DigitAPI's type hints),
    and what the routes cannot tell it: the refusals, the model's class names, /health's answers, the key."""
    document = app.openapi()
    del document["paths"]["/"]  # LitServe's route, which Gate answers with the page for people
    document["info"].update(title=f"mnist_lit: {meta.get('tutorial', 'model')}", version="1")
    schemas = document["components"]["schemas"]
    schemas["Error"] = {"type": "object", "required": ["error"], "additionalProperties": False,
                        "properties": {"error": {"type": "string", "description": "the reason, one line"}}}
    schemas["Prediction"]["properties"]["class"]["enum"] = list(meta["classes"])
    refusals = {"400": "no file in the field `image`, an empty file or a malformed form", "413": TOO_BIG,
                "415": "not an image format this reads, or not a multipart form",
                "422": "an image that cannot be classified: truncated, blank, over 50 megapixels, under 8x8",
                **({"401": NO_KEY} if keyed else {})}
    refused = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    predict = document["paths"]["/predict"]["post"]
    predict.update(operationId="predict", summary="Classify one image, framed as the classify command frames it")
    for path, summary in (("/health", "Whether the model is loaded in every worker"), ("/info", "The model and the server")):
        document["paths"][path]["get"]["summary"] = summary
    predict["responses"].update({status: {**refused, "description": why} for status, why in refusals.items()})
    health = document["paths"]["/health"]["get"]  # LitServe's answer: the text, with no media type
    health["responses"] = {"200": {"description": "ok: the model is loaded in every worker"}, "503": {"description": "not ready"}}
    if keyed:
        document["paths"]["/info"]["get"]["responses"]["401"] = {**refused, "description": NO_KEY}
        document["components"]["securitySchemes"] = {"key": {"type": "apiKey", "in": "header", "name": KEY_HEADER}}
        document["security"], health["security"] = [{"key": []}], []
    return document


def build(args: argparse.Namespace, meta: dict[str, Any]) -> Any:
    """The LitServer: DigitAPI, the Gate in front, errors as one JSON line, and the OpenAPI description
    with Swagger UI from this server's files (FastAPI's own /docs loads them from a CDN: turned off)."""
    page, docs = pages(meta, args.api_key is not None)
    server = ls.LitServer(DigitAPI(args.model, args.max_batch_size, args.batch_timeout), accelerator="cpu",
                          workers_per_device=args.workers, model_metadata=meta, disable_openapi_url=True,
                          fast_queue=True, middlewares=[(Gate, {"api_key": args.api_key, "page": page, "docs": docs})])
    app = server.app
    app.state.meta = meta  # for framed()
    schema = openapi(app, meta, args.api_key is not None)
    app.add_api_route("/openapi.json", lambda: schema, methods=["GET", "HEAD"], include_in_schema=False)
    app.mount(DOCS_ASSETS, StaticFiles(directory=Path(fastapi_offline.__file__).with_name("static")))
    app.add_exception_handler(StarletteHTTPException, error_as_json)
    app.add_exception_handler(RequestValidationError, error_as_json)
    return server


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mnist_lit serve", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--model", required=True, help="a .ckpt, .pt (TorchScript), .pt2, .onnx or .pte (ExecuTorch) model file")
    add("--host", default="127.0.0.1", help="address to listen on: 127.0.0.1 (this machine only, the default), 0.0.0.0 or ::")
    add("--port", type=int, default=8000, help="port to listen on, 1024 to 65535 (default 8000)")
    add("--max-batch-size", type=int, default=16,
        help=f"requests grouped into one model call by LitServe's dynamic batching, up to {MAX_BATCH}; 1: off")
    add("--batch-timeout", type=float, default=0.001, help="seconds a batch waits to fill up (default 0.001)")
    add("--workers", type=int, default=1, help="inference worker processes (default 1)")
    add("--api-servers", type=int, default=1, help="HTTP processes, which also frame the images (LitServe's num_api_servers; default 1)")
    add("--api-key", metavar="KEY", default=os.environ.get(KEY_ENV) or os.environ.get("LIT_SERVER_API_KEY"),
        help=f"every route but /health then needs the header {KEY_HEADER}: KEY; better given in the environment "
             f"variable {KEY_ENV} (or LitServe's LIT_SERVER_API_KEY), which `ps` does not show")
    args = parser.parse_args(argv)
    key = args.api_key
    for bad, message in (
            (args.host not in HOSTS, f"--host {args.host}: LitServe listens on one of {', '.join(HOSTS)}"),
            (not 1024 <= args.port <= 65535, f"--port {args.port}: choose a port from 1024 to 65535"),
            (not 1 <= args.max_batch_size <= MAX_BATCH, f"--max-batch-size {args.max_batch_size}: give 1 (no batching) to {MAX_BATCH}"),
            (args.workers < 1, f"--workers {args.workers}: give 1 or more"),
            (args.api_servers < 1, f"--api-servers {args.api_servers}: give 1 or more"),
            (not 0 <= args.batch_timeout <= 10, f"--batch-timeout {args.batch_timeout}: give seconds from 0 to 10"),
            (key is not None and not (key.strip() and key.isascii() and key.isprintable()),
             f"--api-key (or {KEY_ENV}): give a key of printable ASCII characters, not empty")):
        if bad:
            raise UserError(message)
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.api_key is None and args.host != "127.0.0.1":
        print(f"mnist_lit: warning: --host {args.host} without an API key: anyone who can reach port {args.port} "
              f"can use this server; set {KEY_ENV} (or --api-key) to require one", file=sys.stderr, flush=True)
    _, meta = load_model(args.model)  # a bad model file: one line, before any server starts
    with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as probe:  # uvicorn would exit
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((args.host, args.port))
        except OSError as e:
            raise UserError(f"port {args.port} on {args.host}: {e.strerror}; choose another with --port") from None
    server = build(args, meta)
    local = "127.0.0.1" if args.host == "0.0.0.0" else "[::1]" if args.host == "::" else args.host
    batching = f"batches of up to {args.max_batch_size}" if args.max_batch_size > 1 else "no batching"
    print(f"Serving {args.model} ({meta.get('tutorial', 'model')}, {batching}): open http://{local}:{args.port}/ "
          f"to draw, or POST images to http://{local}:{args.port}/predict. Ctrl-C stops.", flush=True)
    threading.Thread(target=say_when_ready, args=(f"http://{local}:{args.port}/health",), daemon=True).start()
    # SIGTERM (systemd, Kubernetes, `kill`) stops the server as Ctrl-C does: LitServe then stops its processes
    for sig in (signal.SIGTERM, signal.SIGINT):  # SIGINT too: a shell starts a background job with it ignored
        signal.signal(sig, signal.default_int_handler)
    os.register_at_fork(before=lambda: FORKING.__setitem__(0, os.getpid()), after_in_child=forked)
    # the objects of torch and the web stack, imported by now, are never garbage: a full collection in the
    # HTTP process would otherwise scan them all, stalling every request under way (docs/benchmarks.md#serving)
    gc.freeze()
    try:
        server.run(host=args.host, port=args.port, log_level="warning", generate_client_file=False,
                   num_api_servers=args.api_servers)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM before LitServe's own handling began (while starting)
        pass
    except RuntimeError as e:  # LitServe's word that a worker could not start
        raise UserError(f"the server could not start: {e}") from None
    finally:  # whatever LitServe started and did not stop (it was stopped while starting)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # no second interruption of the clean-up
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for child in multiprocessing.active_children():
            child.kill()  # at once: a forked one ignores SIGTERM (forked), a spawned worker has nothing to save
    print("Server stopped.", flush=True)
    return 0


def say_when_ready(health: str) -> None:
    while True:
        try:
            if urllib.request.urlopen(health, timeout=2).status == 200:
                return print("Ready.", flush=True)
        except OSError:
            time.sleep(0.2)


FORKING = [0]  # the process about to fork, noted in it just before


def forked() -> None:
    """In a process LitServe forked (its HTTP processes, its queue manager), just after the fork."""
    # the server stops each in its turn: a SIGTERM to every process (systemd) or a Ctrl-C would end them out of
    # order, with tracebacks (uvicorn's HTTP process sets its own handlers)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    die_with_parent(FORKING[0])  # each dies with the process that forked it
    torch.set_num_threads(1)  # the HTTP process frames images each in a thread of its own (framed)


def die_with_parent(parent: int) -> None:
    """In a process the server started: the kernel kills it as soon as `parent`, the process that started
    it, ends, however that ends (SIGKILL included), so nothing of a killed server goes on serving or holds
    its port. Linux only; elsewhere nothing."""
    if sys.platform != "linux":
        return
    if ctypes.CDLL(None).prctl(1, signal.SIGKILL) == 0 and os.getppid() != parent:  # 1: PR_SET_PDEATHSIG
        os._exit(1)  # the parent ended before the request was made: it would never be delivered
