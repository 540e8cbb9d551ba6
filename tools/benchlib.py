"""What the benchmark drivers share: meshd's API over its unix socket, and removing what a
benchmark node (or a killed run of one) left outside its namespaces."""
import glob, http.client, os, shutil, socket, sys, time


class UnixConnection(http.client.HTTPConnection):
    """HTTP to meshd's API socket."""

    def __init__(self, path, timeout=60):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


def cgroup2_root():
    for line in open("/proc/self/mountinfo"):
        if " - cgroup2 " in line:
            return line.split()[4]
    sys.exit(f"{os.path.basename(sys.argv[0])}: no cgroup2 mount")


def remove_node_files(node):
    """The node's pins, meshd's DNS files, its endpoints' resolv.conf folders, and its cgroup
    (the processes in its endpoints' cgroups killed first)."""
    shutil.rmtree(f"/sys/fs/bpf/{node}", ignore_errors=True)
    shutil.rmtree(f"/run/swiftmesh-dns/{node}", ignore_errors=True)
    for d in glob.glob(f"/etc/netns/{node}-ep-*"):
        shutil.rmtree(d, ignore_errors=True)
    cg = os.path.join(cgroup2_root(), node)
    if not os.path.isdir(cg):
        return
    for kid in glob.glob(cg + "/*/"):
        try:
            open(kid + "cgroup.kill", "w").write("1")
        except OSError:
            pass
    for _ in range(50):
        for kid in glob.glob(cg + "/*/"):
            try:
                os.rmdir(kid)
            except OSError:
                pass
        try:
            os.rmdir(cg)
            return
        except OSError:
            time.sleep(0.1)
