"""`python -m mnist_lit serve`: the real server in a subprocess, real HTTP, and a real browser on its page."""

from __future__ import annotations

import asyncio
import gc
import http.client
import io
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import REPO, run, write_idx_folder

pytest.importorskip("litserve", reason="serving needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("fastapi_offline", reason="serving needs the serve extra: pip install -e '.[serve]'")


# ---------------------------------------------------------------- a server in a subprocess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m mnist_lit serve` on a free localhost port, in a session of its own."""

    def __init__(self, model: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # its output goes to files, which never fill up as an unread pipe would
        self.out, self.err = (tempfile.TemporaryFile("w+") for _ in range(2))
        self.proc = subprocess.Popen([sys.executable, "-m", "mnist_lit", "serve", "--model", str(model), "--port",
                                      str(self.port), *extra], cwd=REPO, text=True, stdout=self.out,
                                     stderr=self.err, start_new_session=True, env={**os.environ, **(env or {})},
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 120
        try:
            while True:
                assert self.proc.poll() is None, self.output()
                assert time.monotonic() < deadline, "the server never became healthy"
                if "\nReady.\n" in self.output()[0]:  # printed once /health answers ok
                    assert urllib.request.urlopen(f"{self.url}/health", timeout=2).read() == b"ok"
                    return
                time.sleep(0.1)
        except BaseException:
            self.kill()
            raise

    def output(self) -> tuple[str, str]:
        for f in (self.out, self.err):
            f.seek(0)
        return self.out.read(), self.err.read()

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def processes(self) -> dict[int, str]:
        """Every process of the server's session still alive (the server, LitServe's HTTP and inference
        ones...), with its command line."""
        alive = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) == self.proc.pid and fields[0] != "Z":  # session id, state
                    alive[int(stat.parent.name)] = (stat.parent / "cmdline").read_text().replace("\0", " ")
            except OSError:
                continue
        return alive

    def processes_left(self, seconds: float) -> dict[int, str]:
        """The processes of the server's session still alive once they all ended, or `seconds` passed."""
        deadline = time.monotonic() + seconds
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.processes()

    def stop(self, sig: int = signal.SIGTERM, group: bool = False) -> tuple[str, str]:
        os.killpg(self.proc.pid, sig) if group else self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=60)
            return self.output()
        finally:
            if self.proc.poll() is None or self.processes():
                self.kill()


def form(fields: dict[str, tuple[str, bytes] | str]) -> tuple[bytes, str]:
    """A multipart/form-data body: a (filename, bytes) pair is a file, a str a plain field."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        if isinstance(value, str):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        else:
            filename, data = value
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                         f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def request(server: Server, method: str, path: str, body: bytes | None = None,
            content_type: str | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict | str]:
    headers = {**({"Content-Type": content_type} if content_type else {}), **(headers or {})}
    try:
        with urllib.request.urlopen(urllib.request.Request(server.url + path, data=body, method=method,
                                                           headers=headers), timeout=30) as answer:
            status, text, kind = answer.status, answer.read().decode(), answer.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        status, text, kind = e.code, e.read().decode(), e.headers.get("content-type", "")
    return status, json.loads(text) if kind.startswith("application/json") else text


def predict(server: Server, data: bytes, filename: str = "digit.png",
            headers: dict[str, str] | None = None) -> tuple[int, dict]:
    return request(server, "POST", "/predict", *form({"image": (filename, data)}), headers=headers)


def image_bytes(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def png(array: np.ndarray, mode: str = "L", fmt: str = "PNG") -> bytes:
    return image_bytes(Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).convert(mode), fmt)


def stroke_digit() -> np.ndarray:
    """A "1" as a pen draws it: a dark slanted bar on light paper, off-centre in a 200 x 150 frame."""
    paper = np.full((200, 150), 235.0)
    for row in range(30, 170):
        col = 70 + (170 - row) // 12
        paper[row, col - 5: col + 5] = 25
    return paper


# ---------------------------------------------------------------- models


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """dense512 after one epoch on the shipped MNIST (about 0.95), and fashion_mlp on synthetic data."""
    root = tmp_path_factory.mktemp("serve")
    data = root / "data"
    write_idx_folder(data / "FashionMNIST" / "raw")
    made = {}
    for name, extra in (("dense512", []), ("fashion_mlp", ["--data.data_dir", str(data)])):
        out = root / name
        done = subprocess.run([sys.executable, "-m", "mnist_lit", "fit", "--config", name, "--output_dir", str(out),
                               "--trainer.max_epochs", "1", *extra], cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        made[name] = out / "model.pt"
    return made


@pytest.fixture(scope="module")
def server(models):
    running = Server(models["dense512"])
    yield running
    running.stop()


def classify_json(model: Path, image: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "mnist_lit", "classify", "--model", str(model), str(image), "--json"],
                          cwd=REPO, capture_output=True, text=True)
    return json.loads(done.stdout.splitlines()[0])


# ---------------------------------------------------------------- the API


@pytest.mark.slow
def test_predict_answers_as_classify_does(server: Server, models, tmp_path: Path):
    (tmp_path / "one.png").write_bytes(png(stroke_digit()))
    status, answer = predict(server, (tmp_path / "one.png").read_bytes())
    assert status == 200
    assert set(answer) == {"class", "index", "probability", "probabilities", "classes"}
    assert answer["classes"] == [str(d) for d in range(10)] and answer["class"] == "1"
    assert answer["index"] == int(np.argmax(answer["probabilities"])) == 1
    assert sum(answer["probabilities"]) == pytest.approx(1, abs=1e-4)
    expected = classify_json(models["dense512"], tmp_path / "one.png")  # one framing, one model: the same numbers
    assert answer["probabilities"] == pytest.approx(expected["probabilities"], abs=2e-6)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["RGBA", "CMYK", "I;16", "GIF"])
def test_unusual_image_modes_are_answered_as_classify_answers_them(mode: str, server: Server, models, tmp_path):
    gray = stroke_digit()
    path = tmp_path / f"digit.{ {'CMYK': 'jpg', 'I;16': 'tiff', 'GIF': 'gif'}.get(mode, 'png') }"
    if mode == "I;16":
        Image.fromarray((gray * 257).astype(np.uint16)).save(path)
    elif mode == "GIF":  # animated: the first frame is the digit, the second is blank paper
        frames = [Image.fromarray(gray.astype(np.uint8)), Image.new("L", (150, 200), 235)]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    elif mode == "RGBA":  # ink on transparent paper
        rgba = np.zeros((200, 150, 4), dtype=np.uint8)
        rgba[..., 3] = (gray < 128) * 255
        Image.fromarray(rgba, "RGBA").save(path)
    else:
        Image.fromarray(gray.astype(np.uint8)).convert(mode).save(path)
    status, answer = predict(server, path.read_bytes(), path.name)
    assert status == 200, answer
    expected = classify_json(models["dense512"], path)
    assert (answer["class"], answer["probabilities"]) == (expected["class"], pytest.approx(expected["probabilities"],
                                                                                            abs=2e-6))


def cut_png() -> bytes:
    data = png(np.random.default_rng(0).integers(0, 255, (300, 300)))
    return data[: len(data) // 2]


def bomb_png() -> bytes:  # 9000 x 9000 one-bit pixels: about 10 KB on the wire, 81 megapixels decoded
    return image_bytes(Image.new("1", (9000, 9000)), "PNG")


BAD_FILES = {  # what is sent in the field "image" -> status and the start of the one-line reason
    "empty file": (b"", 400, "the file in the field 'image' is empty"),
    "not an image": (b"%PDF-1.4 a document", 415, "not an image format this reads"),
    "truncated image": (cut_png(), 422, "unreadable image (image file is truncated)"),
    "decompression bomb": (bomb_png(), 422, "image of 9000x9000 is over 50 megapixels"),
    "blank image": (png(np.full((100, 100), 240.0)), 422, "no ink found (blank image)"),
    "LAB colours": (image_bytes(Image.new("LAB", (50, 50)), "TIFF"), 422, "unreadable image (conversion from LAB"),
    "infinite pixels": (image_bytes(Image.fromarray(np.full((50, 50), np.inf, np.float32), "F"), "TIFF"), 422,
                        "unreadable image (pixels that are not numbers)"),
    "PostScript": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\n", 415,
                   "not an image format this reads"),  # never handed to Ghostscript
}


def assert_refused(status: int, answer, expected_status: int, reason: str) -> None:
    assert status == expected_status, answer
    assert isinstance(answer, dict) and list(answer) == ["error"], answer
    assert answer["error"].startswith(reason) and "\n" not in answer["error"]


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_image_is_a_4xx_with_one_line_and_the_server_goes_on(case: str, server: Server):
    data, expected, reason = BAD_FILES[case]
    assert_refused(*predict(server, data), expected, reason)
    assert predict(server, png(stroke_digit()))[0] == 200


@pytest.mark.slow
def test_bad_requests_are_4xx_with_one_line(server: Server):
    how = "send the image file in the multipart form field 'image'"
    assert_refused(*request(server, "POST", "/predict", *form({"photo": ("a.png", png(stroke_digit()))})),
                   400, f"no image: {how}")
    assert_refused(*request(server, "POST", "/predict", *form({"image": "not a file"})), 400, "no image")
    assert_refused(*request(server, "GET", "/predict"), 405, f"GET /predict: use POST; {how}")
    assert_refused(*request(server, "POST", "/predict", b'{"image": 1}', "application/json"), 415,
                   "not a multipart form (application/json)")
    assert_refused(*request(server, "POST", "/predict", b"image=1", "application/x-www-form-urlencoded; charset=UTF-8"),
                   415, "not a multipart form (application/x-www-form-urlencoded; charset=UTF-8)")
    body, kind = form({"image": ("digit.png", png(stroke_digit()))})
    assert request(server, "POST", "/predict", body, kind.replace("multipart/form-data", "Multipart/Form-Data"))[0] == 200
    assert send_raw(server, {"Content-Type": kind, "Content-Length": "lots"}, [], raw=True)[0] == 400  # uvicorn's
    assert_refused(*request(server, "POST", "/predict", b"garbage", "multipart/form-data; boundary=xyz"), 400,
                   "Invalid multipart data")
    assert_refused(*request(server, "GET", "/nowhere"), 404, "no such path: /nowhere")
    assert predict(server, png(stroke_digit()))[0] == 200


def send_raw(server: Server, headers: dict[str, str], chunks, raw: bool = False) -> tuple[int, dict | bytes]:
    """A POST /predict written by hand: the body may be larger than the server accepts, or chunked."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.putrequest("POST", "/predict")
    for key, value in headers.items():
        connection.putheader(key, value)
    connection.endheaders()
    try:
        for chunk in chunks:
            connection.send(chunk)
    except (BrokenPipeError, ConnectionResetError):  # the server answered and closed without reading it all
        pass
    answer = connection.getresponse()
    return answer.status, answer.read() if raw else json.loads(answer.read())


@pytest.mark.slow
def test_a_body_over_10_mb_is_413_whether_announced_or_chunked(server: Server):
    body, kind = form({"image": ("big.png", png(stroke_digit()) + b"\0" * (11 << 20))})  # a well-formed form
    pieces = [body[i: i + (1 << 20)] for i in range(0, len(body), 1 << 20)]
    assert_refused(*send_raw(server, {"Content-Type": kind, "Content-Length": str(len(body))}, pieces),
                   413, "request body over 10 MB")
    chunked = [f"{len(piece):x}\r\n".encode() + piece + b"\r\n" for piece in pieces] + [b"0\r\n\r\n"]
    assert_refused(*send_raw(server, {"Content-Type": kind, "Transfer-Encoding": "chunked"}, chunked),
                   413, "request body over 10 MB")
    assert predict(server, png(stroke_digit()))[0] == 200


def post_20_mb(url: str, client: str, chunked: bool, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """20 MB of random bytes in the field `image`, posted as each client posts: none of these waits for
    100-continue, and each sends all of the body before it reads the answer."""
    body, kind = form({"image": ("big.png", np.random.default_rng(2).bytes(20 << 20))})
    chunks = lambda: (body[i: i + (1 << 16)] for i in range(0, len(body), 1 << 16))  # noqa: E731
    data = chunks() if chunked else body  # a generator: sent chunked, without a length
    headers = {"Content-Type": kind, **(headers or {})}
    if client == "urllib":
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=60) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
    if client == "httpx":
        import httpx

        answer = httpx.post(url, content=data, headers=headers, timeout=60)
    else:
        import requests

        answer = requests.post(url, data=data, headers=headers, timeout=60)
    return answer.status_code, answer.json()


@pytest.mark.slow
@pytest.mark.parametrize("chunked", [False, True], ids=["announced", "chunked"])
@pytest.mark.parametrize("client", ["urllib", "httpx", "requests"])
def test_every_client_gets_the_413_of_a_body_over_the_limit(client: str, chunked: bool, server: Server):
    """The server once answered and closed while the body was still coming: urllib saw a broken pipe or a
    reset instead of the answer. It now reads the rest of the body (and drops it) before answering."""
    assert_refused(*post_20_mb(server.url + "/predict", client, chunked), 413, "request body over 10 MB")
    assert predict(server, png(stroke_digit()))[0] == 200


def test_a_refused_body_is_drained_within_its_bounds(monkeypatch):
    """What the server reads of a refused body before it answers (drained): all of it when it ends, and never
    more than DRAIN_BYTES or longer than DRAIN_SECONDS of a client that goes on sending, or stalls."""
    from mnist_lit import serve

    monkeypatch.setattr(serve, "DRAIN_SECONDS", 0.2)

    def client(messages) -> object:  # an ASGI receive() that, once `messages` run out, waits for ever
        messages = iter(messages)

        async def receive() -> dict:
            message = next(messages, None)
            if message is None:
                await asyncio.sleep(3600)
            return message

        return receive

    def drained(messages) -> tuple[bool, float]:
        began = time.monotonic()
        return asyncio.run(asyncio.wait_for(serve.drained(client(messages)), 5)), time.monotonic() - began

    part = {"type": "http.request", "body": b"x" * (1 << 20), "more_body": True}
    assert drained([part, part, {**part, "more_body": False}])[0]  # all of it came
    assert not drained([part, {"type": "http.disconnect"}])[0]  # the client went
    assert not drained(itertools.repeat(part))[0]  # over DRAIN_BYTES
    done, seconds = drained([part])  # a client that stops sending and stays
    assert not done and 0.2 <= seconds < 2


@pytest.mark.slow
def test_an_image_over_a_megabyte_is_answered(server: Server):
    """An upload over 1 MB, which Starlette may keep in a temporary file rather than in memory, is framed
    and answered as a small one is."""
    noise = np.random.default_rng(1).integers(200, 256, (1200, 1200)).astype(np.float64)
    noise[300:900, 580:620] = 0  # a bar of ink on grainy paper
    data = png(noise)
    assert len(data) > 1 << 20
    status, answer = predict(server, data)
    assert status == 200 and answer["class"] == "1"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_9_mp_photo_is_framed_from_about_1_mp_as_its_smaller_copy_is(fmt: str):
    """What one request can cost: a phone's photo is read reduced (JPEG: decoded at a smaller scale) to
    within FRAME_PIXELS before framing, and frames as the same photo taken at that size."""
    from mnist_lit import classify

    big = Image.fromarray(np.kron(stroke_digit(), np.ones((15, 15))).astype(np.uint8))  # 3000 x 2250
    small = big.resize((big.width // 3, big.height // 3), Image.Resampling.BOX)
    gray = classify.load_gray(io.BytesIO(image_bytes(big, fmt)))
    assert classify.FRAME_PIXELS / 4 <= gray.size <= classify.FRAME_PIXELS  # a quarter: JPEG halved, then halved
    framed, expected = classify.to_mnist(gray), classify.to_mnist(classify.load_gray(io.BytesIO(image_bytes(small, fmt))))
    assert torch.allclose(framed, expected, atol=0.1)


@pytest.mark.slow
def test_the_worker_answers_each_image_of_a_batch_and_one_alone(models):
    """In the HTTP process FastAPI frames each upload (framed: a bad one is refused there); the inference
    worker gets the framed images, as a batch (decode_request one by one, then batch, predict, unbatch,
    encode_response) or, with --max-batch-size 1, one at a time. Here both, in this process."""
    from fastapi import FastAPI, HTTPException, Request, UploadFile

    from mnist_lit.serve import DigitAPI, framed

    api = DigitAPI(str(models["dense512"]), max_batch_size=4)
    api.pre_setup()  # as LitServer does: LitServe's own unbatch
    threads, sigint = torch.get_num_threads(), signal.getsignal(signal.SIGINT)
    try:
        api.setup("cpu")  # a worker's setup: one thread, Ctrl-C left to the server, frozen objects
    finally:
        torch.set_num_threads(threads)
        signal.signal(signal.SIGINT, sigint)
        gc.unfreeze()
    app = FastAPI()
    app.state.meta = api.meta
    request = Request({"type": "http", "app": app, "headers": []})
    upload = lambda data: UploadFile(io.BytesIO(data), filename="x.png")  # noqa: E731
    images = [framed(request, upload(png(stroke_digit()))), framed(request, upload(png(255 - stroke_digit())))]
    answers = [api.encode_response(y) for y in api.unbatch(api.predict(api.batch([api.decode_request(x) for x in images])))]
    assert answers[0]["class"] == "1" and answers[0]["classes"] == [str(d) for d in range(10)]
    assert answers[1]["probabilities"] == pytest.approx(answers[0]["probabilities"], abs=1e-6)  # inverted
    alone = api.encode_response(api.predict(api.decode_request(images[0])))
    assert alone["probabilities"] == pytest.approx(answers[0]["probabilities"], abs=1e-6)
    with pytest.raises(HTTPException) as refused:
        framed(request, upload(b"not an image"))
    assert (refused.value.status_code, refused.value.detail) == (
        415, "not an image format this reads (PNG, JPEG, GIF, BMP, TIFF, WebP, PGM...)")


@pytest.mark.slow
def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server: Server):
    """Good and bad images at once: the bad ones are refused as they are framed, the good ones batched by
    LitServe, and each request gets its own answer."""
    jobs = [png(stroke_digit()) if i % 3 else b"not an image" for i in range(48)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda data: predict(server, data), jobs))
    for i, (status, answer) in enumerate(answers):
        assert (status, answer.get("class")) == ((200, "1") if i % 3 else (415, None)), answer


@pytest.mark.slow
def test_health_and_the_model_info(server: Server):
    assert request(server, "GET", "/health") == (200, "ok")
    status, info = request(server, "GET", "/info")
    assert status == 200 and info["model"]["tutorial"] == "dense512" and info["model"]["dataset"] == "mnist"
    assert info["model"]["classes"] == [str(d) for d in range(10)] and info["server"]["workers_per_device"] == 1


# ---------------------------------------------------------------- the API key and the schema

KEY = "k3y-for-tests"
NO_KEY = "this server needs its API key in the header X-API-Key"


@pytest.fixture(scope="module")
def keyed(models):
    """A server that needs KEY, given in the environment as a user keeps it out of `ps`."""
    running = Server(models["dense512"], env={"MNIST_LIT_API_KEY": KEY})
    yield running
    running.stop()


@pytest.mark.slow
def test_with_a_key_every_route_but_health_needs_it(keyed: Server):
    assert KEY not in " ".join(keyed.processes().values())  # not on any command line
    digit = png(stroke_digit())
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": KEY.upper()}):
        for method, path in (("GET", "/"), ("GET", "/info"), ("GET", "/openapi.json"), ("GET", "/docs"),
                             ("GET", "/nowhere"), ("GET", "/predict")):
            assert_refused(*request(keyed, method, path, headers=headers), 401, NO_KEY)
        assert_refused(*predict(keyed, digit, headers=headers), 401, NO_KEY)
    assert request(keyed, "GET", "/health") == (200, "ok")  # probes need no key
    assert_refused(*post_20_mb(keyed.url + "/predict", "urllib", False), 401, NO_KEY)  # read before refused
    # a browser opening the page without the key gets the 401 with the page, which holds nothing of the model
    status, html = request(keyed, "GET", "/", headers={"Accept": "text/html,*/*"})
    assert status == 401 and '<form id="lock"' in html and '"key": true' in html and '"classes": null' in html
    status, html = request(keyed, "GET", "/docs", headers={"Accept": "text/html"})  # Swagger UI, which asks too
    assert status == 401 and "SwaggerUIBundle" in html and "const KEYED = true" in html
    with_key = {"X-API-Key": KEY}
    status, answer = predict(keyed, digit, headers=with_key)
    assert status == 200 and answer["class"] == "1"
    assert request(keyed, "GET", "/info", headers=with_key)[1]["model"]["classes"][:2] == ["0", "1"]
    assert request(keyed, "GET", "/openapi.json", headers=with_key)[1]["components"]["securitySchemes"] == {
        "key": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}


def test_a_public_host_without_a_key_is_one_warning_line(tmp_path: Path, capsys, monkeypatch):
    """Checked before the model is loaded: here a missing one ends the command after the warning."""
    missing = str(tmp_path / "missing.pt")
    warning = ("mnist_lit: warning: --host 0.0.0.0 without an API key: anyone who can reach port 8000 can use "
               "this server; set MNIST_LIT_API_KEY (or --api-key) to require one\n")
    for env, args, warned in ((None, ["--host", "0.0.0.0"], True), (None, [], False), ("k", ["--host", "0.0.0.0"], False),
                              (None, ["--host", "0.0.0.0", "--api-key", "k"], False)):
        monkeypatch.delenv("LIT_SERVER_API_KEY", raising=False)
        if env:
            monkeypatch.setenv("MNIST_LIT_API_KEY", env)
        else:
            monkeypatch.delenv("MNIST_LIT_API_KEY", raising=False)
        assert run("serve", "--model", missing, *args) == 1
        err = capsys.readouterr().err
        assert err == (warning if warned else "") + f"mnist_lit: error: {missing}: no such model file\n", err
    monkeypatch.setenv("MNIST_LIT_API_KEY", " ")
    assert run("serve", "--model", missing) == 1
    assert capsys.readouterr().err == ("mnist_lit: error: --api-key (or MNIST_LIT_API_KEY): give a key of printable "
                                       "ASCII characters, not empty\n")


@pytest.mark.slow
def test_the_openapi_description_of_predict(server: Server):
    status, schema = request(server, "GET", "/openapi.json")
    assert status == 200 and "securitySchemes" not in schema.get("components", {})
    post = schema["paths"]["/predict"]["post"]
    form = post["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]
    field = schema["components"]["schemas"][form]
    assert field["required"] == ["image"] and field["properties"]["image"]["type"] == "string"
    assert field["properties"]["image"]["contentMediaType"] == "application/octet-stream"  # a file (OpenAPI 3.1)
    assert sorted(post["responses"]) == ["200", "400", "413", "415", "422"]
    assert sorted(schema["paths"]["/health"]["get"]["responses"]) == ["200", "503"]
    assert "/" not in schema["paths"]  # the page, not the API
    assert schema["components"]["schemas"]["Prediction"]["properties"]["class"]["enum"] == [str(d) for d in range(10)]
    status, html = request(server, "GET", "/docs")
    assert status == 200 and "/docs-assets/swagger-ui-bundle.js" in html and "http" not in html  # no CDN


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_answer_off_the_schema(keyed: Server, tmp_path: Path):
    """Requests generated from /openapi.json (valid and not, with and without the key), bounded in examples
    and time; every check but one: a valid form with an image that cannot be classified (1x1, blank) is
    rightly refused 422, which schemathesis's positive_data_acceptance counts as a failure."""
    done = subprocess.run([sys.executable, "-m", "schemathesis.cli", "run", f"{keyed.url}/openapi.json",
                           "--header", f"X-API-Key: {KEY}", "--checks", "all",
                           "--exclude-checks", "positive_data_acceptance", "--max-examples", "50",
                           "--max-time", "25", "--request-timeout", "20"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "passed" in done.stdout and "failure" not in done.stdout.split("SUMMARY")[-1].lower()
    assert keyed.proc.poll() is None and request(keyed, "GET", "/health") == (200, "ok")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["ckpt", "pt2", "onnx"])
def test_every_model_format_serves_the_same_answers(fmt: str, server: Server, models, tmp_path: Path):
    pt = models["dense512"]
    path = pt.with_suffix(".ckpt")
    if fmt != "ckpt":
        assert run("export", str(path), "--format", fmt, "--output", str(tmp_path / f"model.{fmt}")) == 0
        path = tmp_path / f"model.{fmt}"
    other = Server(path)
    try:
        image = png(stroke_digit())
        status, answer = predict(other, image)
        assert status == 200 and answer["probabilities"] == pytest.approx(predict(server, image)[1]["probabilities"],
                                                                            abs=1e-5)
    finally:
        other.stop()


# ---------------------------------------------------------------- the page


@pytest.mark.slow
def test_the_page_is_self_contained_and_keeps_its_dom_contract(server: Server):
    status, html = request(server, "GET", "/")
    assert status == 200 and isinstance(html, str)
    for needle in ('<canvas id="pad"', 'id="prediction"', '<button id="clear"', 'name="viewport"'):
        assert needle in html
    assert "http://" not in html and "https://" not in html and "<link" not in html  # no CDN: works offline
    assert '"classes": ["0", "1", "2"' in html


@pytest.mark.slow
def test_a_fashion_model_serves_garment_names(models):
    fashion = Server(models["fashion_mlp"])
    try:
        status, html = request(fashion, "GET", "/")
        assert "Draw a piece of clothing" in html and '"T-shirt/top", "Trouser"' in html
        status, answer = predict(fashion, png(stroke_digit()))
        assert status == 200 and answer["classes"][:2] == ["T-shirt/top", "Trouser"]
        assert answer["class"] == answer["classes"][answer["index"]]
    finally:
        fashion.stop()


# ---------------------------------------------------------------- starting and stopping


def test_bad_arguments_and_model_files_are_one_line_before_any_server(tmp_path: Path, capsys):
    (tmp_path / "broken.pt").write_bytes(b"not a model")
    for args, message in [
        (["--model", str(tmp_path / "missing.pt")], f"{tmp_path / 'missing.pt'}: no such model file"),
        (["--model", str(tmp_path / "broken.pt")], f"{tmp_path / 'broken.pt'}: cannot load the model"),
        (["--model", str(tmp_path / "broken.pt"), "--port", "80"], "--port 80: choose a port from 1024 to 65535"),
        (["--model", str(tmp_path / "broken.pt"), "--host", "example.org"], "--host example.org: LitServe listens on"),
        (["--model", str(tmp_path / "broken.pt"), "--max-batch-size", "0"], "--max-batch-size 0: give 1 (no batching) to 128"),
        (["--model", str(tmp_path / "broken.pt"), "--max-batch-size", "1000"], "--max-batch-size 1000: give 1"),
        (["--model", str(tmp_path / "broken.pt"), "--workers", "0"], "--workers 0: give 1 or more"),
    ]:
        assert run("serve", *args) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"mnist_lit: error: {message}") and err.count("\n") == 1, err


@pytest.mark.slow
def test_a_port_in_use_is_one_line(models, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run("serve", "--model", str(models["dense512"]), "--port", str(port)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"mnist_lit: error: port {port} on 127.0.0.1: Address already in use; choose another")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM", "SIGTERM to every process", "Ctrl-C"])
def test_stopping_the_server_stops_all_its_processes(how: str, models):
    running = Server(models["dense512"], "--workers", "2")
    workers = [cmd for cmd in running.processes().values() if "multiprocessing.spawn" in cmd]
    assert len(workers) == 2  # LitServe's inference processes, beside the server, its HTTP process and manager
    # kill and Kubernetes signal the server; systemd signals all its processes; a terminal's Ctrl-C too
    sig = signal.SIGINT if how == "Ctrl-C" else signal.SIGTERM
    out, err = running.stop(sig, group=how != "SIGTERM")
    assert running.proc.returncode == 0 and "Traceback" not in err, err
    assert out.startswith(f"Serving {models['dense512']} (dense512, batches of up to 16): open "
                          f"http://127.0.0.1:{running.port}/ to draw")
    assert out.splitlines()[1:] == ["Ready.", "Server stopped."]
    # multiprocessing's resource tracker ends once the server has closed its end of their pipe, by exiting:
    # a few milliseconds after it
    assert running.processes_left(5) == {}, "processes left serving after the server stopped"
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{running.url}/health", timeout=2)


@pytest.mark.slow
def test_a_killed_server_leaves_no_process_behind_and_frees_its_port(models):
    """SIGKILL to the server process alone (the OOM killer, `kill -9`): no handler runs, and LitServe's
    HTTP process, manager and inference workers once went on serving, orphaned."""
    running = Server(models["dense512"], "--workers", "2")
    children = set(running.processes()) - {running.proc.pid}
    assert len(children) >= 4, running.processes()  # HTTP process, queue manager, broker, 2 inference workers
    os.kill(running.proc.pid, signal.SIGKILL)
    running.proc.wait()
    assert running.processes_left(10) == {}, "processes of a killed server left running"
    with socket.socket() as probe:  # the port is free for the next server
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", running.port))


# ---------------------------------------------------------------- a real browser


def chromium():
    """Headless Chromium driven by selenium, or a skip that says what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    binary = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)
    driver_path = next((p for p in ("/usr/bin/chromedriver",) if Path(p).exists()), None)
    if not binary or not driver_path:
        pytest.skip("no Chromium here: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=900,800"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_path), options=options)


def draw(driver, pad, points: list[tuple[float, float]], kind: str = "mouse") -> None:
    """One stroke through `points` (fractions of the pad's size) with a mouse, pen or finger."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    size = pad.size
    pointer = PointerInput(kind, kind)
    actions = ActionBuilder(driver, mouse=pointer)
    # offsets from the pad's centre, as WebDriver takes them
    offset = [(round((x - 0.5) * size["width"]), round((y - 0.5) * size["height"])) for x, y in points]
    actions.pointer_action.move_to(pad, *offset[0]).pointer_down()
    for x, y in offset[1:]:
        actions.pointer_action.move_to(pad, x, y)
    actions.pointer_action.pointer_up()
    actions.perform()


@pytest.mark.slow
def test_drawing_on_the_page_in_a_real_browser(server: Server, tmp_path: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium()
    try:
        driver.get(server.url + "/")
        pad = driver.find_element(By.ID, "pad")
        prediction = driver.find_element(By.ID, "prediction")
        assert prediction.text == ""
        for kind in ("mouse", "pen", "touch"):
            draw(driver, pad, [(0.52, 0.15 + 0.05 * i) for i in range(15)], kind)  # a "1", top to bottom
            WebDriverWait(driver, 20).until(lambda d: prediction.text != "")
            assert prediction.text == "1", kind
            bars = driver.find_elements(By.CSS_SELECTOR, "#bars .pct")
            assert len(bars) == 10 and bars[1].text.endswith("%")
            # what the page shows is the server's answer for the pad's own pixels
            pixels = driver.execute_script("return document.getElementById('pad').toDataURL('image/png')")
            import base64

            status, answer = predict(server, base64.b64decode(pixels.split(",", 1)[1]))
            assert status == 200 and answer["class"] == prediction.text
            driver.save_screenshot(str(tmp_path / f"page_{kind}.png"))
            driver.find_element(By.ID, "clear").click()
            assert prediction.text == ""
        photo = tmp_path / "photo.jpg"  # the upload: a photo of a "1", answered as POST /predict answers it
        photo.write_bytes(png(stroke_digit(), "RGB", "JPEG"))
        driver.find_element(By.ID, "photo").send_keys(str(photo))
        WebDriverWait(driver, 20).until(lambda d: prediction.text != "")
        assert prediction.text == predict(server, photo.read_bytes())[1]["class"] == "1"
        (tmp_path / "blank.png").write_bytes(png(np.full((100, 100), 240.0)))  # the server's reason, shown
        driver.find_element(By.ID, "photo").send_keys(str(tmp_path / "blank.png"))
        message = driver.find_element(By.ID, "message")
        WebDriverWait(driver, 20).until(lambda d: message.text != "")
        assert (prediction.text, message.text) == ("", "no ink found (blank image)")
        for width in (390, 360, 320):  # phones: the pad fits the screen's width, nothing scrolls sideways
            driver.set_window_size(width, 800)
            inner = driver.execute_script("return window.innerWidth")
            assert 200 <= pad.size["width"] <= inner and driver.execute_script(
                "return document.documentElement.scrollWidth <= window.innerWidth"), width
    finally:
        driver.quit()


@pytest.mark.slow
def test_the_page_asks_for_the_key_once(keyed: Server, tmp_path: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium()
    try:
        driver.get(keyed.url + "/")
        lock, field = driver.find_element(By.ID, "lock"), driver.find_element(By.ID, "key")
        WebDriverWait(driver, 20).until(lambda d: lock.is_displayed())
        assert driver.find_elements(By.CSS_SELECTOR, "#bars .pct") == []  # no class names before the key
        field.send_keys("wrong")
        driver.find_element(By.CSS_SELECTOR, "#lock button").click()
        message = driver.find_element(By.ID, "keyMessage")
        WebDriverWait(driver, 20).until(lambda d: message.text != "")
        assert message.text == "The server refused this key." and lock.is_displayed()
        driver.save_screenshot(str(tmp_path / "page_key_refused.png"))
        field.clear()
        field.send_keys(KEY)
        driver.find_element(By.CSS_SELECTOR, "#lock button").click()
        WebDriverWait(driver, 20).until(lambda d: not lock.is_displayed())
        driver.get(keyed.url + "/")  # once: the browser keeps the key
        pad, prediction = driver.find_element(By.ID, "pad"), driver.find_element(By.ID, "prediction")
        WebDriverWait(driver, 20).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#bars .pct")) == 10)
        assert not driver.find_element(By.ID, "lock").is_displayed()
        draw(driver, pad, [(0.52, 0.15 + 0.05 * i) for i in range(15)])
        WebDriverWait(driver, 20).until(lambda d: prediction.text != "")
        assert prediction.text == "1"
        driver.save_screenshot(str(tmp_path / "page_key_accepted.png"))
    finally:
        driver.quit()


@pytest.mark.slow
def test_the_docs_page_uploads_an_image(server: Server, tmp_path: Path):
    """Swagger UI at /docs, from the server's own files: POST /predict's form sends a file and shows the answer."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    (tmp_path / "one.png").write_bytes(png(stroke_digit()))
    driver = chromium()
    try:
        driver.get(server.url + "/docs")
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#operations-default-predict"))
        driver.find_element(By.CSS_SELECTOR, "#operations-default-predict .opblock-summary").click()
        upload = WebDriverWait(driver, 20).until(lambda d: d.find_element(By.CSS_SELECTOR, "input[type=file]"))
        upload.send_keys(str(tmp_path / "one.png"))
        driver.find_element(By.CSS_SELECTOR, "button.execute").click()
        body = WebDriverWait(driver, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, ".live-responses-table"
                                                                                         " .response-col_description pre"))
        answer = json.loads(body.text)
        assert answer["class"] == "1" and len(answer["probabilities"]) == 10
        driver.execute_script("arguments[0].scrollIntoView()", body)
        driver.save_screenshot(str(tmp_path / "docs_upload.png"))
    finally:
        driver.quit()
