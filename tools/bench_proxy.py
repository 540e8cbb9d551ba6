#!/usr/bin/env python3
"""Driver of tools/bench-proxy: HTTP/1.1 and HTTP/2 (h2c) through SwiftMesh's L7 proxy,
through HAProxy configured as the same L7 proxy, and direct, side by side in one run.

Node smbenchp: meshd (its mesh-proxy pinned to CPU 1), endpoints `srv` (nginx, one worker,
a 2-byte answer on ports 80 and 8080) and `cli` (the load). Ways:
  direct     cli -> srv:8080; an L4 rule, no proxy (socket redirection off, so the bytes
             cross the veths as they do through either proxy)
  mesh-proxy cli -> srv:80; an HTTP rule (GET /.*), so meshd's tc program hands every
             connection to mesh-proxy, which checks each request and forwards it over
             its own upstream connection
  haproxy    cli -> 169.254.1.1:8081, HAProxy 2.6 (Debian) in the node's namespace, mode http,
             one thread pinned to CPU 1, forwarding to srv:8080 with keep-alive both sides
Load: wrk (one thread, --connections, keep-alive) pinned to CPU 0 with nginx. Then, per way,
a fixed 1,000 requests/s over 8 keep-alive connections (an open-loop Python client: each
request's latency runs from when it was due) for p50/p99; and each proxy's resident memory with 1,000 idle keep-alive
connections open through it.

`bench_proxy.py down` removes whatever a run left (the wrapper's trap)."""
import argparse, glob, json, os, shutil, signal, statistics, subprocess, sys, tempfile, time

NODE = "smbenchp"
RUN = f"/run/{NODE}"
SOCK = f"{RUN}/meshd.sock"
POD_CIDR = "10.252.0.0/24"
HAPROXY_ADDR, HAPROXY_PORT, HAPROXY_H2_PORT = "169.254.1.1", 8081, 8083
PROCS = []
H2_CONNS, H2_STREAMS = 10, 10
T0 = time.monotonic()


def die(msg):
    sys.exit(f"bench-proxy: error: {msg}")


def log(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def cgroup2_root():
    for line in open("/proc/self/mountinfo"):
        if " - cgroup2 " in line:
            return line.split()[4]
    die("no cgroup2 mount")


def down():
    """Everything a run (or a killed one) left: our processes, processes inside our
    namespaces (mesh-proxy, haproxy, nginx), the namespaces, pins, cgroup, /run/smbenchp."""
    for p in reversed(PROCS):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                p.kill()
    PROCS.clear()
    cg = os.path.join(cgroup2_root(), NODE)
    if os.path.exists(os.path.join(cg, "cgroup.kill")):
        open(os.path.join(cg, "cgroup.kill"), "w").write("1")
    for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines():
        ns = line.split()[0] if line.split() else ""
        if ns == NODE or ns.startswith(NODE + "-"):
            for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
    shutil.rmtree(f"/sys/fs/bpf/{NODE}", ignore_errors=True)
    shutil.rmtree(f"/run/swiftmesh-dns/{NODE}", ignore_errors=True)
    for d in glob.glob(f"/etc/netns/{NODE}-*"):
        shutil.rmtree(d, ignore_errors=True)
    for kept in (f"{RUN}/state/mesh-proxy.log", f"{RUN}/haproxy.log", f"{RUN}/meshd.log"):   # for a look after the run
        if os.path.exists(kept):
            shutil.copy(kept, f"/tmp/{NODE}-{os.path.basename(kept)}")
    shutil.rmtree(RUN, ignore_errors=True)
    for _ in range(50):
        for kid in sorted(glob.glob(cg + "/**/", recursive=True), key=len, reverse=True):
            try:
                os.rmdir(kid)
            except OSError:
                pass
        if not os.path.isdir(cg):
            break
        time.sleep(0.1)


def run(argv, check=True, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        die(f"{' '.join(argv)}: {(r.stderr or r.stdout).strip()[-1500:]}")
    return r


class Node:
    def __init__(self, bin_dir):
        self.bin = bin_dir
        os.environ["SWIFTMESH_API_SOCKET"] = SOCK
        down()
        os.makedirs(RUN)
        run(["ip", "netns", "add", NODE])
        log_file = open(f"{RUN}/meshd.log", "w")
        p = subprocess.Popen(["nsenter", f"--net=/run/netns/{NODE}", f"{bin_dir}/meshd", "--node-name", NODE,
                              "--state-dir", f"{RUN}/state", "--api-socket", SOCK, "--pod-cidr", POD_CIDR,
                              "--metrics-address", "127.0.0.1:9469", "--dns", "off", "--socket-redirect", "off",
                              "--log-level", "warning"], stdout=log_file, stderr=subprocess.STDOUT)
        PROCS.insert(0, p)
        deadline = time.time() + 30
        while run([f"{bin_dir}/meshctl", "status"], check=False).returncode != 0:
            if p.poll() is not None or time.time() > deadline:
                die("meshd did not start:\n" + open(f"{RUN}/meshd.log").read()[-2000:])
            time.sleep(0.1)

    def ctl(self, *args):
        return run([f"{self.bin}/meshctl", *args]).stdout

    def proxy_pid(self):
        r = run(["pgrep", "-f", "--", f"--control {RUN}/state/proxy.sock"], check=False)
        return int(r.stdout.split()[0]) if r.stdout.split() else None

    def exec(self, ep, argv, **kw):
        """A process inside endpoint `ep` (its netns and cgroup)."""
        p = subprocess.Popen([f"{self.bin}/meshctl", "endpoint", "exec", ep, "--", *argv], **kw)
        PROCS.append(p)
        return p


POLICY = """apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench}
spec:
  endpointSelector: {matchLabels: {app: srv}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: cli}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}, {port: "81", protocol: TCP}]
      rules: {http: [{method: GET, path: "/.*"}]}
  - fromEndpoints: [{matchLabels: {app: cli}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}, {port: "8082", protocol: TCP}]}]
  - fromEntities: [host]
    toPorts: [{ports: [{port: "8080", protocol: TCP}, {port: "8082", protocol: TCP}]}]
"""

NGINX = """worker_processes 1;
daemon off;
pid {run}/nginx.pid;
error_log {run}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  server {{ listen 80 reuseport backlog=4096; listen 8080 reuseport backlog=4096; location / {{ return 200 "ok"; }} }}
  server {{ listen 81 http2 reuseport backlog=4096; listen 8082 http2 reuseport backlog=4096; location / {{ return 200 "ok"; }} }}
}}
"""

HAPROXY = """global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
  option http-keep-alive
frontend mesh
  bind {addr}:{port}
  default_backend srv
backend srv
  http-reuse safe
  server srv {srv}:8080
frontend mesh_h2
  bind {addr}:{h2port} proto h2
  default_backend srv_h2
backend srv_h2
  server srv {srv}:8082 proto h2
"""

# The load and the fixed-rate latency client, run inside the client endpoint.
LATENCY_CLIENT = r"""
import http.client, json, sys, threading, time
host, port, path, rate, secs, conns = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
# Open loop: each of `conns` threads has its own keep-alive connection and its own schedule
# (rate / conns per second, staggered); a request's latency runs from when it was due, so a
# slow answer that delays the next request counts against it (no coordinated omission).
lat, errors, sent, lock = [], [0], [0], threading.Lock()
t0 = time.perf_counter() + 0.05
def worker(k):
    c, per = http.client.HTTPConnection(host, port, timeout=5), rate / conns
    i = 0
    while True:
        due = t0 + (i + k / conns) / per
        if due - t0 > secs: return
        now = time.perf_counter()
        if due > now: time.sleep(due - now)
        try:
            c.request("GET", path); r = c.getresponse(); r.read(); ok = r.status == 200
        except Exception:
            ok = False; c = http.client.HTTPConnection(host, port, timeout=5)
        done = time.perf_counter()
        with lock:
            sent[0] += 1
            if ok: lat.append(done - due)
            else: errors[0] += 1
        i += 1
ts = [threading.Thread(target=worker, args=(k,)) for k in range(conns)]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps({"lat": lat, "errors": errors[0], "sent": sent[0]}))
"""

IDLE_CLIENT = r"""
import http.client, json, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cs, ok = [], 0
for _ in range(n):
    c = http.client.HTTPConnection(host, port, timeout=5)
    c.request("GET", "/idle"); r = c.getresponse(); r.read(); ok += r.status == 200
    cs.append(c)
print(json.dumps({"open": ok}), flush=True)
sys.stdin.read()   # hold them until told
"""


def wrk(node, url, seconds, conns):
    out = node.exec("cli", ["taskset", "-c", "0", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", url],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    text, _ = out.communicate(timeout=seconds + 30)
    for line in text.splitlines():
        if line.startswith("Requests/sec:"):
            non2xx = [l for l in text.splitlines() if "Non-2xx" in l or "Socket errors" in l]
            return float(line.split()[1]), non2xx
    die(f"wrk printed no rate for {url}:\n{text}")


def h2load(node, url, seconds, conns, streams):
    out = node.exec("cli", ["taskset", "-c", "0", "h2load", f"-c{conns}", f"-m{streams}", f"-D{seconds}", url],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    text, _ = out.communicate(timeout=seconds + 30)
    rate, failed = None, None
    for line in text.splitlines():
        if line.startswith("finished in") and "req/s" in line:
            rate = float(line.split(",")[1].split()[0])
        if line.startswith("requests:"):
            fields = dict(p.strip().split(" ", 1)[::-1] for p in line.split(":", 1)[1].split(","))
            failed = int(fields.get("failed", "0")) + int(fields.get("errored", "0"))
    if rate is None:
        die(f"h2load printed no rate for {url}:\n{text}")
    return rate, failed


def latency(node, host, port, path, rate, seconds):
    p = node.exec("cli", ["taskset", "-c", "0", "python3", "-c", LATENCY_CLIENT, host, str(port), path, str(rate), str(seconds), "8"],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=seconds + 60)
    r = json.loads(out.strip().splitlines()[-1]) if out.strip() else die(f"latency client failed: {err[-800:]}")
    lat = sorted(r["lat"])
    if not lat:
        die(f"latency client got no answers ({r['errors']} errors)")
    q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] * 1000
    return {"p50": q(0.50), "p99": q(0.99), "errors": r["errors"], "sent": r["sent"]}


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def idle_memory(node, host, port, pid, n):
    before = rss_mib(pid)
    p = node.exec("cli", ["python3", "-c", IDLE_CLIENT, host, str(port), str(n)],
                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line:
        die(f"idle client failed: {p.stderr.read()[-800:]}")
    opened = json.loads(line)["open"]
    time.sleep(1)
    after = rss_mib(pid)
    p.stdin.close()
    p.wait(30)
    return before, after, opened


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", nargs="?", default="bench")
    ap.add_argument("--bin")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--commit", default="?")
    ap.add_argument("--cmdline", default="tools/bench-proxy")
    a = ap.parse_args()
    if a.cmd == "down":
        return down()

    node = Node(a.bin)
    node.ctl("endpoint", "create", "srv", "--labels", "app=srv")
    node.ctl("endpoint", "create", "cli", "--labels", "app=cli")
    srv = json.loads(node.ctl("endpoint", "get", "srv", "-o", "json"))["ipv4"]
    with open(f"{RUN}/policy.yaml", "w") as f:
        f.write(POLICY)
    node.ctl("apply", "-f", f"{RUN}/policy.yaml")
    with open(f"{RUN}/nginx.conf", "w") as f:
        f.write(NGINX.format(run=RUN))
    node.exec("srv", ["taskset", "-c", "0", "nginx", "-c", f"{RUN}/nginx.conf"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(f"{RUN}/haproxy.cfg", "w") as f:
        f.write(HAPROXY.format(addr=HAPROXY_ADDR, port=HAPROXY_PORT, h2port=HAPROXY_H2_PORT, srv=srv))
    hap = subprocess.Popen(["nsenter", f"--net=/run/netns/{NODE}", "taskset", "-c", "1", "haproxy", "-db", "-f", f"{RUN}/haproxy.cfg"],
                           stdout=open(f"{RUN}/haproxy.log", "w"), stderr=subprocess.STDOUT)
    PROCS.append(hap)
    deadline = time.time() + 20
    while node.proxy_pid() is None or "running" not in node.ctl("status"):
        if time.time() > deadline:
            die("mesh-proxy did not come up:\n" + node.ctl("status"))
        time.sleep(0.2)
    ppid = node.proxy_pid()
    run(["taskset", "-a", "-p", "-c", "1", str(ppid)])
    ways = {"direct": f"http://{srv}:8080/", "mesh-proxy": f"http://{srv}:80/", "haproxy": f"http://{HAPROXY_ADDR}:{HAPROXY_PORT}/"}
    for name, url in ways.items():   # each answers, and warms up
        rate, errs = wrk(node, url, 1, a.connections)
        if errs:
            die(f"{name} ({url}) answers with errors: {errs}")
    log(f"node up: srv {srv}, mesh-proxy pid {ppid} and haproxy pid {hap.pid} pinned to CPU 1, wrk and nginx on CPU 0")

    rates = {w: [] for w in ways}
    for r in range(a.rounds):
        order = list(ways) if r % 2 == 0 else list(reversed(ways))
        for w in order:
            rate, errs = wrk(node, ways[w], a.duration, a.connections)
            if errs:
                die(f"{w}: {errs}")
            rates[w].append(rate)
        log(f"round {r + 1}: " + ", ".join(f"{w} {rates[w][-1]:,.0f}/s" for w in ways))
    med = {w: statistics.median(v) for w, v in rates.items()}

    # HTTP/2 with prior knowledge, as gRPC clients speak it: h2load, streams multiplexed on
    # few connections; mesh-proxy then speaks h2c upstream too (one connection per client
    # connection and backend), HAProxy likewise (proto h2 on both sides).
    h2ways = {"direct": f"http://{srv}:8082/", "mesh-proxy": f"http://{srv}:81/",
              "haproxy": f"http://{HAPROXY_ADDR}:{HAPROXY_H2_PORT}/"}
    h2rates = {w: [] for w in h2ways}
    for name, url in h2ways.items():
        rate, failed = h2load(node, url, 1, H2_CONNS, H2_STREAMS)
        if failed:
            die(f"h2 {name} ({url}): {failed} requests failed")
    for r in range(a.rounds):
        order = list(h2ways) if r % 2 == 0 else list(reversed(h2ways))
        for w in order:
            rate, failed = h2load(node, h2ways[w], a.duration, H2_CONNS, H2_STREAMS)
            if failed:
                die(f"h2 {w}: {failed} requests failed")
            h2rates[w].append(rate)
        log(f"h2 round {r + 1}: " + ", ".join(f"{w} {h2rates[w][-1]:,.0f}/s" for w in h2ways))
    h2med = {w: statistics.median(v) for w, v in h2rates.items()}

    lat = {}
    for w, (host, port) in {"direct": (srv, 8080), "mesh-proxy": (srv, 80), "haproxy": (HAPROXY_ADDR, HAPROXY_PORT)}.items():
        lat[w] = latency(node, host, port, "/lat", 1000, a.duration)
        log(f"latency {w}: p50 {lat[w]['p50']:.3f} ms, p99 {lat[w]['p99']:.3f} ms, {lat[w]['errors']} errors of {lat[w]['sent']}")

    # The same with both CPUs kept busy by nice-19 spinners, so that no vCPU halts between
    # two hops: what the VM's idle wake-ups add shows as the difference.
    spinners = [subprocess.Popen(["nice", "-n", "19", "sh", "-c", "while :; do :; done"]) for _ in range(os.cpu_count() or 2)]
    PROCS.extend(spinners)
    busy = {}
    try:
        for w, (host, port) in {"direct": (srv, 8080), "mesh-proxy": (srv, 80), "haproxy": (HAPROXY_ADDR, HAPROXY_PORT)}.items():
            busy[w] = latency(node, host, port, "/lat", 1000, a.duration)
    finally:
        for p in spinners:
            p.kill()
            p.wait()

    mem = {"mesh-proxy": idle_memory(node, srv, 80, ppid, a.idle),
           "haproxy": idle_memory(node, HAPROXY_ADDR, HAPROXY_PORT, hap.pid, a.idle)}

    print(f"\n# tools/bench-proxy: HTTP/1.1 through SwiftMesh's L7 proxy, HAProxy and direct\n")
    print(f"command: {a.cmdline}\ncommit: {a.commit}\nkernel: {os.uname().release}, {os.cpu_count()} CPUs")
    print(f"wrk -t1 -c{a.connections} -d{a.duration}s keep-alive, {a.rounds} rounds (order alternating), medians; "
          f"each proxy pinned to CPU 1, wrk and nginx (1 worker) to CPU 0\n")
    print(f"{'way':<12}{'requests/s':>12}{'vs direct':>11}   rounds")
    for w in ways:
        print(f"{w:<12}{med[w]:>12,.0f}{med[w] / med['direct']:>10.2f}x   " + ", ".join(f"{x:,.0f}" for x in rates[w]))
    ratio = med["mesh-proxy"] / med["haproxy"]
    print(f"\nmesh-proxy / haproxy, requests/s on one core: {ratio:.2f}x (target >= 0.80)")
    print(f"\nfixed 1,000 requests/s over 8 keep-alive connections, {a.duration} s, open loop (latency from when each request was due):")
    print(f"{'way':<12}{'p50 ms':>9}{'p99 ms':>9}{'added p50':>11}{'added p99':>11}   errors")
    for w in lat:
        d50, d99 = lat[w]["p50"] - lat["direct"]["p50"], lat[w]["p99"] - lat["direct"]["p99"]
        added = ("" if w == "direct" else f"{d50:>10.3f} {d99:>10.3f}").rjust(22)
        print(f"{w:<12}{lat[w]['p50']:>9.3f}{lat[w]['p99']:>9.3f}{added}   {lat[w]['errors']} of {lat[w]['sent']}")
    print(f"target: mesh-proxy's added p99 < 1 ms: {lat['mesh-proxy']['p99'] - lat['direct']['p99']:.3f} ms")
    print("the same with every CPU kept busy by nice-19 spinners (no vCPU halts between hops):")
    for w in busy:
        d50, d99 = busy[w]["p50"] - busy["direct"]["p50"], busy[w]["p99"] - busy["direct"]["p99"]
        added = ("" if w == "direct" else f"{d50:>10.3f} {d99:>10.3f}").rjust(22)
        print(f"{w:<12}{busy[w]['p50']:>9.3f}{busy[w]['p99']:>9.3f}{added}   {busy[w]['errors']} of {busy[w]['sent']}")
    print(f"\nresident memory with {a.idle} idle keep-alive connections open through each proxy:")
    for w, (before, after, opened) in mem.items():
        print(f"{w:<12} {before:7.1f} MiB before, {after:7.1f} MiB with {opened} connections open "
              f"({(after - before) * 1024 / max(opened, 1):.1f} KiB each)")
    print(f"target: mesh-proxy under 64 MiB: {mem['mesh-proxy'][1]:.1f} MiB")
    print(f"\nHTTP/2 with prior knowledge: h2load -c{H2_CONNS} -m{H2_STREAMS} -D{a.duration}, {a.rounds} rounds, medians:")
    print(f"{'way':<12}{'requests/s':>12}{'vs direct':>11}   rounds")
    for w in h2ways:
        print(f"{w:<12}{h2med[w]:>12,.0f}{h2med[w] / h2med['direct']:>10.2f}x   " + ", ".join(f"{x:,.0f}" for x in h2rates[w]))
    print(f"mesh-proxy / haproxy, HTTP/2 requests/s on one core: {h2med['mesh-proxy'] / h2med['haproxy']:.2f}x (target >= 0.80)")


if __name__ == "__main__":
    try:
        main()
    finally:
        if len(sys.argv) < 2 or sys.argv[1] != "down":
            down()
