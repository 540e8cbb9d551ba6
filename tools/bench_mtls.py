#!/usr/bin/env python3
"""Driver of tools/bench-mtls: web on node A and db on node B (two meshd joined through one
etcd, the L7 proxy on), measured over three paths in one run: plain (policy without
authentication), mtls (the same rule with authentication: {mode: required}, so the nodes'
proxies carry the flow inside mTLS), and haproxy (the plain path again, with HAProxy in
web's and db's namespaces doing the same TLS 1.3 + client-certificate work). The proxies
of both nodes and both HAProxies run pinned to one CPU (--tls-cpu), the clients on
another, so the TLS work is measured on the same core."""
import argparse, json, os, subprocess, sys, textwrap, time

import bench_cluster as bc
from bench_cluster import call, sh, wait

CLIENT = r'''
import socket, sys, time, json
mode, host, port, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
msg = b"x" * 64
if mode == "conn":
    n = fail = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.sendall(msg)
                got = b""
                while len(got) < 64:
                    b = s.recv(64 - len(got))
                    if not b:
                        break
                    got += b
                if got == msg:
                    n += 1
                else:
                    fail += 1
        except OSError:
            fail += 1
    print(json.dumps({"ok": n, "failed": fail}))
else:
    rate = float(sys.argv[5])
    s = socket.create_connection((host, port), timeout=2)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rtts = []
    t0 = time.perf_counter()
    i = 0
    while time.perf_counter() - t0 < seconds:
        due = t0 + i / rate
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        a = time.perf_counter()
        s.sendall(msg)
        got = b""
        while len(got) < 64:
            got += s.recv(64 - len(got))
        rtts.append(time.perf_counter() - a)
        i += 1
    rtts.sort()
    print(json.dumps({"n": len(rtts), "p50": rtts[len(rtts) // 2], "p99": rtts[int(len(rtts) * 0.99) - 1]}))
'''

POLICY = """apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-from-web}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
%s    toPorts: [{ports: [{port: "5201", protocol: TCP}, {port: "5432", protocol: TCP}, {port: "16432", protocol: TCP},
                        {port: "16201", protocol: TCP}]}]
"""


def in_ns(ns, cpu, *args, **kw):
    return subprocess.run(["ip", "netns", "exec", ns, "taskset", "-c", str(cpu), *args], capture_output=True, text=True, **kw)


def measure(web_ns, host, port, seconds, cpu, iperf_port=None):
    out = {}
    if iperf_port:
        r = in_ns(web_ns, cpu, "iperf3", "-c", host, "-p", str(iperf_port), "-t", str(seconds), "-J")
        try:
            out["mbps"] = json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 8e6
        except (ValueError, KeyError):
            out["mbps"] = None
            out["error"] = (r.stdout + r.stderr)[-300:]
    r = in_ns(web_ns, cpu, "python3", "-c", CLIENT, "conn", host, str(port), str(seconds))
    c = json.loads(r.stdout or '{"ok": 0, "failed": -1}')
    out["conns"] = c["ok"] / seconds
    out["conn_failed"] = c["failed"]
    r = in_ns(web_ns, cpu, "python3", "-c", CLIENT, "lat", host, str(port), str(seconds), "1000")
    lat = json.loads(r.stdout or '{"p50": null, "p99": null}')
    out["p50"], out["p99"] = lat.get("p50"), lat.get("p99")
    return out


def proxy_pids(node):
    r = sh("pgrep", "-f", f"--control {bc.RUN}/{node}/state/proxy.sock", check=False)
    return [int(p) for p in r.stdout.split()]


def certs(d):
    os.makedirs(d, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    sh("openssl", "req", "-x509", *ec, "-days", "1", "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.crt", "-subj", "/CN=bench-ca")
    for name in ("client", "server"):
        sh("openssl", "req", "-new", *ec, "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.csr", "-subj", f"/CN={name}")
        sh("openssl", "x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/ca.crt", "-CAkey", f"{d}/ca.key", "-CAcreateserial",
           "-days", "1", "-out", f"{d}/{name}.crt")
        with open(f"{d}/{name}.pem", "w") as f:
            f.write(open(f"{d}/{name}.crt").read() + open(f"{d}/{name}.key").read())


def haproxy_cfg(path, frontend, backend):
    with open(path, "w") as f:
        f.write(textwrap.dedent(f"""\
            global
              nbthread 1
              ssl-default-bind-options ssl-min-ver TLSv1.3
              ssl-default-server-options ssl-min-ver TLSv1.3
            defaults
              mode tcp
              timeout connect 5s
              timeout client 60s
              timeout server 60s
            frontend f
              bind {frontend}
              default_backend b
            backend b
              server s {backend}
            """))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--tls-cpu", type=int, default=1)
    ap.add_argument("--client-cpu", type=int, default=0)
    ap.add_argument("--cmdline", default="tools/bench-mtls")
    a = ap.parse_args()
    a_node, b_node = bc.NODES
    web_ns, db_ns = f"{a_node}-ep-web", f"{b_node}-ep-db"
    procs = []
    results = {}
    try:
        bc.up(a.bin, 10, extra=())
        call(a_node, "POST", "/v1/endpoints", {"name": "web", "labels": {"app": "web"}, "serviceAccount": "web"})
        call(b_node, "POST", "/v1/endpoints", {"name": "db", "labels": {"app": "db"}})
        wait(lambda: call(a_node, "GET", "/v1/status")["cluster"]["remoteEndpoints"] == 1, "node A's view of db")
        db = call(b_node, "GET", "/v1/endpoints/db")["ipv4"]
        procs.append(subprocess.Popen(["ip", "netns", "exec", db_ns, "python3", bc.TRAFFIC, "echo-server", "--tcp", "5432", "--udp", "",
                                       "--seconds", "3600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen(["ip", "netns", "exec", db_ns, "iperf3", "-s", "-p", "5201"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for pid in proxy_pids(a_node) + proxy_pids(b_node):
            sh("taskset", "-a", "-pc", str(a.tls_cpu), str(pid))
        time.sleep(1)

        # plain, then haproxy on the plain policy, then mtls.
        call(b_node, "POST", "/v1/apply", {"yaml": POLICY % "", "source": "bench", "dryRun": False})
        wait(lambda: not any(r.get("tunnel") for r in call(a_node, "GET", "/v1/bpf/ipcache")), "plain policy on node A")
        results["plain"] = measure(web_ns, db, 5432, a.seconds, a.client_cpu, iperf_port=5201)

        d = f"{bc.RUN}/certs"
        certs(d)
        haproxy_cfg(f"{d}/server.cfg", f"{db}:16432 ssl crt {d}/server.pem ca-file {d}/ca.crt verify required", "127.0.0.1:5432")
        haproxy_cfg(f"{d}/client.cfg", "127.0.0.1:15432", f"{db}:16432 ssl crt {d}/client.pem ca-file {d}/ca.crt verify required")
        haproxy_cfg(f"{d}/client-iperf.cfg", "127.0.0.1:15201", f"{db}:16201 ssl crt {d}/client.pem ca-file {d}/ca.crt verify required")
        haproxy_cfg(f"{d}/server-iperf.cfg", f"{db}:16201 ssl crt {d}/server.pem ca-file {d}/ca.crt verify required", "127.0.0.1:5201")
        for ns, cfg in ((db_ns, "server"), (web_ns, "client"), (db_ns, "server-iperf"), (web_ns, "client-iperf")):
            procs.append(subprocess.Popen(["ip", "netns", "exec", ns, "taskset", "-c", str(a.tls_cpu), "haproxy", "-db", "-f", f"{d}/{cfg}.cfg"],
                                          stdout=open(f"{d}/{cfg}.log", "w"), stderr=subprocess.STDOUT))
        time.sleep(1)
        results["haproxy"] = measure(web_ns, "127.0.0.1", 15432, a.seconds, a.client_cpu, iperf_port=15201)

        call(b_node, "POST", "/v1/apply", {"yaml": POLICY % "    authentication: {mode: required}\n", "source": "bench", "dryRun": False})
        wait(lambda: any(r.get("tunnel") and r["prefix"] == f"{db}/32" for r in call(a_node, "GET", "/v1/bpf/ipcache")),
             "db marked as reached through the tunnel on node A")
        time.sleep(1)
        results["mtls"] = measure(web_ns, db, 5432, a.seconds, a.client_cpu, iperf_port=5201)

        print(f"# tools/bench-mtls: {a.name}; web on node A -> db on node B; command: {a.cmdline}")
        print(f"# TLS work (mesh-proxy of both nodes, both HAProxies) pinned to CPU {a.tls_cpu}, clients to CPU {a.client_cpu}; "
              f"{a.seconds:g} s per measure")
        print(f"{'path':<10}{'MB/s':>10}{'conn/s':>10}{'failed':>8}{'p50 ms':>10}{'p99 ms':>10}   (latency: 64 B echo at 1,000/s on one connection)")
        for k in ("plain", "haproxy", "mtls"):
            r = results[k]
            fmt = lambda v, scale=1, p=1: f"{v * scale:.{p}f}" if v is not None else "-"
            print(f"{k:<10}{fmt(r.get('mbps')):>10}{fmt(r['conns'], 1, 0):>10}{r['conn_failed']:>8}{fmt(r['p50'], 1000, 3):>10}{fmt(r['p99'], 1000, 3):>10}")
        m, h, p = results["mtls"], results["haproxy"], results["plain"]
        if m.get("mbps") and h.get("mbps"):
            print(f"mtls/haproxy throughput: {m['mbps'] / h['mbps']:.2f}x (target >= 0.8x)")
        print(f"mtls/haproxy new connections/s: {m['conns'] / max(h['conns'], 1e-9):.2f}x (target >= 0.8x)")
        if m["p99"] is not None and p["p99"] is not None:
            print(f"mtls p99 added over plain at 1,000 req/s: {(m['p99'] - p['p99']) * 1000:.3f} ms (target < 1 ms)")
    finally:
        for p in procs:
            p.kill()
        bc.down()


if __name__ == "__main__":
    main()
