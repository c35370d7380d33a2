"""Load check of ``cora serve``: a bounded loop of concurrent /answer requests from this process to a server
started as a second process on loopback. Reports requests/s, p50/p95 latency, errors, and the server's resident
memory (from /proc) before, during and after, to show it stays flat.

Then an overload burst: a second server with ``--timeout-s T`` gets, all at once, 4x the requests it can answer
within T at the throughput just measured. Every request must be answered (200) or refused at once (503 with
Retry-After) within T, and a request sent after the burst must be answered within one T (recovery).

    python benchmarks/serve_load.py --pipeline $CORA_HOME/demo/pipeline --requests 200 --concurrency 8
    python benchmarks/serve_load.py --quick      # tiny random models (< 1 minute)

The questions cycle through cora/resources/sample/questions.jsonl (12 languages). The server runs with its
defaults (one model thread, concurrent questions batched for up to 10 ms).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, percentiles, print_table, synthetic_texts, tiny_encoder_dir, write_results  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "cora" / "resources" / "sample" / "questions.jsonl"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_pipeline(folder: Path) -> Path:
    """A pipeline of a 2-layer random encoder and span head over 200 synthetic passages (plumbing speed only)."""
    import torch

    from cora.datastore import Datastore, Passage
    from cora.encoder import Encoder, load_hf_encoder
    from cora.index import build_index
    from cora.pipeline import Pipeline
    from cora.reader import ExtractiveReader, ReaderConfig
    from cora.reader.extractive import SpanModel

    enc_dir = tiny_encoder_dir(folder / "encoder")
    texts = synthetic_texts(200, words=60)
    ds = Datastore.build([Passage(f"p{i}", "en", "", t, f"g{i}") for i, t in enumerate(texts)], folder / "ds")
    build_index(ds, Encoder.from_pretrained(str(enc_dir), device="cpu"), folder / "index", str(enc_dir),
                factory="Flat", show_progress=False)
    torch.manual_seed(0)
    model, tokenizer = load_hf_encoder(str(enc_dir))
    ExtractiveReader(SpanModel(model), tokenizer, ReaderConfig(model=str(enc_dir), max_length=128),
                     device="cpu").save_pretrained(folder / "reader")
    return Pipeline.create(folder / "pipeline", folder / "index", folder / "reader", k=5)


def post(url: str, body: dict, timeout: float = 120, headers: dict | None = None) -> tuple[int, float]:
    """(status, seconds); ``headers``, when given, receives the response headers."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            res.read()
            status, got = res.status, res.headers
    except urllib.error.HTTPError as err:
        status, got = err.code, err.headers
    except OSError:
        status, got = -1, {}
    if headers is not None:
        headers.update(dict(got or {}))
    return status, time.perf_counter() - t0


def run_burst(url: str, questions: list[dict], n: int, timeout_s: float) -> dict:
    """n requests at once; then the time until a new request is answered again."""
    results = []
    lock = threading.Lock()
    go = threading.Event()

    def one(i):
        q = questions[i % len(questions)]
        headers: dict = {}
        go.wait()
        status, seconds = post(url + "/answer", {"question": q["question"], "lang": q.get("lang")},
                               timeout=10 * timeout_s, headers=headers)
        with lock:
            results.append((status, seconds, "Retry-After" in headers or "retry-after" in headers))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join()
    t0 = time.perf_counter()
    recovery = None
    while time.perf_counter() - t0 < 10 * timeout_s:
        if post(url + "/answer", {"question": questions[0]["question"]}, timeout=10 * timeout_s)[0] == 200:
            recovery = round(time.perf_counter() - t0, 3)
            break
        time.sleep(0.05)
    statuses = [s for s, _, _ in results]
    slowest = max(s for _, s, _ in results)
    return {"burst": n, "timeout_s": timeout_s, "answered": statuses.count(200), "refused_503": statuses.count(503),
            "retry_after_on_503": all(r for s, _, r in results if s == 503), "timed_out_504": statuses.count(504),
            "other": sum(s not in (200, 503, 504) for s in statuses),
            **percentiles([s for _, s, _ in results]), "max_ms": round(1000 * slowest, 1),
            "all_within_timeout": slowest <= timeout_s, "recovery_s": recovery}


@contextlib.contextmanager
def serving(pipeline: Path, extra: list[str] = ()):
    """``cora serve`` on a free loopback port as a second process; yields (url, process)."""
    port = free_port()
    # The server's log goes to a file: a pipe nobody reads fills up (64 KB of access log) and blocks the server.
    log = tempfile.TemporaryFile()
    server = subprocess.Popen([sys.executable, "-m", "cora.cli", "serve", "--pipeline", str(pipeline), "--port",
                               str(port), "--device", "cpu", *extra], stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 600
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    log.seek(0)
                    raise SystemExit("server did not start:\n" + log.read().decode()[-3000:]) from None
                time.sleep(0.5)
        yield url, server
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def run_load(url: str, questions: list[dict], n: int, concurrency: int, pid: int) -> dict:
    lock = threading.Lock()
    next_i, latencies, statuses, memory = 0, [], [], []

    def worker():
        nonlocal next_i
        while True:
            with lock:
                if next_i >= n:
                    return
                i = next_i
                next_i += 1
            q = questions[i % len(questions)]
            status, seconds = post(url + "/answer", {"question": q["question"], "lang": q.get("lang")})
            with lock:
                latencies.append(seconds)
                statuses.append(status)
                if len(statuses) % max(1, n // 10) == 0:
                    memory.append(round(rss_mb(pid), 1))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"requests": n, "concurrency": concurrency, "seconds": round(wall, 2),
            "requests_per_s": round(n / wall, 2), **percentiles(latencies),
            "errors": sum(s != 200 for s in statuses), "rss_mb_during": memory}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", help="pipeline folder to serve (e.g. the one 'cora demo' writes)")
    ap.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="concurrent clients (levels)")
    ap.add_argument("--burst-timeout-s", type=float, default=5.0,
                    help="--timeout-s of the server the overload burst is sent to (default 5; 0: no burst)")
    ap.add_argument("--max-burst", type=int, default=400, help="most requests in the burst (threads here)")
    ap.add_argument("--quick", action="store_true", help="tiny random pipeline, few requests")
    ap.add_argument("--out", help="write results JSON here")
    args = ap.parse_args(argv)
    questions = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]

    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            pipeline = tiny_pipeline(Path(tmp))
            args.requests, args.concurrency, args.burst_timeout_s = 24, [1, 4], 2.0
            questions = [{"question": t[:80], "lang": "en"} for t in synthetic_texts(10, words=8, seed=1)]
        elif args.pipeline:
            pipeline = Path(args.pipeline)
        else:
            raise SystemExit("give --pipeline DIR (e.g. the pipeline 'cora demo' writes) or --quick")
        with serving(pipeline) as (url, server):
            post(url + "/answer", {"question": questions[0]["question"]})  # warm-up
            rss_start = round(rss_mb(server.pid), 1)
            rows = []
            for c in args.concurrency:
                rows.append(run_load(url, questions, args.requests, c, server.pid))
            rss_end = round(rss_mb(server.pid), 1)
            with urllib.request.urlopen(url + "/info", timeout=10) as res:
                info = json.loads(res.read())
        burst = None
        if args.burst_timeout_s > 0:
            capacity = max(r["requests_per_s"] for r in rows) * args.burst_timeout_s
            n = min(args.max_burst, max(8, round(4 * capacity)))
            with serving(pipeline, ["--timeout-s", str(args.burst_timeout_s)]) as (url, _):
                for _ in range(20):  # warm-up until answered: the server measures its speed on it
                    if post(url + "/answer", {"question": questions[0]["question"]})[0] == 200:
                        break
                with urllib.request.urlopen(url + "/info", timeout=10) as res:
                    before = json.loads(res.read())["load"]
                burst = run_burst(url, questions, n, args.burst_timeout_s)
                burst["capacity_per_timeout"] = round(capacity, 1)
                with urllib.request.urlopen(url + "/info", timeout=10) as res:
                    burst["server_load"] = {"before": before, "after": json.loads(res.read())["load"]}

    print_table(rows, ["concurrency", "requests", "requests_per_s", "p50_ms", "p95_ms", "errors"])
    print(f"server RSS: {rss_start} MB after warm-up, {rss_end} MB at the end; during: "
          + "; ".join(str(r["rss_mb_during"]) for r in rows))
    print(f"batching: {info['batching']}")
    if burst:
        print(f"\noverload burst: {burst['burst']} requests at once (4 x {burst['capacity_per_timeout']} answerable "
              f"within --timeout-s {burst['timeout_s']:g})")
        print_table([burst], ["answered", "refused_503", "timed_out_504", "other", "p50_ms", "max_ms",
                              "all_within_timeout", "recovery_s"])
    write_results(args.out, {"machine": machine(), "pipeline": str(args.pipeline or "tiny"), "rows": rows,
                             "rss_mb_start": rss_start, "rss_mb_end": rss_end, "batching": info["batching"],
                             "datastore": info["datastore"], "burst": burst})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
