"""Serve a model over HTTP with LitServe: a page to draw a digit on, and a JSON API for programs.

    python -m mnist_lit serve --model checkpoints/cnn/model.pt      # then open http://127.0.0.1:8000/
    curl -F image=@digit.png http://127.0.0.1:8000/predict

    POST /predict  a multipart form with the image file in the field `image` -> JSON: class, index,
                   probability, the ten probabilities and the ten class names. The image is framed
                   exactly as `classify` frames it. Requests are grouped by LitServe's dynamic batching.
                   A bad request gets a 4xx answer with {"error": "<one line>"}.
    GET  /         the page: a pad to draw on, a photo upload, the prediction and its ten probabilities
    GET  /health   "ok" once the model is loaded in every worker
    GET  /info     the model's metadata (tutorial, data set, class names) and the server's settings
    GET  /openapi.json, /docs   the API's OpenAPI description, and Swagger UI on it (an upload form)

With --api-key (or MNIST_LIT_API_KEY) every route but /health needs the header X-API-Key: without it,
401 and {"error": ...}; a browser opening / or /docs gets that 401 with a page that asks for the key.
"""

import argparse
import asyncio
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
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch

from mnist_lit import classify
from mnist_lit.errors import UserError
from mnist_lit.model_files import load_model

try:
    import litserve as ls
    from fastapi import Form, HTTPException, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from pydantic import BaseModel, Field
    import fastapi_offline  # Swagger UI's files, served from here: /docs works offline, as the page does
except ImportError as e:  # `python -m mnist_lit serve` answers this in one line
    raise UserError(f"serving needs the serve extra ({e.name} is not installed): pip install 'mnist-lit[serve]'")

MAX_BODY = 10 * 1024 * 1024  # bytes in one request; larger ones are answered 413, never kept
TOO_BIG = f"request body over {MAX_BODY // (1024 * 1024)} MB"
# A refused request's body is read and dropped, up to this many bytes and seconds, before the answer: a
# client still sending (Python's do, without waiting for 100-continue) would otherwise find the connection
# closed under it and see a reset instead of the answer. Beyond these bounds it is closed all the same.
DRAIN_BYTES = 64 * 1024 * 1024
DRAIN_SECONDS = 30
KEY_ENV = "MNIST_LIT_API_KEY"  # the key from the environment, so that it stays out of `ps`
KEY_HEADER = "X-API-Key"
NO_KEY = f"this server needs its API key in the header {KEY_HEADER}"
DOCS_ASSETS = "/docs-assets"  # Swagger UI's own files (no data of this server): open, as a browser loads them
MAX_BATCH = 128  # --max-batch-size at most: each size up to it is run at start-up
PAGE = Path(__file__).with_name("serve_page.html")
DOCS = Path(__file__).with_name("serve_docs.html")
HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServe binds
HOW = "send the image file in the multipart form field 'image', e.g. curl -F image=@digit.png URL/predict"


class ImageForm(BaseModel):
    """POST /predict's request: FastAPI reads the form, refuses one without a file in `image`, and
    describes it in the OpenAPI document; LitServe sends it to the inference worker as it is."""

    image: UploadFile = Field(description="an image file: PNG, JPEG, GIF, BMP, TIFF, WebP, PGM...")


class Prediction(BaseModel):
    """POST /predict's answer to an image it could classify."""

    class_: str = Field(alias="class", description="the predicted class")
    index: int = Field(ge=0, description="its index in `classes`")
    probability: float = Field(ge=0, le=1)
    probabilities: list[float] = Field(description="one per class, in the order of `classes`")
    classes: list[str]


@dataclass
class Refusal:
    """An image this server cannot classify: the HTTP status and the reason, one line."""

    status: int
    error: str


class DigitAPI(ls.LitAPI):
    """Runs in LitServe's inference worker(s): frames each image as `classify` frames it (decode_request),
    runs the model on the batch (predict), and answers each request on its own (encode_response)."""

    def __init__(self, model: str, max_batch_size: int = 1, batch_timeout: float = 0.0) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path="/predict")
        self.model_path = model
        self.server_pid = os.getpid()  # built in the server process; set up in the workers LitServe spawns

    def setup(self, device: str) -> None:
        if os.getpid() != self.server_pid:  # a worker LitServe spawned: no fork hook ran here
            die_with_parent(self.server_pid)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches every process; the server stops this one
        self.model, self.meta = load_model(self.model_path)
        torch.set_num_threads(1)  # many small requests: one thread each worker, the HTTP side keeps a core
        # every batch size twice before the first request: TorchScript profiles a new input shape on its
        # first call and optimises for it on the second, work that should not land on a request
        for size in range(1, self.max_batch_size + 1):
            for _ in range(2):
                self.model(torch.zeros(size, 1, 28, 28))
        gc.freeze()  # as in main: torch's objects are not scanned by the collector

    def authorize(self) -> None:
        """Nothing: Gate checks the key in front of every route. LitServe calls this in place of its own
        check of LIT_SERVER_API_KEY, which would close /health too."""

    # LitServe builds /predict from these type hints: FastAPI reads and describes the form and the answer
    def decode_request(self, request: Annotated[ImageForm, Form(media_type="multipart/form-data")]) -> torch.Tensor | Refusal:
        """The image, 1 x 28 x 28, or why it cannot be classified: returned, not raised, as LitServe
        answers an exception here with a 500 to every request of the batch."""
        try:
            data = request.image.file.read()
            return classify.frame(self.meta, io.BytesIO(data)) if data else Refusal(400, "the file in the field 'image' is empty")
        except classify.NotAnImage as e:
            return Refusal(415, str(e))
        except classify.ImageError as e:
            return Refusal(422, str(e))
        except Exception as e:  # a bug: this request's 500, and the rest of the batch is answered
            logging.getLogger(__name__).exception("framing an image failed")
            return Refusal(500, f"the server could not frame this image ({e.__class__.__name__})")

    def batch(self, inputs: list) -> list:
        return inputs  # images and refusals side by side: predict stacks the images

    def unbatch(self, outputs: list) -> list:
        return outputs

    def predict(self, x: Any) -> Any:
        items = x if isinstance(x, list) else [x]  # a list when batching, one item when not
        images = [item for item in items if isinstance(item, torch.Tensor)]
        probs = iter(self.model(torch.stack(images)) if images else [])
        out = [next(probs) if isinstance(item, torch.Tensor) else item for item in items]
        return out if isinstance(x, list) else out[0]

    def encode_response(self, output: Any) -> Prediction:
        if isinstance(output, Refusal):
            return JSONResponse({"error": output.error}, status_code=output.status)
        return {**classify.answer(self.meta, output), "classes": self.meta["classes"]}


class Gate:
    """In front of every route, LitServe's included (passed as LitServer(middlewares=...)): the page at
    GET / (LitServe answers / with its own text), the API key on every route but /health and Swagger UI's
    files, and the size limit, each refusal in one JSON line. LitServe's max_payload_size answers once
    the body passed the limit, unread: a client still sending would see a reset, not the answer."""

    def __init__(self, app: Any, api_key: str | None = None, page: str = "", docs: str = "") -> None:
        self.app, self.api_key = app, api_key.encode() if api_key else None
        self.pages = {"/": page, "/docs": docs}  # the page at /; both sent to a browser without the key

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers, path = dict(scope["headers"]), scope["path"]
        if self.api_key and path != "/health" and not path.startswith(DOCS_ASSETS + "/"):
            if not hmac.compare_digest(headers.get(KEY_HEADER.lower().encode(), b""), self.api_key):
                page = self.pages.get(path) if b"text/html" in headers.get(b"accept", b"") else None
                answer = HTMLResponse(page, status_code=401) if page else None
                return await refuse(receive, send, headers, 401, NO_KEY, answer)
        length = headers.get(b"content-length", b"0").strip()  # not a number: uvicorn has answered 400
        if length.isdigit() and int(length) > MAX_BODY:
            return await refuse(receive, send, headers, 413, TOO_BIG)
        if path == "/" and scope["method"] in ("GET", "HEAD"):
            return await HTMLResponse(self.pages["/"])(scope, receive, send)
        seen = 0

        async def counted() -> dict:  # a body sent in chunks, without a length
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_BODY:
                drained = message.get("more_body", False) is False or await drain(receive, seen)
                raise HTTPException(413, TOO_BIG, headers=None if drained else {"Connection": "close"})
            return message

        async def typed(message: dict) -> None:  # LitServe's /health answer names no media type
            if path == "/health" and message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], (b"content-type", b"text/plain; charset=utf-8")]
            await send(message)

        await self.app(scope, counted, typed)


async def refuse(receive: Any, send: Any, headers: dict[bytes, bytes], status: int, error: str,
                 answer: Any = None) -> None:
    """The answer to a request that is refused before its body was read: sent once the body is read and
    dropped (DRAIN_BYTES, DRAIN_SECONDS), and then the connection is closed if the body was not all read."""
    length = headers.get(b"content-length", b"").strip()
    if b"100-continue" in headers.get(b"expect", b"").lower():
        drained = False  # the client sends nothing before it has an answer: no body to wait for
    elif length.isdigit():
        drained = int(length) == 0 or (int(length) <= DRAIN_BYTES and await drain(receive))
    else:
        drained = b"chunked" not in headers.get(b"transfer-encoding", b"").lower() or await drain(receive)
    answer = answer or JSONResponse({"error": error}, status_code=status)
    if not drained:
        answer.headers["Connection"] = "close"  # uvicorn closes the connection after this answer
    await answer({"type": "http"}, None, send)


async def drain(receive: Any, seen: int = 0) -> bool:
    """Reads and drops the rest of a request's body: True once all of it came, False when the client went,
    or it was over DRAIN_BYTES or took over DRAIN_SECONDS."""
    async def rest() -> bool:
        nonlocal seen
        while seen <= DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return False
            seen += len(message.get("body", b""))
            if not message.get("more_body", False):
                return True
        return False

    try:
        return await asyncio.wait_for(rest(), DRAIN_SECONDS)
    except asyncio.TimeoutError:
        return False


def error_as_json(request: Any, exc: Exception) -> JSONResponse:
    """Every HTTP error as {"error": "<one line>"}, LitServe's and FastAPI's included; a POST /predict
    whose form has no file in `image` (FastAPI's validation of ImageForm) as 400, or 415 if it is no form."""
    status, headers = getattr(exc, "status_code", 400), getattr(exc, "headers", None)
    content_type = request.headers.get("content-type", "")
    if isinstance(exc, RequestValidationError) and content_type.partition(";")[0].strip().lower() != "multipart/form-data":
        status, error = 415, f"not a multipart form ({content_type or 'no content type'}): {HOW}"
    elif isinstance(exc, RequestValidationError):
        error = f"no image: {HOW}"
    elif status == 405 and request.url.path == "/predict":
        error = f"{request.method} /predict: use POST; {HOW}"
    elif status == 404:
        error = f"no such path: {request.url.path}"
    else:
        error = str(exc.detail).splitlines()[0] if exc.detail else "error"
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def page(meta: dict[str, Any], keyed: bool = False) -> str:
    """The drawing page, with this model's class names and data set written in; with a key (`keyed`),
    nothing of the model: the page asks for the key and reads them from /info with it."""
    fashion = meta.get("dataset") == "fashion_mnist" and not keyed
    settings = {"classes": None if keyed else meta["classes"], "fashion": fashion, "key": keyed}
    title = "Draw a piece of clothing" if fashion else "Draw a digit"
    return (PAGE.read_text(encoding="utf-8").replace("{{TITLE}}", title)
            .replace("{{SETTINGS}}", json.dumps(settings).replace("<", "\\u003c")))


def docs_page(keyed: bool) -> str:
    """Swagger UI on /openapi.json, from this server's own copy of its files."""
    return DOCS.read_text(encoding="utf-8").replace("{{ASSETS}}", DOCS_ASSETS).replace("{{KEYED}}", json.dumps(keyed))


def openapi(app: Any, meta: dict[str, Any], keyed: bool) -> dict[str, Any]:
    """FastAPI's OpenAPI description of the routes (the form and the answer from DigitAPI's type hints),
    with what the routes cannot tell it: the refusals, the model's class names, /health's text, the key."""
    document = app.openapi()
    del document["paths"]["/"]  # LitServe's text, which Gate answers with the page for people
    document["info"].update(title=f"mnist_lit: {meta.get('tutorial', 'model')}", version="1",
                            description="Classify images of digits (or, for a Fashion model, of clothes).")
    schemas = document["components"]["schemas"]
    schemas["Error"] = {"type": "object", "required": ["error"], "additionalProperties": False,
                        "properties": {"error": {"type": "string", "description": "the reason, one line"}}}
    schemas["Prediction"]["properties"]["class"]["enum"] = list(meta["classes"])
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    refusals = {"400": "no file in the field `image`, an empty file or a malformed form", "413": TOO_BIG,
                "415": "not an image format this reads, or not a multipart form",
                "422": "an image that cannot be classified: truncated, blank, over 50 megapixels, under 8x8",
                **({"401": NO_KEY} if keyed else {})}
    predict = document["paths"]["/predict"]["post"]
    predict.update(operationId="predict", summary="Classify one image", description=(
        "The image file goes in the multipart form field `image`, e.g. `curl -F image=@digit.png URL/predict`; "
        "it is framed as `python -m mnist_lit classify` frames it."))
    predict["responses"].update({status: {**error, "description": why} for status, why in refusals.items()})
    health = document["paths"]["/health"]["get"]
    health["responses"] = {status: {"description": text, "content": {"text/plain": {"schema": {
        "type": "string", "enum": [text]}}}} for status, text in (("200", "ok"), ("503", "not ready"))}
    if keyed:
        document["paths"]["/info"]["get"]["responses"]["401"] = {**error, "description": NO_KEY}
        document["components"]["securitySchemes"] = {"key": {"type": "apiKey", "in": "header", "name": KEY_HEADER}}
        document["security"], health["security"] = [{"key": []}], []
    return document


def build(model: str, meta: dict[str, Any], max_batch_size: int, batch_timeout: float, workers: int,
          api_key: str | None = None) -> Any:
    """The LitServer: our API, the Gate in front, errors as one JSON line, and our OpenAPI description
    with Swagger UI (FastAPI's own /docs loads Swagger UI from a CDN)."""
    api = DigitAPI(model, max_batch_size=max_batch_size, batch_timeout=batch_timeout)
    keyed, html, docs = api_key is not None, page(meta, api_key is not None), docs_page(api_key is not None)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=workers, model_metadata=meta,
                          disable_openapi_url=True, fast_queue=True,  # ZeroMQ answers
                          middlewares=[(Gate, {"api_key": api_key, "page": html, "docs": docs})])
    app = server.app
    schema = openapi(app, meta, keyed)
    app.add_api_route("/openapi.json", lambda: JSONResponse(schema), methods=["GET", "HEAD"], include_in_schema=False)
    app.add_api_route("/docs", lambda: HTMLResponse(docs), methods=["GET", "HEAD"], include_in_schema=False)
    app.mount(DOCS_ASSETS, StaticFiles(directory=Path(fastapi_offline.__file__).with_name("static")))
    app.add_exception_handler(StarletteHTTPException, error_as_json)
    app.add_exception_handler(RequestValidationError, error_as_json)
    return server


def port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise UserError(f"port {port} on {host}: {e.strerror}; choose another with --port") from None


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mnist_lit serve", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a .ckpt, .pt (TorchScript), .pt2, .onnx or .pte (ExecuTorch) model file")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on: 127.0.0.1 (this machine only, the default), 0.0.0.0 or ::")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on, 1024 to 65535 (default 8000)")
    parser.add_argument("--max-batch-size", type=int, default=16,
                        help=f"requests grouped into one model call by LitServe's dynamic batching, up to {MAX_BATCH}; 1: off")
    parser.add_argument("--batch-timeout", type=float, default=0.001,
                        help="seconds a batch waits to fill up (default 0.001)")
    parser.add_argument("--workers", type=int, default=1, help="inference worker processes (default 1)")
    parser.add_argument("--api-servers", type=int, default=1,
                        help="HTTP processes, which also frame the images (LitServe's num_api_servers; default 1)")
    parser.add_argument("--api-key", metavar="KEY", default=os.environ.get(KEY_ENV) or os.environ.get("LIT_SERVER_API_KEY"),
                        help=f"every route but /health then needs the header {KEY_HEADER}: KEY; better given in "
                             f"the environment variable {KEY_ENV} (or LitServe's LIT_SERVER_API_KEY), which `ps` does not show")
    args = parser.parse_args(argv)
    if args.host not in HOSTS:
        raise UserError(f"--host {args.host}: LitServe listens on one of {', '.join(HOSTS)}")
    if not 1024 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: choose a port from 1024 to 65535")
    if not 1 <= args.max_batch_size <= MAX_BATCH:
        raise UserError(f"--max-batch-size {args.max_batch_size}: give 1 (no batching) to {MAX_BATCH}")
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: give 1 or more")
    if args.api_servers < 1:
        raise UserError(f"--api-servers {args.api_servers}: give 1 or more")
    if not 0 <= args.batch_timeout <= 10:
        raise UserError(f"--batch-timeout {args.batch_timeout}: give seconds from 0 to 10")
    if args.api_key is not None and (not args.api_key.strip() or not args.api_key.isascii()
                                     or not args.api_key.isprintable()):
        raise UserError(f"--api-key (or {KEY_ENV}): give a key of printable ASCII characters, not empty")
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.api_key is None and args.host != "127.0.0.1":
        print(f"mnist_lit: warning: --host {args.host} without an API key: anyone who can reach port {args.port} "
              f"can use this server; set {KEY_ENV} (or --api-key) to require one", file=sys.stderr, flush=True)
    _, meta = load_model(args.model)  # a bad model file: one line, before any server starts
    port_free(args.host, args.port)
    server = build(args.model, meta, args.max_batch_size, args.batch_timeout, args.workers, args.api_key)
    local = "127.0.0.1" if args.host == "0.0.0.0" else "[::1]" if args.host == "::" else args.host
    batching = f"batches of up to {args.max_batch_size}" if args.max_batch_size > 1 else "no batching"
    print(f"Serving {args.model} ({meta.get('tutorial', 'model')}, {batching}): open http://{local}:{args.port}/ "
          f"to draw, or POST images to http://{local}:{args.port}/predict. Ctrl-C stops.", flush=True)
    threading.Thread(target=say_when_ready, args=(f"http://{local}:{args.port}/health",), daemon=True).start()
    stop_on_signals()
    # LitServe's HTTP processes, queue manager and broker are forked: each dies with the process that forked it
    os.register_at_fork(before=note_forking_process, after_in_child=lambda: die_with_parent(FORKING[0]))
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
    finally:
        stop_children()
    print("Server stopped.", flush=True)
    return 0


def say_when_ready(health: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(health, timeout=2).status == 200:
                print("Ready.", flush=True)
                return
        except OSError:
            pass
        time.sleep(0.2)


def stop_children() -> None:
    """Whatever LitServe started and did not stop (it was stopped while starting): stopped now."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # no second interruption of the clean-up
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    for child in children:
        child.join(5)
        if child.is_alive():
            child.kill()


PR_SET_PDEATHSIG = 1  # <sys/prctl.h>
FORKING = [0]  # the process about to fork, noted in it just before


def note_forking_process() -> None:
    FORKING[0] = os.getpid()


def die_with_parent(parent: int) -> None:
    """In a process the server started: the kernel kills it as soon as `parent`, the process that started
    it, ends, however that ends (SIGKILL included), so nothing of a killed server goes on serving or holds
    its port. Linux only; elsewhere nothing."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    if prctl(PR_SET_PDEATHSIG, signal.SIGKILL) == 0 and os.getppid() != parent:
        os._exit(1)  # the parent ended before the request was made: it would never be delivered


def stop_on_signals() -> None:
    """SIGTERM (systemd, Kubernetes, `kill`) shuts the server down as Ctrl-C does: LitServe then stops its
    HTTP and inference processes. By default only this process would die, and they would go on serving."""
    main_pid = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        # In a process LitServe forked, which keeps this handler (its queue manager, and its HTTP process,
        # where uvicorn raises the signal again once it has stopped): nothing; the server process stops each
        # in its turn. A SIGTERM to every process, as systemd sends, or a terminal's Ctrl-C, would otherwise
        # end them out of order: a dead queue under the inference worker, tracebacks
        if os.getpid() == main_pid:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
