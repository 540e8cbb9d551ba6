#!/usr/bin/env python3
"""Driver of tools/bench-services: one meshd on node smbenchs, a server endpoint and client
endpoints, and new TCP connections per second to one service through each way (direct, meshd
VIP, iptables, ipvs) with 1 .. 10,000 services defined.

Also the two ends of the traffic, run inside endpoints with `meshctl endpoint exec`:
  bench_services.py server PORT   accept loop closing every connection at once
  bench_services.py client        connects/closes in a loop, driven by commands on stdin
and `bench_services.py down`, which removes whatever a run left (the wrapper's trap)."""
import argparse, glob, ipaddress, json, os, select, shutil, signal, socket, statistics, struct
import subprocess, sys, tempfile, time

NODE = "smbenchs"
RUN = f"/run/{NODE}"
SOCK = f"{RUN}/meshd.sock"
POD_CIDR = "10.253.0.0/22"
SERVICE_CIDR = "10.254.0.0/16"
IPT_BASE = int(ipaddress.IPv4Address("10.255.0.0"))    # iptables VIPs: 10.255.0.1 .. (10.255.0.0/17)
IPVS_BASE = int(ipaddress.IPv4Address("10.255.128.0"))  # ipvs VIPs: 10.255.128.1 .. (10.255.128.0/17)
# The only addresses the client connects to: the pod CIDR, meshd's service CIDR, 10.255/16.
ALLOWED = [ipaddress.ip_network(c) for c in (POD_CIDR, SERVICE_CIDR, "10.255.0.0/16")]
BACKEND_PORT, SERVICE_PORT = 8080, 80
MAX_SERVICES, MAX_DURATION, MAX_CONNS = 10000, 10.0, 500000   # MAX_CONNS: per measurement
WARMUP = 0.5
TARGET = 0.97
WAYS = ["direct", "meshd VIP", "iptables", "ipvs"]
CLIENT_OF = {"direct": "cli", "meshd VIP": "cli", "iptables": "cli-ipt", "ipvs": "cli-ipvs"}


def die(msg):
    sys.exit(f"bench-services: error: {msg}")


def log(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


T0 = time.monotonic()


# --- the two ends of the traffic ---------------------------------------------------------------

def server(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(4096)
    print("listening", flush=True)
    while True:
        try:
            c, _ = s.accept()
            c.close()
        except (ConnectionAbortedError, ConnectionResetError):
            pass


def allowed(ip):
    try:
        a = ipaddress.IPv4Address(ip)
    except ValueError:
        return False
    return any(a in n for n in ALLOWED)


def client():
    """Commands on stdin, one JSON line back for each:
      probe IP PORT TIMEOUT      one connection with a timeout: {"ok": bool, "error": str}
      run IP PORT SECONDS        connect/close for SECONDS (at most MAX_CONNS connections):
                                 {"n": connections, "secs": elapsed, "errors": n, "error": first, "stalls": n}
      quit
    Timing is the client's own, so the command round trip stays out of the figure. Each
    socket has SO_LINGER 0: close() sends a RST and leaves no TIME_WAIT behind, so the
    ephemeral ports never run out."""
    linger = struct.pack("ii", 1, 0)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "quit":
            return
        ip, port, arg = cmd[1], int(cmd[2]), float(cmd[3])
        if not allowed(ip):
            print(json.dumps({"ok": False, "error": f"{ip} is outside the bench's ranges"}), flush=True)
            continue
        addr = (ip, port)
        if cmd[0] == "probe":
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            s.settimeout(arg)
            try:
                s.connect(addr)
                out = {"ok": True, "error": ""}
            except OSError as e:
                out = {"ok": False, "error": str(e) or type(e).__name__}
            s.close()
            print(json.dumps(out), flush=True)
            continue
        secs = min(arg, MAX_DURATION)
        n = errors = stalls = 0
        first = ""
        AF, ST, SOL, LINGER = socket.AF_INET, socket.SOCK_STREAM, socket.SOL_SOCKET, socket.SO_LINGER
        sock = socket.socket
        t0 = last = time.perf_counter()
        end = t0 + secs
        while True:
            for _ in range(32):
                s = sock(AF, ST)
                s.setsockopt(SOL, LINGER, linger)
                try:
                    s.connect(addr)
                    n += 1
                except OSError as e:
                    errors += 1
                    first = first or str(e)
                s.close()
            now = time.perf_counter()
            if now - last > 0.2:   # 32 connections in 200 ms: a SYN was lost and retransmitted
                stalls += 1
            last = now
            if now >= end or n + errors >= MAX_CONNS or errors >= 100:
                break
        print(json.dumps({"n": n, "secs": now - t0, "errors": errors, "error": first, "stalls": stalls}), flush=True)


class Client:
    """A client process inside an endpoint, started once and kept for the whole run."""

    def __init__(self, meshctl, endpoint, cpu):
        argv = [meshctl, "endpoint", "exec", endpoint, "--"] + (["taskset", "-c", str(cpu)] if cpu is not None else [])
        argv += ["python3", "-u", os.path.abspath(__file__), "client"]
        self.name = endpoint
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        PROCS.append(self.p)

    def ask(self, line, timeout):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        r, _, _ = select.select([self.p.stdout], [], [], timeout)
        if not r:
            die(f"the client in {self.name} did not answer '{line}' within {timeout:.0f} s")
        out = self.p.stdout.readline()
        if not out:
            die(f"the client in {self.name} exited (status {self.p.wait()})")
        return json.loads(out)

    def probe(self, ip, port, timeout=2.0):
        return self.ask(f"probe {ip} {port} {timeout}", timeout + 10)

    def run(self, ip, port, secs):
        r = self.ask(f"run {ip} {port} {secs}", secs + 60)
        if r.get("errors"):
            die(f"{self.name} -> {ip}:{port}: {r['errors']} connection(s) failed ({r['error']})")
        return r


# --- iptables and ipvs rule sets --------------------------------------------------------------

def ip_of(n):
    return str(ipaddress.IPv4Address(n))


def ipt_vip(i):
    return ip_of(IPT_BASE + i)


def ipvs_vip(i):
    return ip_of(IPVS_BASE + i)


def iptables_rules(n, backend):
    """kube-proxy's layout for n services, in iptables-restore form (the whole nat table):
    nat OUTPUT jumps to KUBE-SERVICES, one rule per service matching its VIP, each to a
    KUBE-SVC chain that jumps to a KUBE-SEP chain, which DNATs to the backend. The rules are
    matched in order, so the last service is the worst case."""
    out = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
           ":POSTROUTING ACCEPT [0:0]", ":KUBE-SERVICES - [0:0]"]
    out += [f":KUBE-SVC-{i} - [0:0]\n:KUBE-SEP-{i} - [0:0]" for i in range(1, n + 1)]
    out.append("-A OUTPUT -j KUBE-SERVICES")
    out += [f"-A KUBE-SERVICES -d {ipt_vip(i)}/32 -p tcp --dport {SERVICE_PORT} -j KUBE-SVC-{i}" for i in range(1, n + 1)]
    for i in range(1, n + 1):
        out.append(f"-A KUBE-SVC-{i} -j KUBE-SEP-{i}")
        out.append(f"-A KUBE-SEP-{i} -p tcp -j DNAT --to-destination {backend}:{BACKEND_PORT}")
    out.append("COMMIT")
    return "\n".join(out) + "\n"


def ipvs_rules(first, last, backend):
    """ipvsadm-restore input for virtual services first..last: round robin, one real server
    in NAT (masquerading) mode."""
    out = []
    for i in range(first, last + 1):
        v = f"{ipvs_vip(i)}:{SERVICE_PORT}"
        out.append(f"-A -t {v} -s rr")
        out.append(f"-a -t {v} -r {backend}:{BACKEND_PORT} -m")
    return "\n".join(out) + "\n"


def services_yaml(first, last):
    docs = []
    for i in range(first, last + 1):
        docs.append("apiVersion: v1\nkind: Service\n"
                    f"metadata: {{name: svc-{i}, namespace: default}}\n"
                    "spec:\n  selector: {app: bench}\n"
                    "  ports: [{name: http, port: 80, targetPort: http, protocol: TCP}]\n")
    return "---\n".join(docs)


# --- the node ---------------------------------------------------------------------------------

PROCS = []


def cgroup2_root():
    for line in open("/proc/self/mountinfo"):
        if " - cgroup2 " in line:
            return line.split()[4]
    die("no cgroup2 mount")


def is_our_meshd(pid):
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except OSError:
        return False
    return os.path.basename(argv[0]) == b"meshd" and any(
        a == b"--node-name" and b == NODE.encode() for a, b in zip(argv, argv[1:]))


def kill(p, sig=signal.SIGTERM, wait=5.0):
    if p.poll() is not None:
        return
    p.send_signal(sig)
    try:
        p.wait(wait)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def down():
    """Remove everything this run, or a killed one, left: processes we started (by pid), the
    node's and the endpoints' netns (smbenchs, smbenchs-*), bpffs folder, cgroup, /run/smbenchs."""
    for p in reversed(PROCS):
        try:
            if p.stdin:
                p.stdin.close()
        except OSError:
            pass
        kill(p, wait=2.0)
    PROCS.clear()
    try:   # a meshd a killed run left: the pid it recorded, if that is still our meshd
        pid = int(open(f"{RUN}/meshd.pid").read())
        if is_our_meshd(pid):
            os.kill(pid, signal.SIGKILL)
            for _ in range(50):
                if not os.path.exists(f"/proc/{pid}"):
                    break
                time.sleep(0.1)
    except (OSError, ValueError):
        pass
    cg = os.path.join(cgroup2_root(), NODE)
    if os.path.isdir(cg):   # clients and servers of a killed run: they are in our endpoints' cgroups
        try:
            open(os.path.join(cg, "cgroup.kill"), "w").write("1")
        except OSError:
            pass
    for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines():
        ns = line.split()[0] if line.split() else ""
        if ns == NODE or ns.startswith(NODE + "-"):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:   # only processes inside our own namespaces
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
    shutil.rmtree(f"/sys/fs/bpf/{NODE}", ignore_errors=True)
    shutil.rmtree(f"/run/swiftmesh-dns/{NODE}", ignore_errors=True)   # meshd's DNS files
    for d in glob.glob(f"/etc/netns/{NODE}-*"):                         # endpoints' resolv.conf
        shutil.rmtree(d, ignore_errors=True)
    if os.path.exists(f"{RUN}/meshd.log"):   # kept for a look after the run
        shutil.copy(f"{RUN}/meshd.log", f"/tmp/{NODE}-meshd.log")
    shutil.rmtree(RUN, ignore_errors=True)
    if os.path.isdir(cg):
        for _ in range(50):
            for kid in sorted(glob.glob(cg + "/**/", recursive=True), key=len, reverse=True):
                try:
                    os.rmdir(kid)
                except OSError:
                    pass
            if not os.path.isdir(cg):
                break
            time.sleep(0.1)
        if os.path.isdir(cg):
            print(f"bench-services: warning: could not remove cgroup {cg}", file=sys.stderr)


class Node:
    def __init__(self, bin_dir):
        self.bin = bin_dir
        os.environ["SWIFTMESH_API_SOCKET"] = SOCK   # for every meshctl, the clients' and server's too
        self.env = dict(os.environ)
        down()
        os.makedirs(RUN)
        subprocess.run(["ip", "netns", "add", NODE], check=True)
        log_file = open(f"{RUN}/meshd.log", "w")
        self.meshd = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{NODE}", f"{bin_dir}/meshd", "--node-name", NODE,
             "--state-dir", f"{RUN}/state", "--api-socket", SOCK, "--pod-cidr", POD_CIDR,
             "--service-cidr", SERVICE_CIDR, "--log-level", "warning"],
            stdout=log_file, stderr=subprocess.STDOUT)
        PROCS.insert(0, self.meshd)   # stopped last
        open(f"{RUN}/meshd.pid", "w").write(str(self.meshd.pid))   # nsenter execs meshd: same pid
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.meshctl("status", check=False).returncode == 0:
                return
            if self.meshd.poll() is not None:
                die("meshd exited:\n" + open(f"{RUN}/meshd.log").read()[-2000:])
            time.sleep(0.1)
        die("meshd did not answer")

    def meshctl(self, *args, check=True, stdin=None):
        r = subprocess.run([f"{self.bin}/meshctl", *args], env=self.env, capture_output=True, text=True, input=stdin)
        if check and r.returncode != 0:
            die(f"meshctl {' '.join(args)}: {(r.stderr or r.stdout).strip()[-1500:]}")
        return r

    def json(self, *args):
        return json.loads(self.meshctl(*args, "-o", "json").stdout)

    def endpoint(self, name, labels, ports=None):
        self.meshctl("endpoint", "create", name, "--labels", labels, *(["--ports", ports] if ports else []))
        ep = self.json("endpoint", "get", name)
        if not allowed(ep["ipv4"]) or ipaddress.IPv4Address(ep["ipv4"]) not in ipaddress.ip_network(POD_CIDR):
            die(f"endpoint {name} got {ep['ipv4']}, outside {POD_CIDR}")
        if not (ep["netns"] == NODE or ep["netns"].startswith(NODE + "-")):
            die(f"endpoint {name} lives in netns {ep['netns']}, not one of ours")
        return ep

    def apply_services(self, first, last):
        """Services svc-first .. svc-last in one file, one `meshctl apply`; returns its seconds."""
        with tempfile.NamedTemporaryFile("w", dir=RUN, prefix="services-", suffix=".yaml", delete=False) as f:
            f.write(services_yaml(first, last))
        t = time.perf_counter()
        self.meshctl("apply", "-f", f.name)
        dt = time.perf_counter() - t
        os.unlink(f.name)
        return dt

    def wait_services(self, count, timeout=120):
        """Until meshd lists count services and svc-count has its clusterIP and a ready backend;
        returns that VIP."""
        deadline = time.time() + timeout
        while True:
            n = len(self.json("get", "services"))
            svc = self.json("get", "service", f"svc-{count}")
            vip = svc.get("clusterIP") or ""
            ready = [b for b in svc.get("backends", [{"state": "ready"}]) if b.get("state") == "ready"]
            if n == count and vip and ready:
                break
            if time.time() > deadline:
                die(f"after {timeout} s meshd lists {n} services (expected {count}), svc-{count} clusterIP '{vip}', "
                    f"{len(ready)} ready backend(s)")
            time.sleep(0.5)
        if ipaddress.IPv4Address(vip) not in ipaddress.ip_network(SERVICE_CIDR):
            die(f"svc-{count} got clusterIP {vip}, outside {SERVICE_CIDR}")
        return vip


def cpu_seconds(pid):
    """User + system CPU seconds of a process so far."""
    f = open(f"/proc/{pid}/stat").read()
    f = f[f.rindex(")") + 2:].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def settle(pid, timeout=120):
    """Until meshd has used under 5% of a core for two 0.5 s windows in a row (after an apply
    it may still be writing maps or its store); returns the seconds waited."""
    t0, quiet = time.perf_counter(), 0
    while quiet < 2 and time.perf_counter() - t0 < timeout:
        c = cpu_seconds(pid)
        time.sleep(0.5)
        quiet = quiet + 1 if cpu_seconds(pid) - c < 0.025 else 0
    if quiet < 2:
        log(f"warning: meshd still busy after {timeout} s; measuring anyway")
    return time.perf_counter() - t0


def in_netns(ns, argv, stdin=None):
    r = subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True, text=True)
    if r.returncode != 0:
        die(f"in {ns}: {' '.join(argv)}: {(r.stderr or r.stdout).strip()[-1500:]}")
    return r


def wait_reachable(cl, ip, port, what, timeout=30):
    """Probe until one connection succeeds (meshd may program its maps just after apply)."""
    deadline = time.time() + timeout
    while True:
        r = cl.probe(ip, port)
        if r["ok"]:
            return
        if time.time() > deadline:
            die(f"{what}: {ip}:{port} from {cl.name} does not connect: {r['error']}")
        time.sleep(0.5)


# --- the bench --------------------------------------------------------------------------------

PROG_PIN = f"/sys/fs/bpf/{NODE}/mesh_lb_connect4"


def prog_stats():
    """(run_cnt, run_time_ns) of the connect4 program, from the kernel's own BPF stats."""
    r = subprocess.run(["bpftool", "-j", "prog", "show", "pinned", PROG_PIN], capture_output=True, text=True)
    try:
        j = json.loads(r.stdout)
        return j.get("run_cnt", 0), j.get("run_time_ns", 0)
    except ValueError:
        return 0, 0


def bench(a):
    counts = a.services
    cpus = os.cpu_count() or 1
    cli_cpu, srv_cpu = (0, 1) if cpus >= 2 else (None, None)
    node = Node(a.bin)
    mc = f"{a.bin}/meshctl"
    ways = [w for w in WAYS if w != "ipvs" or a.ipvs]
    log("meshd up; creating endpoints srv, cli, cli-ipt" + (", cli-ipvs" if a.ipvs else ""))
    srv = node.endpoint("srv", "app=bench", "http=8080")
    cli = node.endpoint("cli", "app=client")
    eps = {"cli": cli, "cli-ipt": node.endpoint("cli-ipt", "app=client")}
    if a.ipvs:
        eps["cli-ipvs"] = node.endpoint("cli-ipvs", "app=client")
    backend = srv["ipv4"]

    srv_argv = [mc, "endpoint", "exec", "srv", "--"] + (["taskset", "-c", str(srv_cpu)] if srv_cpu is not None else [])
    sp = subprocess.Popen(srv_argv + ["python3", "-u", os.path.abspath(__file__), "server", str(BACKEND_PORT)],
                          stdout=subprocess.PIPE, text=True, env=node.env)
    PROCS.append(sp)
    r, _, _ = select.select([sp.stdout], [], [], 20)
    if not r or sp.stdout.readline().strip() != "listening":
        die("the server in srv did not start listening")
    clients = {name: Client(mc, name, cli_cpu) for name in eps}
    wait_reachable(clients["cli"], backend, BACKEND_PORT, "direct")
    clients["cli"].run(backend, BACKEND_PORT, 3)   # the machine warms up: first seconds run slow

    setup = []    # (what, seconds)
    ipvs_skip = a.ipvs_skip
    results = {}  # (count, way) -> [conn/s per round]
    target_of = {}
    prev = 0
    ipvs_done = 0
    for count in counts:
        log(f"{count} services: applying svc-{prev + 1} .. svc-{count}")
        setup.append((f"meshctl apply, services {prev + 1}..{count}", node.apply_services(prev + 1, count)))
        t = time.perf_counter()
        vip = node.wait_services(count)
        setup.append((f"  until meshd lists them and svc-{count}'s clusterIP", time.perf_counter() - t))
        prev = count
        target_of["direct"] = (backend, BACKEND_PORT)
        target_of["meshd VIP"] = (vip, SERVICE_PORT)

        ns = eps["cli-ipt"]["netns"]
        t = time.perf_counter()
        in_netns(ns, [a.iptables_restore], stdin=iptables_rules(count, backend))
        setup.append((f"iptables-restore, {count} services", time.perf_counter() - t))
        rules = in_netns(ns, [a.iptables_save, "-t", "nat"]).stdout.count("-A KUBE-SERVICES ")
        if rules != count:
            die(f"KUBE-SERVICES holds {rules} rules after iptables-restore, expected {count}")
        target_of["iptables"] = (ipt_vip(count), SERVICE_PORT)

        if "ipvs" in ways:
            ns = eps["cli-ipvs"]["netns"]
            t = time.perf_counter()
            in_netns(ns, ["ipvsadm-restore"], stdin=ipvs_rules(ipvs_done + 1, count, backend))
            setup.append((f"ipvsadm-restore, services {ipvs_done + 1}..{count}", time.perf_counter() - t))
            ipvs_done = count
            listed = in_netns(ns, ["ipvsadm", "-Ln"]).stdout.count("TCP  ")
            if listed != count:
                die(f"ipvsadm lists {listed} virtual services, expected {count}")
            target_of["ipvs"] = (ipvs_vip(count), SERVICE_PORT)

        setup.append(("  until meshd is idle (< 5% of a core)", settle(node.meshd.pid)))

        # Warm-up: every way connects once (probe, with retries: meshd may still be
        # programming), then runs briefly.
        for w in list(ways):
            cl = clients[CLIENT_OF[w]]
            ip, port = target_of[w]
            if w == "ipvs":
                r = cl.probe(ip, port)
                if not r["ok"]:
                    ipvs_skip = f"connect to the ipvs VIP {ip}:{port} from cli-ipvs failed: {r['error']}"
                    log(f"ipvs: skipped: {ipvs_skip}")
                    ways.remove(w)
                    continue
            else:
                wait_reachable(cl, ip, port, w)
            cl.run(ip, port, WARMUP)

        log(f"{count} services: {a.rounds} rounds x {len(ways)} ways x {a.duration} s "
            f"(VIP {target_of['meshd VIP'][0]}, iptables VIP {target_of['iptables'][0]})")
        busy0, t0 = cpu_seconds(node.meshd.pid), time.perf_counter()
        for rnd in range(a.rounds):
            # direct and VIP back to back, first one then the other, and the others after:
            # a plain rotation made direct follow iptables in two rounds of three, and a
            # slow way (iptables at 10,000 rules) leaves the next one a quieter machine.
            pair = ["direct", "meshd VIP"] if rnd % 2 == 0 else ["meshd VIP", "direct"]
            rest = [w for w in ways if w not in pair]
            order = pair + rest[rnd % len(rest):] + rest[:rnd % len(rest)] if rest else pair
            for w in order:
                cl = clients[CLIENT_OF[w]]
                ip, port = target_of[w]
                s0 = prog_stats()
                r = cl.run(ip, port, a.duration)
                s1 = prog_stats()
                results.setdefault((count, w), []).append(r["n"] / r["secs"])
                if w in ("direct", "meshd VIP") and s1[0] > s0[0]:
                    # connect4 runs for every connect of cli: a miss for direct, the
                    # translation for the VIP. Its own time, as the kernel counts it.
                    results.setdefault(("prog", count, w), []).append((s1[1] - s0[1]) / (s1[0] - s0[0]))
                if r["stalls"]:
                    results.setdefault(("stalls", w), []).append(r["stalls"])
        results[("meshd cpu", count)] = [(cpu_seconds(node.meshd.pid) - busy0) / (time.perf_counter() - t0)]
    for cl in clients.values():
        try:
            cl.p.stdin.write("quit\n")
            cl.p.stdin.flush()
        except OSError:
            pass
    return ways, results, setup, ipvs_skip, backend


def report(a, ways, results, setup, ipvs_skip, backend):
    counts = a.services
    med = {k: statistics.median(v) for k, v in results.items() if k[0] not in ("stalls", "meshd cpu")}
    ipt_ver = subprocess.run([a.iptables_restore, "--version"], capture_output=True, text=True).stdout.strip()
    cpus = os.cpu_count() or 1
    print()
    print("SwiftMesh service load-balancing benchmark: new TCP connections per second to one service")
    print("=" * 100)
    print(f"command:  {a.cmdline}")
    print(f"commit:   {a.commit}")
    print(f"machine:  {cpus} CPUs, kernel {os.uname().release}, {time.strftime('%Y-%m-%d %H:%M')}; meshd/meshctl from {a.bin}")
    print(f"client:   one python connect/close loop (SO_LINGER 0), {'CPU 0' if cpus >= 2 else 'not pinned'}; "
          f"server: python accept/close loop on {backend}:{BACKEND_PORT}, {'CPU 1' if cpus >= 2 else 'not pinned'}")
    print("ways:     direct     cli -> backend:8080")
    print("          meshd VIP  cli -> clusterIP:80 of the last service created (eBPF connect4 rewrites it to backend:8080)")
    print(f"          iptables   cli-ipt -> 10.255.x.y:80, the LAST of N kube-proxy-style nat rules ({ipt_ver})")
    print("          ipvs       cli-ipvs -> 10.255.128.x:80, one of N ipvs virtual services (rr, masq)"
          if "ipvs" in ways else f"          ipvs       skipped: {ipvs_skip}")
    print("          (iptables and ipvs in endpoints of their own, so their netfilter hooks and conntrack")
    print("          do not weigh on the direct and VIP figures)")
    print(f"runs:     {a.rounds} rounds x {len(ways)} ways per count (direct and VIP back to back, their order alternating; the others after), {a.duration} s each, "
          f"after a {WARMUP} s warm-up per way; medians")
    print(f"targets:  meshd VIP/direct >= {TARGET} at every count; VIP flat: conn/s at {counts[-1]} / at {counts[0]} >= {TARGET}")
    print()
    for what, s in setup:
        print(f"setup:    {what:<50} {s:8.2f} s")
    print()
    hdr = f"{'services':>8}" + "".join(f"{w:>12}" for w in ways) + "".join(f"{w + '/direct':>18}" for w in ways[1:])
    print(hdr)
    print("-" * len(hdr))
    for c in counts:
        row = f"{c:>8}" + "".join(f"{med[(c, w)]:>12.0f}" for w in ways)
        row += "".join(f"{med[(c, w)] / med[(c, 'direct')]:>18.3f}" for w in ways[1:])
        print(row)
    if len(counts) > 1:
        lo, hi = counts[0], counts[-1]
        print(f"{f'{hi}/{lo}':>8}" + "".join(f"{med[(hi, w)] / med[(lo, w)]:>12.3f}" for w in ways))
    print()
    print("paired: median over rounds of (way / direct in the same round), less exposed to the VM's drift:")
    for c in counts:
        pairs = {w: statistics.median(x / d for x, d in zip(results[(c, w)], results[(c, "direct")])) for w in ways[1:]}
        print(f"{c:>8}" + "".join(f"{w}: {pairs[w]:.3f}   " for w in ways[1:]))
    if any(k[0] == "prog" for k in results):
        print()
        print("the connect4 program's own time per connect (kernel.bpf_stats_enabled: run_time_ns / run_cnt), and what")
        print("the difference is of one direct connection's time (1 / direct conn/s):")
        for c in counts:
            d = statistics.median(results.get(("prog", c, "direct"), [0]))
            v = statistics.median(results.get(("prog", c, "meshd VIP"), [0]))
            share = (v - d) / (1e9 / med[(c, "direct")])
            print(f"{c:>8}   direct (a lookup that misses): {d:6.0f} ns   VIP (translation): {v:6.0f} ns   "
                  f"difference: {v - d:6.0f} ns = {share:.2%} of a connection")
    print()
    print("spread across rounds, (max - min) / median:")
    print(f"{'services':>8}" + "".join(f"{w:>12}" for w in ways))
    for c in counts:
        print(f"{c:>8}" + "".join(f"{(max(results[(c, w)]) - min(results[(c, w)])) / med[(c, w)]:>12.1%}" for w in ways))
    print("meshd's CPU use while measuring (share of one core): "
          + ", ".join(f"{c} services {results[('meshd cpu', c)][0]:.1%}" for c in counts))
    stalls = {w: sum(results.get(("stalls", w), [])) for w in ways}
    if any(stalls.values()):
        print("stalls (a batch of 32 connections taking over 200 ms, e.g. a SYN retransmitted): "
              + ", ".join(f"{w} {n}" for w, n in stalls.items() if n))
    print()
    vip_ok = [(c, med[(c, "meshd VIP")] / med[(c, "direct")]) for c in counts]
    bad = [f"{c}: {r:.3f}" for c, r in vip_ok if r < TARGET]
    print(f"target meshd VIP/direct >= {TARGET} at every count: {'PASS' if not bad else 'FAIL (' + ', '.join(bad) + ')'}")
    if len(counts) > 1:
        flat = med[(counts[-1], "meshd VIP")] / med[(counts[0], "meshd VIP")]
        print(f"target meshd VIP flat from {counts[0]} to {counts[-1]} services (>= {TARGET}): "
              f"{'PASS' if flat >= TARGET else 'FAIL'} ({flat:.3f}; direct itself: "
              f"{med[(counts[-1], 'direct')] / med[(counts[0], 'direct')]:.3f})")


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "client":
        return client()
    if len(sys.argv) >= 3 and sys.argv[1] == "server":
        return server(int(sys.argv[2]))
    if len(sys.argv) == 2 and sys.argv[1] == "down":
        return down()
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--services", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--iptables-restore", default="iptables-restore")
    ap.add_argument("--iptables-save", default="iptables-save")
    ap.add_argument("--ipvs", action="store_true")
    ap.add_argument("--ipvs-skip", default="")
    ap.add_argument("--commit", default="?")
    ap.add_argument("--cmdline", required=True)
    a = ap.parse_args()
    try:
        a.services = sorted({int(x) for x in a.services.split(",") if x.strip()})
    except ValueError:
        die("--services takes counts such as 1,1000,10000")
    if not a.services or a.services[0] < 1 or a.services[-1] > MAX_SERVICES:
        die(f"--services: counts must be 1..{MAX_SERVICES}")
    if not 1 <= a.rounds <= 50 or not 0.2 <= a.duration <= MAX_DURATION:
        die(f"--rounds must be 1..50 and --duration 0.2..{MAX_DURATION:g} s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    try:
        out = bench(a)
    finally:
        down()
    report(a, *out)


if __name__ == "__main__":
    main()
