#!/usr/bin/env python3
"""Driver of tools/bench-endpoints: runs one meshd per build on node smbenche and measures
endpoint creation, deletion and API latency under load over the API's unix socket."""
import argparse, concurrent.futures as cf, json, os, shutil, signal, statistics
import subprocess, sys, threading, time

from benchlib import UnixConnection, remove_node_files

NODE = "smbenche"
RUN = f"/run/{NODE}"
SOCK = f"{RUN}/meshd.sock"
CIDR = "10.252.0.0/22"


def call(method, path, body=None, timeout=120):
    """One request on a fresh connection; returns (status, seconds, body)."""
    c = UnixConnection(SOCK, timeout)
    data = json.dumps(body).encode() if body is not None else None
    t = time.perf_counter()
    c.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
    r = c.getresponse()
    out = r.read()
    dt = time.perf_counter() - t
    c.close()
    return r.status, dt, out


def checked(method, path, body=None):
    status, dt, out = call(method, path, body)
    if status >= 300:
        sys.exit(f"bench-endpoints: {method} {path} -> {status}: {out[:300]!r}")
    return dt


def down():
    subprocess.run(["pkill", "-KILL", "-f", "--", f"--node-name {NODE}( |$)"], stderr=subprocess.DEVNULL)
    time.sleep(0.2)
    for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines():
        ns = line.split()[0] if line.split() else ""
        if ns == NODE or ns.startswith(NODE + "-ep-"):
            # What outlives meshd in them: its mesh-proxy (a session of its own, so that a
            # restarted meshd adopts it) and dnsmasq.
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                subprocess.run(["kill", "-KILL", pid], stderr=subprocess.DEVNULL)
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
    shutil.rmtree(RUN, ignore_errors=True)
    remove_node_files(NODE)


def start(bin_dir):
    down()
    os.makedirs(RUN)
    subprocess.run(["ip", "netns", "add", NODE], check=True)
    log = open(f"{RUN}/meshd.log", "w")
    p = subprocess.Popen(["nsenter", f"--net=/run/netns/{NODE}", f"{bin_dir}/meshd", "--node-name", NODE,
                          "--state-dir", f"{RUN}/state", "--api-socket", SOCK, "--pod-cidr", CIDR,
                          "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if call("GET", "/v1/status", timeout=2)[0] == 200:
                return p
        except OSError:
            pass
        if p.poll() is not None:
            sys.exit("bench-endpoints: meshd exited:\n" + open(f"{RUN}/meshd.log").read()[-2000:])
        time.sleep(0.1)
    sys.exit("bench-endpoints: meshd did not answer")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def create(name):
    return checked("POST", "/v1/endpoints", {"name": name, "labels": {"app": name.split("-")[0]}})


def delete(name):
    return checked("DELETE", f"/v1/endpoints/{name}")


def batch(fn, names):
    t = time.perf_counter()
    with cf.ThreadPoolExecutor(max_workers=len(names)) as ex:
        lat = list(ex.map(fn, names))
    return lat, time.perf_counter() - t


def policy(rules, name="bench-rules"):
    lines = ["apiVersion: cilium.io/v2", "kind: CiliumNetworkPolicy", f"metadata: {{name: {name}}}", "spec:",
             "  endpointSelector: {matchLabels: {app: server}}", "  ingress:"]
    for i in range(rules - 1):
        a = 198 << 24 | 18 << 16 | i
        lines.append(f"  - fromCIDR: [{a >> 24}.{a >> 16 & 255}.{a >> 8 & 255}.{a & 255}/32]")
        lines.append("    toPorts: [{ports: [{port: \"8080\", protocol: TCP}]}]")
    lines.append("  - fromEndpoints: [{matchLabels: {app: client}}]")
    return "\n".join(lines) + "\n"


def measure(bin_dir, a):
    p = start(bin_dir)
    try:
        out = {}
        names = [f"seq-{i}" for i in range(a.sequential)]
        c = [create(n) for n in names]
        d = [delete(n) for n in names]
        out["create 1 at a time p50 (ms)"], out["create 1 at a time p99 (ms)"] = pct(c, 50) * 1e3, pct(c, 99) * 1e3
        out["delete 1 at a time p50 (ms)"], out["delete 1 at a time p99 (ms)"] = pct(d, 50) * 1e3, pct(d, 99) * 1e3
        names = [f"conc-{i}" for i in range(a.concurrent)]
        c, cw = batch(create, names)
        d, dw = batch(delete, names)
        out[f"create {a.concurrent} at once p50 (ms)"], out[f"create {a.concurrent} at once p99 (ms)"] = pct(c, 50) * 1e3, pct(c, 99) * 1e3
        out[f"create {a.concurrent} at once, all (s)"] = cw
        out[f"delete {a.concurrent} at once p50 (ms)"], out[f"delete {a.concurrent} at once p99 (ms)"] = pct(d, 50) * 1e3, pct(d, 99) * 1e3
        out[f"delete {a.concurrent} at once, all (s)"] = dw
        names = [f"many-{i}" for i in range(a.many)]
        _, mw = batch(create, names)
        out[f"create {a.many} at once, all (s)"] = mw
        batch(delete, names)

        # Status latency while a large policy (on one endpoint: --rules map entries) is
        # applied and 20 other endpoints are created.
        create("server-0")
        text = policy(a.rules)
        samples, stop = [], threading.Event()

        def poll():
            while not stop.is_set():
                try:
                    status, dt, _ = call("GET", "/v1/status", timeout=30)
                except OSError:
                    return  # meshd went away: the main thread reports why
                if status == 200:
                    samples.append(dt)
                time.sleep(0.01)
        t = threading.Thread(target=poll)
        t.start()
        time.sleep(0.3)
        load = [f"load-{i}" for i in range(20)]
        with cf.ThreadPoolExecutor(max_workers=21) as ex:
            futs = [ex.submit(checked, "POST", "/v1/policies", {"yaml": text, "source": "bench.yaml", "dryRun": False})]
            futs += [ex.submit(create, n) for n in load]
            for f in futs:
                f.result()
        if not t.is_alive():
            sys.exit("bench-endpoints: meshd stopped answering GET /v1/status under load")
        time.sleep(0.3)
        stop.set()
        t.join()
        out["status under load p50 (ms)"] = pct(samples, 50) * 1e3
        out["status under load p99 (ms)"] = pct(samples, 99) * 1e3
        out["status under load max (ms)"] = max(samples) * 1e3
        out["status samples"] = len(samples)

        # Relabelling one endpoint among --relabel-endpoints with the --rules policy in
        # force (its last rule allows app=client): p50/p99 from the request to the
        # revision in force, and the map entries the publish wrote.
        if a.relabel_endpoints:
            names = [f"r-{i}" for i in range(a.relabel_endpoints - 22)]
            for i in range(0, len(names), 50):
                batch(create, names[i:i + 50])
            status, _, _ = call("PATCH", "/v1/endpoints/r-0/labels", {"set": {"app": "client"}, "remove": []})
            if status == 200:
                lat, writes = [], []
                for i in range(20):
                    time.sleep(0.05)
                    lat.append(checked("PATCH", "/v1/endpoints/r-0/labels", {"set": {"app": "other" if i % 2 == 0 else "client"}, "remove": []}))
                    st = json.loads(call("GET", "/v1/status")[2])
                    writes.append(st["lastPublish"]["written"] + st["lastPublish"]["deleted"])
                    entries = st["lastPublish"]["entries"]
                    compile_s = st["lastPublish"]["compileSeconds"]
                n = a.relabel_endpoints
                out[f"relabel 1 of {n}, p50 (ms)"] = pct(lat, 50) * 1e3
                out[f"relabel 1 of {n}, p99 (ms)"] = pct(lat, 99) * 1e3
                out["relabel: entries written+deleted, max"] = max(writes)
                out["relabel: policy entries in force"] = entries
                out["relabel: last compile (ms)"] = compile_s * 1e3
        return out
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
        down()


def v_is_count(k):
    return k == "status samples" or k.startswith("relabel: entries") or k.startswith("relabel: policy")


def main():
    ap = argparse.ArgumentParser()
    for k in ["base-bin", "base-name", "head-bin", "head-name", "cmdline"]:
        ap.add_argument("--" + k, required=True)
    for k in ["sequential", "concurrent", "many", "rules", "relabel-endpoints"]:
        ap.add_argument("--" + k, type=int, required=True)
    a = ap.parse_args()
    try:
        base = measure(a.base_bin, a)
        head = measure(a.head_bin, a)
    finally:
        down()
    print(f"# {a.cmdline}   ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs)")
    print(f"# baseline: {a.base_name}   this: {a.head_name}")
    print(f"{'figure':<36} {'baseline':>10} {'this':>10} {'this/base':>10}")
    for k in head:
        b, h = base.get(k), head[k]
        if b is None:
            fmt = (lambda v: f"{v:.0f}") if v_is_count(k) else (lambda v: f"{v:.2f}" if v < 10 else f"{v:.1f}")
            print(f"{k:<36} {'-':>10} {fmt(h):>10} {'-':>10}")
            continue
        ratio = f"{h / b:.2f}x" if b else "-"
        fmt = (lambda v: f"{v:.0f}") if v_is_count(k) else (lambda v: f"{v:.2f}" if v < 10 else f"{v:.1f}")
        print(f"{k:<36} {fmt(b):>10} {fmt(h):>10} {ratio:>10}")


if __name__ == "__main__":
    main()
