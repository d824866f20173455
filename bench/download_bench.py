"""Downloads behind nginx (issue 13): landsurf at a path prefix, the API authorising each download and nginx
sending the bytes (`X-Accel-Redirect`), against the same nginx serving the same files directly.

    .venv/bin/python -m bench.download_bench                 # 250 MB file, 200 × 1 MB, 100 × 64 KiB ranges, 5 rounds
    .venv/bin/python -m bench.download_bench --rounds 3 --big-mb 100
    .venv/bin/python -m bench.download_bench --resume-only     # only the resumed-download figure
    .venv/bin/python -m bench.download_bench --direct --rounds 7   # `landsurf serve` alone against nginx
    .venv/bin/python -m bench.download_bench --direct --compare-checkout ../before --compare-label "commit X"

- baseline: Debian's nginx (started here on loopback, `sendfile on`, `tcp_nopush off` — with it on, keep-alive
  Range requests wait ~44 ms each, shared spec tiles-downloads.md) serving the store directory as static files,
  its best documented setup for files;
- landsurf: the same nginx with the repository's `infra/nginx/landsurf.locations.conf.template` at `/landsurf/`,
  in front of `landsurf serve` (1 worker) with `LANDSURF_ACCEL_REDIRECT`;
- the clients are curl processes (as in the shared measurement): one big file by one client and by 4 in
  parallel; 200 small files by 8 clients with keep-alive; 100 chained 64 KiB Range requests on one connection
  (GDAL's /vsicurl/ pattern);
- rounds interleave baseline and landsurf (baseline first in even rounds); each figure is the median of the
  per-round ratios, with min–max. Writes bench/out/download.json and prints Markdown.
- resume (issue 11): `landsurf download`'s fetch of the big file through nginx + X-Accel, its connection cut at
  ~40 % (a loopback relay drops it, buffered bytes included), then the same command again: the bytes the
  server sent for the resumed transfer (counted by the relay, headers included) against the bytes that were
  missing, and the checksum verified. Written into the same JSON (`resume`), or bench/out/download-resume.json
  with --resume-only.
- direct (issue 11, `--direct`): `landsurf serve` answering downloads itself, no nginx in front (uvicorn with
  httptools + uvloop as installed; one worker, and one worker per core), against nginx serving the same files
  from the store directory, the same four workloads; writes bench/out/download-direct.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from string import Template

import httpx

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _files(store: Path, big_mb: int, small: int) -> tuple[str, list[str]]:
    data = store / "bench"
    (data / "small").mkdir(parents=True, exist_ok=True)
    big = data / "big.tif"
    with big.open("wb") as f:
        for _ in range(big_mb):
            f.write(os.urandom(1 << 20))
    names = []
    for n in range(small):
        (data / "small" / f"f{n:03d}.tif").write_bytes(os.urandom(1_000_000))
        names.append(f"bench/small/f{n:03d}.tif")
    return "bench/big.tif", names


def _curl(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(["curl", "-sS", "-o", "/dev/null", "--fail", *args], check=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - start


def _parallel(jobs: list[list[str]]) -> float:
    start = time.perf_counter()
    procs = [subprocess.Popen(["curl", "-sS", "--fail", *j], stdout=subprocess.DEVNULL) for j in jobs]
    for p in procs:
        assert p.wait() == 0
    return time.perf_counter() - start


def measure(base: str, big: str, small: list[str], size: int) -> dict[str, float]:
    """One round against one base URL: MB/s for the big file (1 and 4 clients), seconds for the small files,
    ms per 64 KiB range."""
    url = f"{base}/{big}"
    one = size / _curl([url]) / 1e6
    four = 4 * size / _parallel([[url, "-o", "/dev/null"] for _ in range(4)]) / 1e6
    chunks = [small[i::8] for i in range(8)]
    jobs = []
    for chunk in chunks:
        args: list[str] = []
        for name in chunk:
            args += ["--fail", f"{base}/{name}", "-o", "/dev/null", "--next"]
        jobs.append(args[:-1])
    small_s = _parallel(jobs)
    args = []
    step = max(1, (size - 65536) // 100)
    for k in range(100):
        start = k * step
        args += ["--fail", "-w", "%{http_code} %{size_download} %{time_total}\\n", "-r", f"{start}-{start + 65535}",
                 url, "-o", "/dev/null", "--next"]
    start_t = time.perf_counter()
    out = subprocess.run(["curl", "-sS", *args[:-1]], check=True, stdin=subprocess.DEVNULL, capture_output=True,
                         text=True).stdout
    ranges_ms = (time.perf_counter() - start_t) / 100 * 1000
    # curl's own time of each transfer: the same requests without the start of the curl process
    lines = [line.split() for line in out.splitlines()]
    assert len(lines) == 100 and all(c == "206" and n == "65536" for c, n, _ in lines), out[:300]
    per = [float(t) * 1000 for _, _, t in lines]
    return {"big_1_mbps": one, "big_4_mbps": four, "small_200_s": small_s, "range_64k_ms": ranges_ms,
            "range_64k_transfer_ms": statistics.mean(per)}


def measure_resume(url: str, relay, local: Path, work: Path, cut_at: float = 0.4) -> dict[str, float]:
    """The big file fetched by `landsurf download`'s code, cut at `cut_at` of its size, then resumed."""
    import hashlib
    import threading

    from processing.download_client import (Downloader, DownloadOptions, FileJob, FileFailed, Report,
                                            TokenSource)

    size = local.stat().st_size
    h = hashlib.sha256()
    with local.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    out = work / "resume"
    out.mkdir()
    job = FileJob("bench", "big", "data", url, out / "big.bin", size, "1220" + h.hexdigest())
    options = DownloadOptions(parallel=1, retries=0, progress=False, backoff_s=0.1)
    part = out / "big.bin.part"
    with httpx.Client(timeout=60) as client:
        first = Report()
        dl = Downloader(url.rsplit("/download/", 1)[0], out, options, TokenSource(), client, first, lambda n: None)
        outcome: dict[str, object] = {}

        def fetch() -> None:
            try:
                outcome["done"] = dl.fetch(job)
            except FileFailed as exc:
                outcome["failed"] = str(exc)

        relay.rate = 100e6  # 100 MB/s, so that the cut lands near `cut_at`
        worker = threading.Thread(target=fetch)
        worker.start()
        while worker.is_alive():
            if part.exists() and part.stat().st_size >= cut_at * size:
                relay.cut()
                break
            time.sleep(0.002)
        worker.join(120)
        assert "failed" in outcome, f"the transfer was not interrupted: {outcome}"
        have = part.stat().st_size
        relay.rate, relay.down = None, 0
        second = Report()
        dl = Downloader(url.rsplit("/download/", 1)[0], out, options, TokenSource(), client, second, lambda n: None)
        started = time.perf_counter()
        assert dl.fetch(job) == "fetched"
        seconds = time.perf_counter() - started
    assert (out / "big.bin").stat().st_size == size and second.bytes_resumed == have
    return {"size": size, "interrupted_at": have, "missing": size - have, "resumed_body_bytes": second.bytes_received,
            "resumed_wire_bytes": relay.down, "re_sent": second.bytes_received - (size - have),
            "overhead_bytes": relay.down - (size - have), "resume_seconds": seconds,
            "whole_file_refetch_bytes": size}


def _ratios(rounds: list[dict], modes: dict[str, str]) -> dict[str, dict[str, float]]:
    """Per-round ratios to nginx (higher is better: throughput over nginx's, nginx's time over the mode's)."""
    ratios: dict[str, list[float]] = {}
    for rnd in rounds:
        n = rnd["nginx"]
        for mode, label in modes.items():
            m = rnd[mode]
            ratios.setdefault(f"{label}: big file, 1 client", []).append(m["big_1_mbps"] / n["big_1_mbps"])
            ratios.setdefault(f"{label}: big file, 4 clients", []).append(m["big_4_mbps"] / n["big_4_mbps"])
            ratios.setdefault(f"{label}: 200 × 1 MB, 8 clients", []).append(n["small_200_s"] / m["small_200_s"])
            ratios.setdefault(f"{label}: 64 KiB ranges, one connection", []).append(
                n["range_64k_transfer_ms"] / m["range_64k_transfer_ms"])
            ratios.setdefault(f"{label}: 64 KiB ranges, with the curl process's start", []).append(
                n["range_64k_ms"] / m["range_64k_ms"])
    return {k: {"median": statistics.median(v), "min": min(v), "max": max(v), "rounds": v}
            for k, v in ratios.items()}


def _serve(settings, port: int, workers: int, log: Path, cwd: Path = ROOT, **env: str) -> subprocess.Popen:
    """`landsurf serve` as a user runs it, in a child process, ready when /health answers."""
    from tests.conftest import env_for

    proc = subprocess.Popen([sys.executable, "-m", "processing.cli", "serve", "--port", str(port),
                             "--workers", str(workers)], env=env_for(settings, **env), cwd=cwd,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"landsurf serve exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.terminate()
    raise RuntimeError(f"landsurf serve did not become ready: {log.read_text()[-2000:]}")


def _server_info() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for pkg in ("uvicorn", "starlette", "httptools", "uvloop"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None  # uvicorn falls back to h11 / asyncio
    out["nginx"] = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip()
    return out


def direct(args: argparse.Namespace) -> None:
    """`landsurf serve` answering downloads itself (no proxy) against nginx serving the store directory."""
    from catalog.download import CHUNK
    from catalog.embedded import EmbeddedCluster
    from catalog.settings import CatalogSettings
    from processing.setup import prepare_database

    work = Path(tempfile.mkdtemp(prefix="landsurf-dlbench-"))
    settings = CatalogSettings(home=work / "home", public_url="http://127.0.0.1:1")
    cluster = EmbeddedCluster(settings)
    procs: list[subprocess.Popen] = []
    workers = sorted({1, os.cpu_count() or 1})
    try:
        cluster.start()
        prepare_database(settings)
        store = settings.store_dir
        big, small = _files(store, args.big_mb, args.small)
        size = (store / big).stat().st_size
        port = _free_port()
        conf = work / "nginx"
        for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (conf / d).mkdir(parents=True)
        (conf / "nginx.conf").write_text(f"""
user root; daemon off; worker_processes {args.nginx_workers}; pid {conf}/nginx.pid; error_log {conf}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    include /etc/nginx/mime.types; access_log off;
    client_body_temp_path {conf}/body; proxy_temp_path {conf}/proxy; fastcgi_temp_path {conf}/fastcgi;
    uwsgi_temp_path {conf}/uwsgi; scgi_temp_path {conf}/scgi;
    sendfile on; tcp_nodelay on; tcp_nopush off; keepalive_requests 10000;
    server {{ listen 127.0.0.1:{port}; location /direct/ {{ alias {store}/; }} }}
}}
""")
        procs.append(subprocess.Popen([NGINX, "-c", str(conf / "nginx.conf")], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        bases = {"nginx": f"http://127.0.0.1:{port}/direct"}
        for w in workers:
            api_port = _free_port()
            url = f"http://127.0.0.1:{api_port}"
            procs.append(_serve(settings, api_port, w, work / f"serve-{w}.log", LANDSURF_PUBLIC_URL=url))
            bases[f"landsurf-{w}"] = f"{url}/download"
        if args.compare_checkout:  # the same serve from another checkout (cwd first on sys.path): before/after
            api_port = _free_port()
            url = f"http://127.0.0.1:{api_port}"
            procs.append(_serve(settings, api_port, 1, work / "serve-other.log", cwd=Path(args.compare_checkout),
                                LANDSURF_PUBLIC_URL=url))
            bases["landsurf-1-other"] = f"{url}/download"
        floor_port = _free_port()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "bench.asgi_floor:app", "--port", str(floor_port), "--log-level",
             "warning", "--no-access-log", "--lifespan", "off"], cwd=ROOT, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=os.environ | {"LANDSURF_FLOOR_ROOT": str(store)}))
        bases["floor"] = f"http://127.0.0.1:{floor_port}/download"
        time.sleep(1.5)
        want = (store / big).read_bytes()[1000:1000 + 65536]
        for name, base in bases.items():  # every server answers the same bytes, Range included
            got = httpx.get(f"{base}/{big}", headers={"Range": "bytes=1000-66535"})
            assert got.status_code == 206 and got.content == want, (name, got.status_code, got.headers)
        for base in bases.values():  # warm the page cache and the servers
            measure(base, big, small[:16], size)
        rounds, loads = [], []
        names = list(bases)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]  # each server takes each slot in turn
            if r % 2:
                order.reverse()
            loads.append(os.getloadavg()[0])
            rounds.append({"order": order, **{name: measure(bases[name], big, small, size) for name in order}})
        modes = {f"landsurf-{w}": f"landsurf serve, {w} worker{'s' if w > 1 else ''}" for w in workers}
        if args.compare_checkout:
            modes["landsurf-1-other"] = f"landsurf serve of {args.compare_label}, 1 worker"
        modes["floor"] = "bare ASGI app on uvicorn (floor), 1 worker"
        result = {"command": "python -m bench.download_bench " + " ".join(sys.argv[1:]),
                  "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                              "load_avg_per_round": loads, "load_avg_end": os.getloadavg()},
                  "servers": _server_info(), "chunk_bytes": CHUNK, "big_bytes": size, "small_files": len(small),
                  "rounds": rounds, "ratios": _ratios(rounds, modes),
                  "medians": {name: {k: statistics.median(r[name][k] for r in rounds) for k in rounds[0][name]}
                              for name in bases}}
        OUT.mkdir(exist_ok=True)
        (OUT / args.out).write_text(json.dumps(result, indent=2))
        print("| landsurf serve alone ÷ nginx serving the same files (higher is better) | median | min–max |")
        print("|---|---|---|")
        for k, v in result["ratios"].items():
            print(f"| {k} | {v['median']:.2f} | {v['min']:.2f}–{v['max']:.2f} |")
        for name, med in result["medians"].items():
            print(f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in med.items()))
        print(f"load average per round: {', '.join(f'{x:.1f}' for x in loads)}")
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--big-mb", type=int, default=250)
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--resume-only", action="store_true", help="only the resumed-download figure")
    parser.add_argument("--direct", action="store_true", help="`landsurf serve` alone (no nginx in front)")
    parser.add_argument("--nginx-workers", default="auto", help="nginx worker_processes (--direct; Debian's default)")
    parser.add_argument("--compare-checkout", help="another checkout (e.g. a git worktree of an earlier commit) "
                        "whose `landsurf serve` joins the rounds (--direct): before/after in one run")
    parser.add_argument("--compare-label", default="the other checkout", help="its name in the table")
    parser.add_argument("--out", default="download-direct.json", help="file name under bench/out/ (--direct)")
    args = parser.parse_args()
    if args.direct:
        direct(args)
        return

    from catalog.embedded import EmbeddedCluster
    from catalog.settings import CatalogSettings
    from processing.setup import prepare_database
    from tests.conftest import ApiServer

    work = Path(tempfile.mkdtemp(prefix="landsurf-dlbench-"))
    settings = CatalogSettings(home=work / "home", public_url="http://127.0.0.1:1")
    cluster = EmbeddedCluster(settings)
    nginx = api = None
    try:
        cluster.start()
        prepare_database(settings)
        store = settings.store_dir
        big, small = _files(store, args.big_mb, args.small)
        size = (store / big).stat().st_size
        port, api_port = _free_port(), _free_port()
        conf = work / "nginx"
        for d in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (conf / d).mkdir(parents=True)
        def render(name: str, prefix: str) -> str:
            return Template((ROOT / "infra/nginx" / name).read_text()).safe_substitute(
                LANDSURF_UPSTREAM=f"127.0.0.1:{api_port}", LANDSURF_PREFIX=prefix, LANDSURF_STORE=str(store))

        (conf / "landsurf.locations.conf").write_text(render("landsurf.locations.conf.template", "/landsurf"))
        # the same API's files, served as public downloads by nginx itself (no API round trip per request)
        (conf / "public.conf").write_text(render("landsurf.public-downloads.conf.template", "/public"))
        (conf / "http.conf").write_text(render("landsurf.http.conf.template", "/public"))
        (conf / "nginx.conf").write_text(f"""
user root; daemon off; worker_processes 1; pid {conf}/nginx.pid; error_log {conf}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    include /etc/nginx/mime.types; access_log off;
    client_body_temp_path {conf}/body; proxy_temp_path {conf}/proxy; fastcgi_temp_path {conf}/fastcgi;
    uwsgi_temp_path {conf}/uwsgi; scgi_temp_path {conf}/scgi;
    sendfile on; tcp_nodelay on; tcp_nopush off; keepalive_requests 10000;
    include {conf}/http.conf;
    server {{
        listen 127.0.0.1:{port};
        location /direct/ {{ alias {store}/; }}
        include {conf}/public.conf;
        include {conf}/landsurf.locations.conf;
    }}
}}
""")
        public = f"http://127.0.0.1:{port}/landsurf"
        api = ApiServer(settings, api_port).start(LANDSURF_PUBLIC_URL=public, LANDSURF_TRUSTED_PROXIES="127.0.0.1",
                                                  LANDSURF_ACCEL_REDIRECT="/landsurf-store/")
        nginx = subprocess.Popen([NGINX, "-c", str(conf / "nginx.conf")], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        bases = {"nginx": f"http://127.0.0.1:{port}/direct", "landsurf": f"{public}/download",
                 "public": f"http://127.0.0.1:{port}/public/download"}
        head = httpx.get(f"{bases['landsurf']}/{big}", headers={"Range": "bytes=0-9"})
        assert head.status_code == 206 and "x-accel-redirect" not in head.headers, head.headers
        from tests.processing.test_download_client import Relay

        relay = Relay(port)
        try:
            resume = measure_resume(f"{relay.url}/landsurf/download/{big}", relay, store / big, work)
        finally:
            relay.close()
        print(f"resume: cut at {resume['interrupted_at']} of {resume['size']} bytes; the resumed transfer sent "
              f"{resume['resumed_body_bytes']} body bytes for {resume['missing']} missing (re-sent "
              f"{resume['re_sent']}), {resume['resumed_wire_bytes']} on the wire, in {resume['resume_seconds']:.2f} s")
        if args.resume_only:
            OUT.mkdir(exist_ok=True)
            (OUT / "download-resume.json").write_text(json.dumps({
                "command": "python -m bench.download_bench " + " ".join(sys.argv[1:]),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                            "load_avg": os.getloadavg()}, "resume": resume}, indent=2))
            return
        for base in bases.values():  # warm the page cache and the connections
            measure(base, big, small[:16], size)
        rounds = []
        for r in range(args.rounds):
            order = ["nginx", "landsurf", "public"] if r % 2 == 0 else ["public", "landsurf", "nginx"]
            rounds.append({name: measure(bases[name], big, small, size) for name in order})
        ratios: dict[str, list[float]] = {}
        for rnd in rounds:
            n = rnd["nginx"]
            for mode, label in (("landsurf", "X-Accel-Redirect through the API"),
                                ("public", "public downloads served by nginx")):
                m = rnd[mode]
                ratios.setdefault(f"{label}: big file, 1 client", []).append(m["big_1_mbps"] / n["big_1_mbps"])
                ratios.setdefault(f"{label}: big file, 4 clients", []).append(m["big_4_mbps"] / n["big_4_mbps"])
                ratios.setdefault(f"{label}: 200 × 1 MB, 8 clients", []).append(n["small_200_s"] / m["small_200_s"])
                ratios.setdefault(f"{label}: 64 KiB ranges, one connection", []).append(
                    n["range_64k_ms"] / m["range_64k_ms"])
        result = {"command": "python -m bench.download_bench " + " ".join(sys.argv[1:]),
                  "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                              "load_avg": os.getloadavg()},
                  "big_bytes": size, "rounds": rounds, "resume": resume,
                  "ratios": {k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in
                             ratios.items()}}
        OUT.mkdir(exist_ok=True)
        (OUT / "download.json").write_text(json.dumps(result, indent=2))
        print("| landsurf behind nginx ÷ nginx serving the files directly (higher is better) | median | min–max |")
        print("|---|---|---|")
        for k, v in result["ratios"].items():
            print(f"| {k} | {v['median']:.2f} | {v['min']:.2f}–{v['max']:.2f} |")
        for name in bases:
            med = {k: statistics.median(r[name][k] for r in rounds) for k in rounds[0][name]}
            print(f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in med.items()))
    finally:
        if nginx:
            nginx.terminate()
            nginx.wait(10)
        if api:
            api.stop()
        cluster.destroy()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
