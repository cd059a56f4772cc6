"""Load test of ``cellclf serve``: concurrent clients posting pbc-dev images for a while.

In one run, on the same images:

1. ``cellembed extract`` (the library call, the model's spec and weights) on ``--extract-images``
   images of the folder: the reference images/s;
2. ``cellclf serve MODEL`` started on 127.0.0.1 (a free port) as a subprocess;
3. ``--clients`` threads, each posting one image at a time (raw ``image/jpeg`` body to
   ``/predict``) for ``--seconds``, while another thread asks ``/health`` every 0.5 s.

Printed: requests/s, images/s, latency p50/p95/p99, errors (any non-200 or connection
failure), the slowest /health answer, the server's peak RSS (VmHWM of its process) and the
ratio of its images/s to extract's. Targets (issue 12): 0 errors; images/s >= 70% of
extract's; /health within 1 s throughout. Bounded: at most 16 clients and 600 s, 127.0.0.1 only.

With ``--big-uploads N``, afterwards N (at most 4) concurrent multipart requests of 16 images
padded to ``--big-mb`` in all: the server's memory before, during and after, and its answers
(the upload budget, ``--max-inflight-mb``: 200, 503 with Retry-After, or 413).

Usage:
    python bench/serve_load.py --model RUN_DIR [--images ../shared/datasets/pbc-dev]
        [--clients 4] [--seconds 60] [--extract-images 160] [--big-uploads 2 --big-mb 90]
        [--serve-options '--max-inflight-mb 100']
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS = ROOT.parent / "shared" / "models" / "xception_imagenet_notop.weights.h5"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def request(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 120) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "image/jpeg"} if body is not None else {}
        connection.request(method, path, body=body, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def peak_rss_mb(pid: int, field: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def multipart(parts: list[bytes]) -> tuple[bytes, str]:
    boundary = "cellclf-bench-boundary"
    chunks = []
    for i, data in enumerate(parts):
        chunks.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{i}.jpg\"\r\n"
                      "Content-Type: image/jpeg\r\n\r\n".encode())
        chunks += [data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def big_uploads(port: int, pid: int, count: int, megabytes: float, image: bytes) -> None:
    """``count`` concurrent multipart requests of 16 images padded to ``megabytes`` in all
    (a JPEG with trailing bytes still decodes): the server's memory before, during and after,
    and the answers (the upload budget: 200, 503 or 413)."""
    per_image = int(megabytes * 1e6 / 16)
    body, kind = multipart([image + bytes(max(0, per_image - len(image)))] * 16)
    before = peak_rss_mb(pid, "VmRSS")
    peak, answers, done = [before], [], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak.append(peak_rss_mb(pid, "VmRSS"))
            time.sleep(0.05)

    def post() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            connection.request("POST", "/predict", body=body, headers={"Content-Type": kind})
            answer = connection.getresponse()
            answers.append(f"{answer.status} {answer.read()[:90].decode(errors='replace')}")
        except OSError as exc:
            answers.append(f"connection: {exc}")
        finally:
            connection.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    senders = [threading.Thread(target=post) for _ in range(count)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join()
    time.sleep(1.0)
    done.set()
    watcher.join()
    after = peak_rss_mb(pid, "VmRSS")
    print(f"\n{count} concurrent multipart uploads of 16 images, {len(body) / 1e6:.0f} MB each:")
    for answer in answers:
        print(f"  {answer}")
    print(f"server RSS: {before:.0f} MB before, {max(peak):.0f} MB at most during, {after:.0f} MB 1 s after")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "datasets" / "pbc-dev")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--extract-images", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", default=os.environ.get("CELLEMBED_WEIGHTS") or str(DEFAULT_WEIGHTS))
    parser.add_argument("--big-uploads", type=int, default=0,
                        help="after the load, this many concurrent multipart uploads of 16 padded images (0: none)")
    parser.add_argument("--big-mb", type=float, default=320.0, help="megabytes of each big upload")
    parser.add_argument("--serve-options", default="", help="extra cellclf serve options, e.g. '--max-inflight-mb 400'")
    args = parser.parse_args()
    if not 1 <= args.clients <= 16 or not 1 <= args.seconds <= 600:
        parser.error("--clients must be 1-16 and --seconds 1-600")

    from cellclf.persistence import load_classifier
    from cellembed import extract
    from cellembed.discovery import find_images

    predictor = load_classifier(args.model)
    files = [Path(image.absolute) for image in find_images(args.images)]
    rng = random.Random(args.seed)
    rng.shuffle(files)

    # 1. the reference: cellembed extract on the same kind of images, the model's spec
    with tempfile.TemporaryDirectory() as folder:
        sample = Path(folder) / "images"
        sample.mkdir()
        for i, file in enumerate(files[: args.extract_images]):
            (sample / f"{i:05d}{file.suffix}").symlink_to(file)
        result = extract(sample, Path(folder) / "e.parquet", spec=predictor.spec, weights=args.weights, progress=False)
        extract_rate = result.embedded / result.embed_seconds
    print(f"cellembed extract: {result.embedded} images in {result.embed_seconds:.1f} s = {extract_rate:.2f} images/s "
          f"(spec: views {predictor.spec.views}, crop {predictor.spec.crop}, pooling {predictor.spec.pooling})", flush=True)

    # 2. the server
    port = free_port()
    command = [str(Path(sys.executable).parent / "cellclf"), "serve", str(args.model), "--port", str(port),
               "--weights", args.weights, *args.serve_options.split()]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        started = time.monotonic()
        while True:
            try:
                if request(port, "GET", "/health", timeout=2)[0] == 200:
                    break
            except OSError:
                if server.poll() is not None:
                    sys.exit(f"the server stopped: {server.communicate()[0]}")
                time.sleep(0.5)
        print(f"server ready in {time.monotonic() - started:.1f} s (pid {server.pid}, port {port})", flush=True)
        bodies = [file.read_bytes() for file in files[args.extract_images : args.extract_images + 400]] or \
            [file.read_bytes() for file in files[:400]]
        request(port, "POST", "/predict", bodies[0])  # warm-up, not counted

        # 3. the load
        latencies: list[float] = []
        errors: list[str] = []
        health: list[float] = []
        stop = time.monotonic() + args.seconds
        lock = threading.Lock()

        def client(number: int) -> None:
            pick = random.Random(args.seed + number)
            while time.monotonic() < stop:
                body = pick.choice(bodies)
                tick = time.perf_counter()
                try:
                    status, answer = request(port, "POST", "/predict", body)
                except OSError as exc:
                    status, answer = -1, str(exc).encode()
                with lock:
                    if status == 200:
                        latencies.append(time.perf_counter() - tick)
                    else:
                        errors.append(f"{status}: {answer[:100]!r}")

        def prober() -> None:
            while time.monotonic() < stop:
                tick = time.perf_counter()
                try:
                    ok = request(port, "GET", "/health", timeout=10)[0] == 200
                except OSError:
                    ok = False
                health.append(time.perf_counter() - tick if ok else float("inf"))
                time.sleep(0.5)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)] + [threading.Thread(target=prober)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - began
        rss = peak_rss_mb(server.pid)
        if args.big_uploads:
            big_uploads(port, server.pid, min(args.big_uploads, 4), args.big_mb, bodies[0])
    finally:
        server.terminate()
        server.wait(timeout=60)

    done = np.array(latencies)
    rate = len(done) / wall
    print(f"\n{args.clients} clients for {wall:.1f} s, one image per request (raw body), 127.0.0.1")
    print(f"requests: {len(done)} ok, {len(errors)} errors" + (f" (first: {errors[0]})" if errors else ""))
    print(f"throughput: {rate:.2f} requests/s = {rate:.2f} images/s")
    if len(done):
        p50, p95, p99 = np.percentile(done, [50, 95, 99])
        print(f"latency: p50 {p50:.2f} s, p95 {p95:.2f} s, p99 {p99:.2f} s, max {done.max():.2f} s")
    print(f"/health: {len(health)} probes, slowest {max(health):.3f} s, median {np.median(health):.3f} s")
    print(f"server peak RSS: {rss:.0f} MB")
    ratio = rate / extract_rate
    print(f"served / extract images per second: {rate:.2f} / {extract_rate:.2f} = {ratio:.0%}")
    print("targets: 0 errors {}; images/s >= 70% of extract {}; /health within 1 s {}".format(
        "met" if not errors else "NOT met", "met" if ratio >= 0.7 else "NOT met",
        "met" if max(health) <= 1.0 else "NOT met"))


if __name__ == "__main__":
    main()
