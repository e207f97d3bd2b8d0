#!/usr/bin/env python3
"""Time from exec of `voyage serve` to its listening banner, on a fresh and on a populated
data directory, against /bin/true in the same run. Usage: scripts/bench-serve-start.py BIN [runs]"""
import os, socket, statistics, subprocess, sys, tempfile, time

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def start(binary, data):
    t = time.perf_counter()
    p = subprocess.Popen([binary, "serve", "--addr", f"127.0.0.1:{free_port()}", "--data-dir", data],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    p.stdout.readline()  # "serving every route on ...": printed once listening
    elapsed = time.perf_counter() - t
    p.kill(); p.wait()
    return elapsed

def main():
    binary, runs = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 15
    base = statistics.median([(lambda t: (subprocess.run(["/bin/true"]), time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(runs)])
    with tempfile.TemporaryDirectory() as d:
        fresh = []
        for i in range(runs):
            fresh.append(start(binary, os.path.join(d, f"fresh{i}")))
        warm = [start(binary, os.path.join(d, "fresh0")) for _ in range(runs)]
    print(f"baseline /bin/true: {base*1000:.1f} ms")
    print(f"voyage serve, new data dir:      median {statistics.median(fresh)*1000:.1f} ms, max {max(fresh)*1000:.1f} ms ({statistics.median(fresh)/base:.1f}x baseline)")
    print(f"voyage serve, existing data dir: median {statistics.median(warm)*1000:.1f} ms, max {max(warm)*1000:.1f} ms ({statistics.median(warm)/base:.1f}x baseline)")

main()
