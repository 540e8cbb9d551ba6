#!/usr/bin/env python3
"""Driver of tools/bench-cluster: two meshd nodes joined through one etcd, a thousand
endpoints across them, then the time from an endpoint's creation on node A until it
reaches, under policy, an endpoint on node B; beside it, the same measure against an
endpoint on node A itself (the single-node baseline of the same run)."""
import argparse, concurrent.futures as cf, ctypes, json, os, shutil, socket, subprocess, sys
import threading, time

from benchlib import UnixConnection, remove_node_files

FABRIC = "smbenchcf"
NODES = ["smbenchc1", "smbenchc2"]
RUN = "/run/smbenchc"
ETCD_IP = "10.98.0.200"
POD_CIDRS = ["10.212.0.0/22", "10.212.4.0/22"]
TRAFFIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "IntegrationTests", "Fixtures", "traffic.py")
CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL("libc.so.6", use_errno=True)


def sock_path(node):
    return f"{RUN}/{node}/meshd.sock"


def call(node, method, path, body=None, timeout=120):
    c = UnixConnection(sock_path(node), timeout)
    data = json.dumps(body).encode() if body is not None else None
    c.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
    r = c.getresponse()
    out = r.read()
    c.close()
    if r.status >= 300:
        sys.exit(f"bench-cluster: {method} {path} on {node} -> {r.status}: {out[:300]!r}")
    return json.loads(out) if out else None


def sh(*args, check=True):
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def down():
    if os.environ.get("SMBENCH_KEEP_LOGS"):
        # Counters too, while the namespaces still exist: the kernel's TCP ones of every
        # namespace of the run and each node's /metrics.
        keep = f"{RUN}-logs"
        shutil.rmtree(keep, ignore_errors=True)
        os.makedirs(keep, exist_ok=True)
        for line in sh("ip", "netns", "list").stdout.splitlines():
            ns = line.split()[0] if line.split() else ""
            if ns == FABRIC or any(ns == n or ns.startswith(n + "-ep-") for n in NODES):
                with open(f"{keep}/nstat-{ns}.txt", "w") as f:
                    f.write(sh("nsenter", f"--net=/run/netns/{ns}", "nstat", "-az", check=False).stdout)
        for node in NODES:
            with open(f"{keep}/metrics-{node}.txt", "w") as f:
                f.write(sh("nsenter", f"--net=/run/netns/{node}", "curl", "-s", "http://127.0.0.1:9464/metrics", check=False).stdout)
    for node in NODES:
        subprocess.run(["pkill", "-KILL", "-f", "--", f"--node-name {node}( |$)"], stderr=subprocess.DEVNULL)
    time.sleep(0.2)
    for line in sh("ip", "netns", "list").stdout.splitlines():
        ns = line.split()[0] if line.split() else ""
        if ns == FABRIC or any(ns == n or ns.startswith(n + "-ep-") for n in NODES):
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                subprocess.run(["kill", "-KILL", pid], stderr=subprocess.DEVNULL)
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
    for node in NODES:
        remove_node_files(node)
    if os.environ.get("SMBENCH_KEEP_LOGS"):
        # The nodes' logs (meshd, mesh-proxy) for a look after the run; the next run's start removes them.
        keep = f"{RUN}-logs"
        for node in NODES:
            for name in ("meshd.log", "state/mesh-proxy.log"):
                src = f"{RUN}/{node}/{name}"
                if os.path.exists(src):
                    os.makedirs(f"{keep}/{node}", exist_ok=True)
                    shutil.copy(src, f"{keep}/{node}/{os.path.basename(name)}")
    shutil.rmtree(RUN, ignore_errors=True)


def up(bin_dir, lease_ttl, extra=("--proxy", "off")):
    down()
    os.makedirs(RUN)
    sh("ip", "netns", "add", FABRIC)
    sh("ip", "-n", FABRIC, "link", "set", "lo", "up")
    sh("ip", "-n", FABRIC, "link", "add", "br0", "address", "02:00:0a:62:00:c8", "type", "bridge")
    sh("ip", "-n", FABRIC, "link", "set", "br0", "up")
    sh("ip", "-n", FABRIC, "addr", "add", f"{ETCD_IP}/24", "dev", "br0")
    etcd = subprocess.Popen(["nsenter", f"--net=/run/netns/{FABRIC}", "etcd", "--name", "m1", "--data-dir", f"{RUN}/etcd",
                             "--listen-client-urls", f"http://{ETCD_IP}:2379", "--advertise-client-urls", f"http://{ETCD_IP}:2379",
                             "--listen-peer-urls", f"http://{ETCD_IP}:2380", "--log-level", "warn"],
                            stdout=open(f"{RUN}/etcd.log", "w"), stderr=subprocess.STDOUT)
    wait(lambda: sh("nsenter", f"--net=/run/netns/{FABRIC}", "curl", "-sf", f"http://{ETCD_IP}:2379/health", check=False).returncode == 0,
         "etcd")
    procs = [etcd]
    for k, node in enumerate(NODES, 1):
        os.makedirs(f"{RUN}/{node}")
        sh("ip", "netns", "add", node)
        sh("ip", "-n", FABRIC, "link", "add", f"n{k}", "type", "veth", "peer", "name", "uplink", "netns", node)
        sh("ip", "-n", FABRIC, "link", "set", f"n{k}", "master", "br0")
        sh("ip", "-n", FABRIC, "link", "set", f"n{k}", "up")
        sh("ip", "-n", node, "addr", "add", f"10.98.0.{k}/24", "dev", "uplink")
        sh("ip", "-n", node, "link", "set", "uplink", "up")
        p = subprocess.Popen(["nsenter", f"--net=/run/netns/{node}", f"{bin_dir}/meshd", "--node-name", node,
                              "--state-dir", f"{RUN}/{node}/state", "--api-socket", sock_path(node), "--pod-cidr", POD_CIDRS[k - 1],
                              "--cluster", f"etcd://{ETCD_IP}:2379", "--node-ip", f"10.98.0.{k}", "--cluster-lease-ttl", str(lease_ttl),
                              "--dns", "off", "--log-level", os.environ.get("SMBENCH_LOG_LEVEL", "warning"), *extra],
                             stdout=open(f"{RUN}/{node}/meshd.log", "w"), stderr=subprocess.STDOUT)
        procs.append(p)
        wait(lambda: ok_status(node), f"meshd on {node}")
    return procs


def ok_status(node):
    try:
        call(node, "GET", "/v1/status", timeout=2)
        return True
    except (OSError, SystemExit):
        return False


def wait(cond, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.1)
    sys.exit(f"bench-cluster: {what} did not come up")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def etcd_requests():
    """gRPC requests the etcd server has handled (the JSON gateway's included)."""
    text = sh("nsenter", f"--net=/run/netns/{FABRIC}", "curl", "-sf", f"http://{ETCD_IP}:2379/metrics").stdout
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("grpc_server_started_total{"))


def mesh_requests(node):
    text = sh("nsenter", f"--net=/run/netns/{node}", "curl", "-sf", "http://127.0.0.1:9464/metrics").stdout
    for line in text.splitlines():
        if line.startswith("mesh_cluster_etcd_requests_total "):
            return float(line.split()[1])
    return 0.0


def serve(node, ep, port):
    return subprocess.Popen(["nsenter", f"--net=/run/netns/{node}-ep-{ep}", "python3", TRAFFIC, "echo-server", "--tcp", str(port),
                             "--udp", "", "--seconds", "3600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def reach(netns, host, port, limit):
    """From a thread that enters `netns`: new connections to host:port every 2 ms (10 ms timeout) until one
    is answered; the seconds since the call, or None after `limit` seconds."""
    out = {}

    def run():
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            out["error"] = os.strerror(ctypes.get_errno())
            return
        os.close(fd)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < limit:
            try:
                with socket.create_connection((host, port), timeout=0.01) as s:
                    s.sendall(b"probe")
                    if s.recv(16) == b"probe":
                        out["seconds"] = time.perf_counter() - t0
                        return
            except OSError:
                pass
            time.sleep(0.002)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        sys.exit(f"bench-cluster: setns: {out['error']}")
    return out.get("seconds")


POLICY = """apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-from-probes}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: probe}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--endpoints", type=int, default=1000)
    ap.add_argument("--creations", type=int, default=100)
    ap.add_argument("--lease-ttl", type=int, default=10)
    ap.add_argument("--cmdline", default="tools/bench-cluster")
    a = ap.parse_args()
    a_node, b_node = NODES
    servers = []
    try:
        up(a.bin, a.lease_ttl)
        # The crowd: endpoints across both nodes, 20 label sets.
        t = time.perf_counter()
        per = a.endpoints // 2
        jobs = [(NODES[i % 2], f"bg-{i}") for i in range(per * 2)]
        with cf.ThreadPoolExecutor(max_workers=8) as ex:
            list(ex.map(lambda j: call(j[0], "POST", "/v1/endpoints", {"name": j[1], "labels": {"app": f"bg{int(j[1][3:]) % 20}"}}), jobs))
        crowd_s = time.perf_counter() - t
        wait(lambda: call(a_node, "GET", "/v1/status")["cluster"]["remoteEndpoints"] == per, "node A's view of node B's endpoints", 120)
        wait(lambda: call(b_node, "GET", "/v1/status")["cluster"]["remoteEndpoints"] == per, "node B's view of node A's endpoints", 120)
        print(f"bench-cluster: {per * 2} endpoints created across 2 nodes in {crowd_s:.1f} s; each node sees the other's", file=sys.stderr)

        call(b_node, "POST", "/v1/endpoints", {"name": "db", "labels": {"app": "db"}})
        call(a_node, "POST", "/v1/endpoints", {"name": "localdb", "labels": {"app": "db"}})
        call(a_node, "POST", "/v1/apply", {"yaml": POLICY, "source": "bench", "dryRun": False})
        db = call(b_node, "GET", "/v1/endpoints/db")["ipv4"]
        localdb = call(a_node, "GET", "/v1/endpoints/localdb")["ipv4"]
        servers += [serve(b_node, "db", 5432), serve(a_node, "localdb", 5432)]
        time.sleep(1)

        e0, m0 = etcd_requests(), sum(mesh_requests(n) for n in NODES)
        remote, local, misses = [], [], 0
        for i in range(a.creations):
            for target, host, out in (("remote", db, remote), ("local", localdb, local)):
                name = f"probe-{target[0]}{i}"
                call(a_node, "POST", "/v1/endpoints", {"name": name, "labels": {"app": "probe"}})
                s = reach(f"{a_node}-ep-{name}", host, 5432, limit=5)
                if s is None:
                    misses += 1
                else:
                    out.append(s)
        e1, m1 = etcd_requests(), sum(mesh_requests(n) for n in NODES)
        last = call(b_node, "GET", "/v1/status").get("lastPublish") or {}
        n = a.creations
        print(f"# tools/bench-cluster: {a.name}, {per * 2 + 2 + 2 * n} endpoints on 2 nodes, one etcd; command: {a.cmdline}")
        print(f"creation on node A to first answered connection, {n} creations each (allowed by a policy the receiving node enforces)")
        print(f"{'path':<34}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
        for label, xs in (("from node B's db (cluster)", remote), ("from node A's own db (baseline)", local)):
            if xs:
                print(f"{label:<34}{pct(xs, 50) * 1000:>10.1f}{pct(xs, 99) * 1000:>10.1f}{max(xs) * 1000:>10.1f}")
        if remote and local:
            print(f"ratio cluster/baseline: p50 {pct(remote, 50) / max(pct(local, 50), 1e-6):.1f}x, p99 {pct(remote, 99) / max(pct(local, 99), 1e-6):.1f}x")
        print(f"not reachable within 5 s: {misses}")
        print(f"target: p99 under 1000 ms across nodes: {'met' if remote and pct(remote, 99) < 1.0 and misses == 0 else 'NOT met'}")
        if last:
            print(f"node B's last publish (one new remote endpoint): compile {last['compileSeconds'] * 1000:.1f} ms, "
                  f"write {last['publishSeconds'] * 1000:.1f} ms, {last['entries']} policy entries")
        print(f"etcd requests during the {2 * n} creations: {e1 - e0:.0f} handled by etcd ({(e1 - e0) / (2 * n):.1f} per creation); "
              f"{m1 - m0:.0f} sent by the two meshd (renewals and heartbeats included)")
    finally:
        for s in servers:
            s.kill()
        down()


if __name__ == "__main__":
    main()
