#!/usr/bin/env python3
"""Cold-start benchmark of the Lambda binaries against a local stand-in of the Lambda Runtime API.

For each bootstrap binary: start it with AWS_LAMBDA_RUNTIME_API pointing at a loopback HTTP
server, and measure the time from exec to its first `GET /2018-06-01/runtime/invocation/next`
(the moment a real Lambda sandbox would hand it an event), and its peak RSS (VmHWM) then.
The same run measures a baseline: exec-to-exit of /bin/true, so figures from this noisy machine
can be read as ratios. Usage:

    scripts/bench-coldstart.py [--runs 15] [--env NAME=VALUE]... BOOTSTRAP...

Prints a Markdown table. Binary sizes are printed too.
"""
import argparse
import http.server
import os
import statistics
import subprocess
import sys
import threading
import time

POLL_PATH = "/2018-06-01/runtime/invocation/next"


class Recorder(http.server.BaseHTTPRequestHandler):
    polled = threading.Event()
    release = threading.Event()

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path.startswith(POLL_PATH):
            Recorder.polled.set()
            # Hold the long poll open like Lambda does between invocations.
            Recorder.release.wait(timeout=30)
        self.send_response(500)
        self.end_headers()

    def log_message(self, *args):
        pass


def serve():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def peak_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def one_start(binary, port, extra_env=()):
    Recorder.polled.clear()
    Recorder.release.clear()
    env = {
        "PATH": "/usr/bin:/bin",
        "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{port}",
        "AWS_LAMBDA_FUNCTION_NAME": "bench",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_LAMBDA_LOG_STREAM_NAME": "bench",
        "AWS_LAMBDA_LOG_GROUP_NAME": "bench",
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "VOYAGE_TABLE_NAME": "bench",
        "RUST_LOG": "warn",
    }
    env.update(extra_env)
    start = time.perf_counter()
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if not Recorder.polled.wait(timeout=10):
        proc.kill()
        err = proc.stderr.read().decode(errors="replace")
        raise SystemExit(f"{binary} never polled the runtime API: {err}")
    elapsed = time.perf_counter() - start
    rss = peak_rss_kib(proc.pid)
    Recorder.release.set()
    proc.kill()
    proc.wait()
    return elapsed, rss


def baseline(runs):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(["/bin/true"], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra variable for every binary (e.g. AWS_ENDPOINT_URL and the settings "
        "variables, to include the SSM and Secrets Manager reads at start)",
    )
    parser.add_argument("binaries", nargs="+")
    args = parser.parse_args()
    extra_env = dict(kv.split("=", 1) for kv in args.env)
    server = serve()
    port = server.server_address[1]
    base = baseline(args.runs)
    print(f"baseline: exec of /bin/true, median {base * 1000:.2f} ms over {args.runs} runs\n")
    print("| function | binary size | exec to first poll, median (p90) | ratio to baseline | peak RSS at first poll |")
    print("|---|---|---|---|---|")
    for binary in args.binaries:
        name = os.path.basename(os.path.dirname(binary)) or binary
        samples = [one_start(binary, port, extra_env) for _ in range(args.runs)]
        times = sorted(s[0] for s in samples)
        p90 = times[min(len(times) - 1, int(len(times) * 0.9))]
        med = statistics.median(times)
        rss = max(s[1] or 0 for s in samples)
        size = os.path.getsize(binary)
        print(
            f"| {name} | {size / 1e6:.1f} MB | {med * 1000:.1f} ms ({p90 * 1000:.1f} ms) "
            f"| {med / base:.1f}x | {rss / 1024:.1f} MiB |"
        )
    server.shutdown()


if __name__ == "__main__":
    sys.exit(main())
