"""Load on `python -m mnist_lit serve`: C concurrent clients on localhost posting real MNIST test digits.

    python -m benchmarks.serve_load [--model checkpoints/cnn/model.pt] [--clients 1 8 32]
                                    [--servers workers=1 workers=2 api-servers=2] [--photos jpeg png]
                                    [--requests 3000] [--seconds 10] [--checkout DIR ...] [--rounds 1]

Run it from the repository root, as every benchmark (benchmarks/README.md).

For each server setting (`--servers`: serve's flags as name=value, joined by commas, e.g.
`workers=2,max-batch-size=1`) it starts the server, waits for /health, then for each C runs C keep-alive
connections, each posting one PNG at a time, until `--requests` answers or `--seconds` have passed,
whichever comes first. It prints requests/s, p50 and p99 latency, the error count (anything but a 200
with the right keys) and how many answers named the digit's true label.

Then the mixed load, for each of `--photos`: 8 connections, one of which posts a 9 MP photo of a digit
(3464 x 2598, a phone's, as JPEG or PNG) each time while the other 7 post digits; it prints the digits'
p50 and p99 (to set beside the plain load's at C = 8) and the photos' own p50.

The clients run in this process (asyncio, raw HTTP/1.1) on the same machine as the server, on loopback.
`--checkout` measures the server of another checkout of mnist_lit (a copy of an older commit: `git archive`);
given several, with `--rounds N`, it measures them in turn, N times over, so that a before and an after share
the machine's ups and downs.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks import REPO


def digits(count: int) -> list[tuple[bytes, int]]:
    """The first `count` MNIST test images as PNG files, with their labels."""
    from PIL import Image

    from mnist_lit.data import load_split

    images, labels = load_split(REPO / "data", "test")  # shipped
    out = []
    for image, label in zip(images[:count], labels[:count]):
        buffer = io.BytesIO()
        Image.fromarray(image[0].numpy()).save(buffer, format="PNG")
        out.append((buffer.getvalue(), int(label)))
    return out


def photo(kind: str) -> bytes:
    """A 9 MP photo of a "1" as a phone takes it: grey paper lit unevenly, sensor noise, a dark pen stroke."""
    from PIL import Image, ImageDraw

    width, height = 3464, 2598
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    paper = 200 + 30 * (x / width) - 20 * (y / height) + rng.normal(0, 4, (height, width))
    image = Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8)).convert("RGB")
    ImageDraw.Draw(image).line([(width * .47, height * .2), (width * .53, height * .8)], fill=(30, 30, 40),
                               width=width // 30)
    buffer = io.BytesIO()
    image.save(buffer, format=kind.upper(), **({"quality": 90} if kind == "jpeg" else {}))
    return buffer.getvalue()


def request_bytes(png: bytes, port: int) -> bytes:
    boundary = b"mnistlitload"
    body = (b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"image\"; filename=\"digit.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + png + b"\r\n--" + boundary + b"--\r\n")
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: multipart/form-data; "
            f"boundary={boundary.decode()}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def client(port: int, requests: list[tuple[bytes, int]], start: int, stop_at: float, budget: list[int],
                 latencies: list[float], results: dict[str, int]) -> None:
    """One keep-alive connection posting one image at a time; a failed request counts as an error and the
    connection is opened again."""
    i, connection = start, None
    while budget[0] > 0 and time.perf_counter() < stop_at:
        budget[0] -= 1
        payload, label = requests[i % len(requests)]
        i += 1
        try:
            if connection is None:
                connection = await asyncio.open_connection("127.0.0.1", port)
            reader, writer = connection
            sent = time.perf_counter()
            writer.write(payload)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), max(stop_at - sent, 0) + 5)
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            body = await asyncio.wait_for(reader.readexactly(length), 5)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, StopIteration, ValueError):
            results["errors"] += 1
            if connection is not None:
                connection[1].close()
            connection = None
            continue
        latencies.append(time.perf_counter() - sent)
        answer = json.loads(body) if head.startswith(b"HTTP/1.1 200") else {}
        if "index" not in answer or len(answer.get("probabilities", ())) != 10:
            results["errors"] += 1
        elif answer["index"] == label:
            results["right"] += 1
    if connection is not None:
        connection[1].close()


async def load(port: int, requests: list[tuple[bytes, int]], clients: int, total: int, seconds: float,
               photos: list[tuple[bytes, int]] | None = None) -> dict:
    """C clients posting digits; with `photos`, the first of them posts those instead (reported apart)."""
    latencies: list[float] = []
    photo_latencies: list[float] = []
    results = {"errors": 0, "right": 0}
    budget = [total]
    began = time.perf_counter()
    await asyncio.gather(*(client(port, photos, 0, began + seconds, budget, photo_latencies, results)
                           if photos and k == 0 else
                           client(port, requests, k * 7, began + seconds, budget, latencies, results)
                           for k in range(clients)))
    wall = time.perf_counter() - began
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    photo_ms = np.array(photo_latencies) * 1000 if photo_latencies else np.zeros(1)
    return {"clients": clients, "answers": len(latencies) + len(photo_latencies), "rps": len(latencies) / wall,
            "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "photos": len(photo_latencies),
            "photo_p50": float(np.percentile(photo_ms, 50)), **results}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, port: int, extra: list[str], checkout: Path) -> subprocess.Popen:
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a pipe nobody reads would stop the server when full
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(checkout), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "mnist_lit", "serve", "--model", model, "--port", str(port),
                             *extra], cwd=checkout, stdout=subprocess.DEVNULL, stderr=log, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"serve_load: the server stopped: {log.read().strip()}")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).status == 200:
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("serve_load: the server did not become healthy in 120 s")


def flags(setting: str) -> list[str]:
    """`workers=2,max-batch-size=1` as serve's flags: --workers 2 --max-batch-size 1."""
    out = []
    for pair in filter(None, setting.split(",")):
        name, _, value = pair.partition("=")
        out += [f"--{name.strip()}", value.strip()]
    return out


def row(name: str, clients: int | str, r: dict) -> str:
    return (f"{name:<26} {clients:>5} {r['answers']:>8} {r['rps']:>8.0f} {r['p50']:>8.1f} {r['p99']:>8.1f} "
            f"{r['errors']:>7} {r['right'] / max(r['answers'], 1):>7.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "checkpoints" / "cnn" / "model.pt"))
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=3000, help="at most this many requests per run")
    parser.add_argument("--seconds", type=float, default=10.0, help="at most this long per run")
    parser.add_argument("--images", type=int, default=500, help="distinct test digits posted")
    parser.add_argument("--servers", nargs="+", default=["workers=1", "workers=2", "api-servers=2"],
                        metavar="NAME=VALUE,...", help="server settings to compare, as serve's flags")
    parser.add_argument("--photos", nargs="*", default=["jpeg", "png"], choices=["jpeg", "png"],
                        help="the mixed load's 9 MP photo, as each of these (none: no mixed load)")
    parser.add_argument("--checkout", type=Path, nargs="+", default=[REPO],
                        help="the mnist_lit checkout(s) whose server is measured, in turn")
    parser.add_argument("--rounds", type=int, default=1, help="times over the checkouts (default 1)")
    args = parser.parse_args()
    if not Path(args.model).is_file():
        raise SystemExit(f"serve_load: {args.model}: no such model file; train one with `make train`")
    photos = {kind: photo(kind) for kind in args.photos}
    print(f"model {args.model}; {os.cpu_count()} CPUs; up to {args.requests} requests or {args.seconds:g} s per "
          "run; photos: " + ", ".join(f"{k} {len(v) / 1e6:.1f} MB" for k, v in photos.items()))
    for turn in range(args.rounds):
        for checkout in args.checkout:
            print(f"round {turn + 1}: server from {checkout.resolve()} ({time.strftime('%H:%M:%S')}, load average "
                  f"{os.getloadavg()[0]:.1f})")
            print(f"{'server':<26} {'C':>5} {'answers':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
                  f"{'right':>7}")
            for setting in args.servers:
                measure(args, checkout.resolve(), setting, photos)


def measure(args: argparse.Namespace, checkout: Path, setting: str, photos: dict[str, bytes]) -> None:
    """One server setting of one checkout: the plain loads, then the mixed ones, a row each."""
    port = free_port()
    server = start_server(args.model, port, flags(setting), checkout)
    try:
        requests = [(request_bytes(png, port), label) for png, label in digits(args.images)]
        asyncio.run(load(port, requests, 4, 200, 5.0))  # warm-up: first calls, connections, caches
        for clients in args.clients:
            print(row(setting, clients, asyncio.run(load(port, requests, clients, args.requests, args.seconds))),
                  flush=True)
        for kind, data in photos.items():
            r = asyncio.run(load(port, requests, 8, args.requests, args.seconds, [(request_bytes(data, port), 1)]))
            print(row(setting, f"7+1{kind[0]}", r) + f"   ({r['photos']} photos, p50 {r['photo_p50']:.0f} ms)",
                  flush=True)
    finally:
        server.terminate()  # SIGTERM: the server stops its LitServe processes
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
