#!/usr/bin/env python3
"""Traffic generator and checker for SwiftMesh integration tests (stdlib only).

The tests run these subcommands inside endpoint network namespaces. Each one prints
exactly one JSON line on stdout; errors go to stderr with a non-zero exit status.

  tcp-sink    --port P [--bind ADDR] [--ready-file F]
                accept one connection, read to EOF -> {"bytes", "sha256"}
  tcp-send    --host H --port P --bytes N [--seed S] [--timeout T]
                send N seeded pseudo-random bytes in uneven chunks -> {"bytes", "sha256"}
  udp-sink    --port P --count N [--timeout T] [--bind ADDR] [--ready-file F]
                receive until N datagrams or T s of silence -> {"datagrams", "bytes"}
  udp-send    --host H --port P --count N --size S [--interval MS]
                send N datagrams of S bytes -> {"datagrams", "bytes"}
  stream-sink --port P [--bind ADDR] [--ready-file F]
                accept one connection, check byte i == i % 251
                -> {"bytes", "ok", "first_bad_offset"} (exit 0 even when not ok)
  stream-send --host H --port P --seconds T --rate BYTES_PER_SEC [--stop-file F]
                send the i % 251 pattern, paced, for T s -> {"bytes"} or {"bytes", "error"}

  echo-server --tcp PORTS --udp PORTS [--ready-file F] [--seconds T]
                echo on every listed port (e.g. 80,8080-8090) until killed or T s
  probe       --host H --port P [--proto tcp|udp] [--timeout S]
                one new connection (or datagram) and its echo -> {"ok", "error"}
  probe-loop  --host H --port P --seconds T [--interval MS] [--timeout S] [--stop-file F]
                new connections back to back for T s -> {"attempts", "ok", "failed"}

  duplex-server / duplex-client  --bytes N --seed S [--max-chunk C]
                both ends send N seeded bytes in uneven writes while reading in uneven
                reads, then half-close -> {"sent", "sent_sha256", "received", "received_sha256"}
  halfclose-server --port P --reply-bytes N: read to EOF, then answer N bytes
  halfclose-client --host H --port P --bytes N: send, shutdown(SHUT_WR), read the answer
  reset-server --port P / expect-reset --host H --port P: a reset must arrive as a reset
  close-early-server --port P --after N: read N bytes, then close with data unread
  slow-sink   --port P --pause S [--progress-file F]: accept, read nothing for S seconds, then all
  many-server --port P / many-client --host H --port P --count N --hold S
                N concurrent connections, one echo each, held S seconds
  reopen      --host H --port P --source-port S --hold T [--ready-file F]
                two connections from source port S, one echo each: the first ends with a
                reset (so neither side keeps its tuple in TIME_WAIT), the second opens the
                same tuple at once and is held T s -> {"ok"}
  udp-pingpong --host H --port P --seconds T [--interval MS]
                one UDP socket (one flow) sends a datagram every interval and waits
                for its echo -> {"attempts", "ok", "failed"}
  udp-churn   --host H --port P --count N --seconds T
                one datagram to each of N ports from P on (N flows), spread over T s
                -> {"datagrams"}
  raw-frames  --iface I --kinds K1,K2,...
                send one hand-made Ethernet frame of each kind on I (AF_PACKET), from I's
                address to its gateway's MAC: ipv6, bad-version, bad-ihl, bad-length, short
                -> {"sent"}
  cc-server --port P [--cc NAME] / cc-client --host H --port P [--cc NAME]
                one connection, one byte each way -> {"cc"}: the socket's TCP congestion
                control; --cc chooses one first, as an application may (the listener's
                choice carries over to the accepted socket)

  http-server --port P [--name N] [--fail-every K] [--ready-file F]
                HTTP/1.1 with keep-alive: every method answers 200 with JSON {server, method,
                path, peer, body_bytes, headers}; with --fail-every K, every Kth request
                gets 503
  http-client --url URL --count N [--method M] [--interval MS] [--header "Name: v"]
                N requests over ONE keep-alive connection (http.client), reconnecting only
                if the server closes it -> {"statuses", "connections", "bodies", "errors"}
  http-raw    --host H --port P --data HEX [--timeout S]
                send raw bytes, read until the peer closes or T s pass
                -> {"response", "closed"} (the first 4 KiB, as text); --pad-header N adds
                an N-byte header after the request line

Senders retry connecting for up to 5 s, half-close when done and wait for the peer's
EOF, so a sender's success means the sink has read everything.
"""

import argparse
import hashlib
import json
import random
import socket
import sys
import time

CONNECT_RETRY_S = 5.0
IO_TIMEOUT_S = 60.0  # no single blocking read/write may stall longer than this
RECV_SIZE = 65536
PATTERN_MOD = 251


def emit(obj):
    print(json.dumps(obj), flush=True)


def family_of(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def listen(bind, port, kind, ready_file):
    sock = socket.socket(family_of(bind), kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((bind, port))
    if kind == socket.SOCK_STREAM:
        sock.listen(1024)
    if ready_file:
        open(ready_file, "a").close()
    return sock


def accept_one(args):
    server = listen(args.bind, args.port, socket.SOCK_STREAM, args.ready_file)
    conn, _ = server.accept()
    server.close()
    conn.settimeout(IO_TIMEOUT_S)
    return conn


def connect(host, port):
    deadline = time.monotonic() + CONNECT_RETRY_S
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=1.0)
            sock.settimeout(IO_TIMEOUT_S)
            return sock
        except OSError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def finish(sock):
    """Half-close our side, then drain until the peer closes its side."""
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(RECV_SIZE):
        pass
    sock.close()


def tcp_sink(args):
    conn = accept_one(args)
    digest, total = hashlib.sha256(), 0
    while chunk := conn.recv(RECV_SIZE):
        digest.update(chunk)
        total += len(chunk)
    conn.close()
    emit({"bytes": total, "sha256": digest.hexdigest()})


def tcp_send(args):
    data_rng = random.Random(args.seed)
    size_rng = random.Random(f"sizes-{args.seed}")  # chunking never changes the bytes
    sock = connect(args.host, args.port)
    sock.settimeout(args.timeout)
    digest, sent = hashlib.sha256(), 0
    while sent < args.bytes:
        chunk = data_rng.randbytes(min(size_rng.randint(1, 100_000), args.bytes - sent))
        sock.sendall(chunk)
        digest.update(chunk)
        sent += len(chunk)
    finish(sock)
    emit({"bytes": sent, "sha256": digest.hexdigest()})


def udp_sink(args):
    sock = listen(args.bind, args.port, socket.SOCK_DGRAM, args.ready_file)
    sock.settimeout(args.timeout)
    count = total = 0
    while count < args.count:
        try:
            data, _ = sock.recvfrom(RECV_SIZE)
        except socket.timeout:
            break
        count += 1
        total += len(data)
    emit({"datagrams": count, "bytes": total})


def udp_send(args):
    sock = socket.socket(family_of(args.host), socket.SOCK_DGRAM)
    payload = bytes(i % 256 for i in range(args.size))
    for i in range(args.count):
        sock.sendto(payload, (args.host, args.port))
        if args.interval > 0 and i + 1 < args.count:
            time.sleep(args.interval / 1000)
    emit({"datagrams": args.count, "bytes": args.count * args.size})


# bytes(range(251)) repeated: PATTERN[k % 251 : k % 251 + n] is the stream at offset k.
PATTERN = bytes(range(PATTERN_MOD)) * (RECV_SIZE // PATTERN_MOD + 2)


def stream_sink(args):
    import time

    conn = accept_one(args)
    total, first_bad, error = 0, None, None
    last_progress = 0.0
    unacked = 0
    try:
        while chunk := conn.recv(RECV_SIZE):
            if args.progress_file and time.monotonic() - last_progress > 0.05:
                last_progress = time.monotonic()
                with open(args.progress_file, "w") as f:
                    f.write(str(total + len(chunk)))
            if first_bad is None:
                start = total % PATTERN_MOD
                expected = PATTERN[start:start + len(chunk)]
                if chunk != expected:
                    first_bad = total + next(
                        i for i, (a, b) in enumerate(zip(chunk, expected)) if a != b)
            total += len(chunk)
            # An application-level acknowledgement now and then, as many protocols send.
            unacked += len(chunk)
            if args.ack_every and unacked >= args.ack_every:
                conn.sendall(b"a")
                unacked = 0
    except OSError as e:  # e.g. a reset: report it in the JSON, the test decides
        error = f"{type(e).__name__}: {e}"
    conn.close()
    if args.progress_file:
        with open(args.progress_file, "w") as f:
            f.write(str(total))
    result = {"bytes": total, "ok": first_bad is None and error is None,
              "first_bad_offset": first_bad}
    if error:
        result["error"] = error
    emit(result)


def stopped(args):
    """--stop-file: a test ends a timed loop early by creating this file."""
    import os
    return bool(args.stop_file) and os.path.exists(args.stop_file)


def stream_send(args):
    if args.rate <= 0:
        raise ValueError("--rate must be positive")
    sock = connect(args.host, args.port)
    chunk = max(1, min(16384, int(args.rate // 100)))  # ~100 writes per second
    start = time.monotonic()
    sent = 0
    try:
        while (elapsed := time.monotonic() - start) < args.seconds and not stopped(args):
            behind = args.rate * elapsed - sent
            if behind < chunk:
                time.sleep(min(0.01, (chunk - behind) / args.rate))
                continue
            offset = sent % PATTERN_MOD
            sent += sock.send(PATTERN[offset:offset + chunk])
        finish(sock)
    except OSError as e:
        error = f"{type(e).__name__}: {e}"
        emit({"bytes": sent, "error": error})
        print(f"traffic stream-send: {error}", file=sys.stderr)
        return 1
    emit({"bytes": sent})


def port_list(text):
    out = []
    for part in filter(None, (text or "").split(",")):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def serve(args, on_connection, on_datagram):
    """Listens on --tcp and --udp ports of --bind: a thread per TCP connection runs
    on_connection(conn); each UDP datagram gets on_datagram(data) back, if not None."""
    import threading

    def accept_loop(sock):
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    def handle(conn):
        with conn:
            conn.settimeout(60)
            try:
                on_connection(conn)
            except OSError:
                pass

    def datagram_loop(sock):
        while True:
            try:
                data, peer = sock.recvfrom(65535)
                sock.sendto(on_datagram(data), peer)
            except OSError:
                return

    for port in port_list(args.tcp):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((args.bind, port))
        s.listen(1024)
        threading.Thread(target=accept_loop, args=(s,), daemon=True).start()
    for port in port_list(args.udp):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((args.bind, port))
        threading.Thread(target=datagram_loop, args=(s,), daemon=True).start()


def echo_server(args):
    import time

    def echo(conn):
        while data := conn.recv(4096):
            conn.sendall(data)

    serve(args, echo, lambda data: data)
    if args.ready_file:
        open(args.ready_file, "w").close()
    time.sleep(args.seconds)
    emit({"served": True})


def name_server(args):
    """A backend that says who it is: each TCP connection gets NAME and a newline, then
    an echo of whatever it sends; each UDP datagram gets NAME:datagram back; HTTP GET
    answers NAME, and /healthz answers 200 while --health-file exists, else 503."""
    import http.server
    import os
    import threading
    import time

    name = args.name.encode()

    def hello(conn):
        conn.sendall(name + b"\n")
        while data := conn.recv(4096):
            conn.sendall(data)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            healthy = not args.health_file or os.path.exists(args.health_file)
            code = 200 if self.path != "/healthz" or healthy else 503
            body = name + b"\n"
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    serve(args, hello, lambda data: name + b":" + data)
    if args.http:
        http.server.ThreadingHTTPServer.allow_reuse_address = True
        srv = http.server.ThreadingHTTPServer((args.bind, args.http), Handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    if args.ready_file:
        open(args.ready_file, "w").close()
    time.sleep(args.seconds)
    emit({"served": True})


def lb_client(args):
    """Connects (TCP) or sends (UDP) --count times to HOST:PORT and counts which backend
    answered, the peer addresses the socket reported, and the errors by name."""
    import collections
    import errno
    import time

    counts, peers, errors = collections.Counter(), set(), collections.Counter()
    slowest_error_ms = 0.0
    udp = None
    if args.proto == "udp":
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.settimeout(args.timeout)
    for i in range(args.count):
        t0 = time.monotonic()
        try:
            if udp:
                udp.sendto(b"q%d" % i, (args.host, args.port))
                data, peer = udp.recvfrom(4096)
                counts[data.split(b":")[0].decode()] += 1
                peers.add("%s:%d" % peer)
                continue
            with socket.create_connection((args.host, args.port), timeout=args.timeout) as s:
                peers.add("%s:%d" % s.getpeername())
                data = b""
                while not data.endswith(b"\n"):
                    chunk = s.recv(256)
                    if not chunk:
                        break
                    data += chunk
                counts[data.decode().strip()] += 1
        except OSError as e:
            errors[errno.errorcode.get(e.errno, type(e).__name__) if e.errno else type(e).__name__] += 1
            slowest_error_ms = max(slowest_error_ms, (time.monotonic() - t0) * 1000)
    emit({"counts": dict(counts), "peers": sorted(peers), "errors": dict(errors), "slowest_error_ms": slowest_error_ms})


def lb_hold(args):
    """One long-lived connection to HOST:PORT: reads the backend's name, then exchanges a
    line every 100 ms until --stop-file exists or --seconds pass."""
    import time

    exchanges, failure = 0, None
    end = time.monotonic() + args.seconds
    with socket.create_connection((args.host, args.port), timeout=5) as s:
        f = s.makefile("rwb")
        backend = f.readline().decode().strip()
        if args.ready_file:
            with open(args.ready_file, "w") as r:
                r.write(backend)
        while time.monotonic() < end and not stopped(args):
            try:
                f.write(b"ping %d\n" % exchanges)
                f.flush()
                if f.readline() != b"ping %d\n" % exchanges:
                    failure = "wrong echo"
                    break
                exchanges += 1
            except OSError as e:
                failure = f"{type(e).__name__}: {e}"
                break
            time.sleep(0.1)
    emit({"backend": backend, "exchanges": exchanges, "failure": failure})


def probe_once(host, port, proto, timeout, answers=None):
    if proto == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(b"probe", (host, port))
            data, _ = s.recvfrom(64)
            return data == b"probe"
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"probe")
        answer = s.recv(64)
        if answer != b"probe" and answers is not None:
            answers.append(answer)
        return answer == b"probe"


def probe(args):
    try:
        emit({"ok": probe_once(args.host, args.port, args.proto, args.timeout), "error": None})
    except OSError as e:
        emit({"ok": False, "error": f"{type(e).__name__}: {e}"})


def reopen(args):
    import struct
    import time

    def connect():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", args.source_port))
        s.settimeout(args.timeout)
        s.connect((args.host, args.port))
        s.sendall(b"ping")
        answer = b""
        while len(answer) < 4 and (data := s.recv(4 - len(answer))):
            answer += data
        if answer != b"ping":
            raise ValueError(f"echo was {answer!r}")
        return s

    first = connect()
    first.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    first.close()
    second = connect()
    if args.ready_file:
        open(args.ready_file, "w").close()
    time.sleep(args.hold)
    second.close()
    emit({"ok": True})


def probe_loop(args):
    import time

    start = time.monotonic()
    end = start + args.seconds
    attempts = ok = 0
    errors = []  # the first few failures, for the test's message
    while time.monotonic() < end and not stopped(args):
        attempts += 1
        began = time.monotonic()
        try:
            answers = []
            good = probe_once(args.host, args.port, args.proto, args.timeout, answers)
            why = f"answered {answers[0][:48]!r}" if answers else "answer was not the probe"
        except OSError as e:
            good, why = False, f"{type(e).__name__}: {e}"
        ok += good
        if not good and len(errors) < 5:
            errors.append(f"at {began - start:.2f}s after {time.monotonic() - began:.3f}s: {why}")
        time.sleep(args.interval / 1000)
    emit({"attempts": attempts, "ok": ok, "failed": attempts - ok, "errors": errors})


def seeded_chunks(total, seed, max_chunk):
    """Yields `total` seeded pseudo-random bytes in uneven chunks of 1..max_chunk."""
    data_rng, size_rng = random.Random(seed), random.Random(seed + 1_000_003)
    left = total
    while left:
        n = min(left, size_rng.randint(1, max_chunk))
        left -= n
        yield data_rng.randbytes(n)


def duplex(sock, args):
    import threading

    sent_hash = hashlib.sha256()
    sent = 0
    error = []

    def sender():
        nonlocal sent
        try:
            for chunk in seeded_chunks(args.bytes, args.seed, args.max_chunk):
                sock.sendall(chunk)
                sent_hash.update(chunk)
                sent += len(chunk)
            sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            error.append(f"{type(e).__name__}: {e}")

    t = threading.Thread(target=sender)
    t.start()
    got_hash, got = hashlib.sha256(), 0
    read_rng = random.Random(args.seed + 7)
    while data := sock.recv(read_rng.randint(1, 65536)):
        got_hash.update(data)
        got += len(data)
    t.join()
    sock.close()
    emit({"sent": sent, "sent_sha256": sent_hash.hexdigest(), "received": got,
          "received_sha256": got_hash.hexdigest(), "error": error[0] if error else None})


def duplex_server(args):
    duplex(accept_one(args), args)


def duplex_client(args):
    duplex(connect(args.host, args.port), args)


def halfclose_server(args):
    conn = accept_one(args)
    got = 0
    while data := conn.recv(65536):
        got += len(data)
    # The peer's EOF arrived; this direction still works.
    conn.sendall(b"r" * args.reply_bytes)
    conn.close()
    emit({"received": got, "replied": args.reply_bytes})


def halfclose_client(args):
    sock = connect(args.host, args.port)
    sock.sendall(b"q" * args.bytes)
    sock.shutdown(socket.SHUT_WR)
    got = 0
    while data := sock.recv(65536):
        got += len(data)
    sock.close()
    emit({"sent": args.bytes, "replied": got})


def reset_server(args):
    import struct

    conn = accept_one(args)
    conn.recv(5)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    emit({"reset_sent": True})


def expect_reset(args):
    sock = connect(args.host, args.port)
    sock.settimeout(10)
    sock.sendall(b"hello")
    try:
        data = sock.recv(10)
        emit({"reset": False, "got": len(data)})
    except ConnectionResetError:
        emit({"reset": True})


def close_early_server(args):
    conn = accept_one(args)
    got = 0
    while got < args.after:
        data = conn.recv(min(65536, args.after - got))
        if not data:
            break
        got += len(data)
    conn.close()
    emit({"received": got})


def slow_sink(args):
    import threading
    import time

    conn = accept_one(args)
    time.sleep(args.pause)
    got_hash, got = hashlib.sha256(), 0
    stop = []

    def progress():
        while not stop:
            with open(args.progress_file, "w") as f:
                f.write(str(got))
            time.sleep(0.05)

    if args.progress_file:
        threading.Thread(target=progress, daemon=True).start()
    while data := conn.recv(65536):
        got_hash.update(data)
        got += len(data)
    stop.append(True)
    conn.close()
    emit({"bytes": got, "sha256": got_hash.hexdigest()})


def many_server(args):
    import threading

    srv = listen(args.bind, args.port, socket.SOCK_STREAM, args.ready_file)

    def echo(conn):
        with conn:
            try:
                while data := conn.recv(64):
                    conn.sendall(data)
            except OSError:
                pass

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()


def many_client(args):
    import resource
    import time

    resource.setrlimit(resource.RLIMIT_NOFILE, (args.count + 256, args.count + 256))
    socks = []
    for _ in range(args.count):
        s = socket.create_connection((args.host, args.port), timeout=10)
        s.sendall(b"x")
        socks.append(s)
    ok = sum(1 for s in socks if s.recv(1) == b"x")
    if args.ready_file:
        open(args.ready_file, "w").close()
    time.sleep(args.hold)
    for s in socks:
        s.close()
    emit({"connected": len(socks), "echoed": ok})


def congestion_control(sock):
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).split(b"\0", 1)[0].decode()


def choose_cc(sock, name):
    """An application's own choice of congestion control, made before the handshake."""
    if name:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, name.encode())


def cc_server(args):
    """One connection: report the accepted socket's congestion control after a round trip."""
    server = socket.socket(family_of(args.bind), socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    choose_cc(server, args.cc)  # accepted sockets inherit the listener's choice
    server.bind((args.bind, args.port))
    server.listen(16)
    if args.ready_file:
        open(args.ready_file, "a").close()
    conn, _ = server.accept()
    server.close()
    conn.settimeout(IO_TIMEOUT_S)
    conn.recv(1)
    conn.sendall(b"!")
    emit({"cc": congestion_control(conn)})
    conn.close()


def cc_client(args):
    sock = socket.socket(family_of(args.host), socket.SOCK_STREAM)
    sock.settimeout(IO_TIMEOUT_S)
    choose_cc(sock, args.cc)
    sock.connect((args.host, args.port))
    sock.sendall(b"?")
    sock.recv(1)
    emit({"cc": congestion_control(sock)})
    sock.close()


def udp_pingpong(args):
    sock = socket.socket(family_of(args.host), socket.SOCK_DGRAM)
    sock.settimeout(0.5)
    attempts = ok = 0
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        attempts += 1
        sock.sendto(b"ping %d" % attempts, (args.host, args.port))
        try:
            data, _ = sock.recvfrom(RECV_SIZE)
            ok += data == b"ping %d" % attempts
        except socket.timeout:
            pass
        time.sleep(args.interval / 1000)
    emit({"attempts": attempts, "ok": ok, "failed": attempts - ok})


def udp_churn(args):
    sock = socket.socket(family_of(args.host), socket.SOCK_DGRAM)
    pause = args.seconds / max(args.count, 1)
    start = time.monotonic()
    for i in range(args.count):
        sock.sendto(b"x", (args.host, args.port + i))
        # Spread evenly: sleep to where the next datagram is due.
        delay = start + (i + 1) * pause - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    emit({"datagrams": args.count})


def raw_frames(args):
    """Hand-made frames no socket API would send: the datapath must drop them by name."""
    import struct
    with open(f"/sys/class/net/{args.iface}/address") as f:
        src = bytes.fromhex(f.read().strip().replace(":", ""))
    dst = b"\xff" * 6  # the host-side veth takes any frame
    addr = socket.inet_aton(args.source)
    peer = socket.inet_aton(args.destination)
    udp = struct.pack("!HHHH", 40000, 9, 8, 0)

    def ipv4(version=4, ihl=5, total=None):
        total = 20 + len(udp) if total is None else total
        return struct.pack("!BBHHHBBH4s4s", version << 4 | ihl, 0, total, 1, 0, 64, 17, 0, addr, peer) + udp

    frames = {
        "ipv6": (0x86DD, bytes([0x60, 0, 0, 0, 0, 8, 17, 64]) + b"\xfe\x80" + b"\0" * 13 + b"\x01" + b"\xff\x02" + b"\0" * 13 + b"\x01" + udp),
        "bad-version": (0x0800, ipv4(version=6)),
        "bad-ihl": (0x0800, ipv4(ihl=4)),
        "bad-length": (0x0800, ipv4(total=1400)),
        "short": (0x0800, ipv4()[:12]),
    }
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((args.iface, 0))
    sent = []
    for kind in args.kinds.split(","):
        ethertype, payload = frames[kind]
        sock.send(dst + src + struct.pack("!H", ethertype) + payload)
        sent.append(kind)
    emit({"sent": sent})


def http_server(args):
    import http.server
    import socketserver
    import threading

    counter = {"n": 0}
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: with Nagle on, the body would wait for the
        # peer's delayed ACK (40 ms) on every keep-alive request.
        disable_nagle_algorithm = True

        def log_message(self, *a):
            pass

        def answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            body_in = self.rfile.read(length) if length else b""
            with lock:
                counter["n"] += 1
                n = counter["n"]
            status = 503 if args.fail_every and n % args.fail_every == 0 else 200
            if args.delay:
                time.sleep(args.delay / 1000)
            body = json.dumps({"server": args.name, "method": self.command, "path": self.path,
                               "peer": "%s:%d" % self.client_address, "body_bytes": len(body_in),
                               "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = answer

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    srv = Server((args.bind, args.port), Handler)
    if args.tls_cert:
        import ssl

        # The server ends TLS itself (a backend behind a TLS passthrough listener).
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    if args.ready_file:
        open(args.ready_file, "w").close()
    srv.serve_forever()


def http_client(args):
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(args.url)
    path = (u.path or "/") + ("?" + u.query if u.query else "")
    headers = dict(h.split(":", 1) for h in args.header) if args.header else {}
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    conn, connections = None, 0
    statuses, bodies, errors = [], [], []
    for i in range(args.count):
        try:
            if conn is None:
                conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=args.timeout)
                connections += 1
            method, target = args.method, path
            if args.sequence:
                method, target = args.sequence[i % len(args.sequence)].split(" ", 1)
            conn.request(method, target, body=b"x" * args.body if args.body else None, headers=headers)
            r = conn.getresponse()
            data = r.read()
            statuses.append(r.status)
            bodies.append(data.decode(errors="replace")[:512])
            if r.will_close:
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as e:
            errors.append("%d: %s: %s" % (i, type(e).__name__, e))
            statuses.append(0)
            if conn is not None:
                conn.close()
            conn = None
        if args.interval:
            time.sleep(args.interval / 1000)
        if args.progress_file:
            with open(args.progress_file, "w") as f:
                f.write(str(i + 1))
    emit({"statuses": statuses, "connections": connections, "bodies": bodies, "errors": errors})


def http_raw(args):
    sock = connect(args.host, args.port)
    sock.settimeout(args.timeout)
    data = bytes.fromhex(args.data)
    if args.pad_header:
        line_end = data.index(b"\r\n") + 2
        data = data[:line_end] + b"X-Pad: " + b"a" * args.pad_header + b"\r\n" + data[line_end:]
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the peer refused before reading it all; its answer is still to be read
    got, closed = b"", False
    try:
        while len(got) < 4096:
            b = sock.recv(4096)
            if not b:
                closed = True
                break
            got += b
    except socket.timeout:
        pass
    except ConnectionResetError:
        closed = True
    emit({"response": got[:4096].decode(errors="replace"), "closed": closed})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)

    def command(name, func, sink):
        p = sub.add_parser(name)
        p.set_defaults(func=func)
        p.add_argument("--port", type=int, required=True)
        if sink:
            p.add_argument("--bind", default="0.0.0.0")
            p.add_argument("--ready-file")
        else:
            p.add_argument("--host", required=True)
        return p

    command("tcp-sink", tcp_sink, sink=True)
    p = command("tcp-send", tcp_send, sink=False)
    p.add_argument("--bytes", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=IO_TIMEOUT_S, help="seconds any one send or receive may stall")
    p = command("udp-sink", udp_sink, sink=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--timeout", type=float, default=10.0)
    p = command("udp-send", udp_send, sink=False)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--interval", type=float, default=1.0, help="milliseconds")
    p = command("stream-sink", stream_sink, sink=True)
    p.add_argument("--progress-file")
    p.add_argument("--ack-every", type=int, default=0, help="send one byte back every N bytes received")
    p = command("stream-send", stream_send, sink=False)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--stop-file", help="stop as soon as this file exists")
    p.add_argument("--rate", type=float, required=True, help="bytes per second")

    for name, func, sink in (("duplex-server", duplex_server, True), ("duplex-client", duplex_client, False)):
        p = command(name, func, sink=sink)
        p.add_argument("--bytes", type=int, required=True)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--max-chunk", type=int, default=16000)
    p = command("halfclose-server", halfclose_server, sink=True)
    p.add_argument("--reply-bytes", type=int, required=True)
    p = command("halfclose-client", halfclose_client, sink=False)
    p.add_argument("--bytes", type=int, required=True)
    command("reset-server", reset_server, sink=True)
    command("expect-reset", expect_reset, sink=False)
    p = command("close-early-server", close_early_server, sink=True)
    p.add_argument("--after", type=int, required=True)
    p = command("slow-sink", slow_sink, sink=True)
    p.add_argument("--pause", type=float, required=True)
    p.add_argument("--progress-file")
    for name, func, sink in (("cc-server", cc_server, True), ("cc-client", cc_client, False)):
        p = command(name, func, sink=sink)
        p.add_argument("--cc", default="", help="set this congestion control on the socket first, as an application may")
    p = command("udp-pingpong", udp_pingpong, sink=False)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--interval", type=float, default=1000.0, help="milliseconds")
    p = command("udp-churn", udp_churn, sink=False)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p = sub.add_parser("raw-frames")
    p.set_defaults(func=raw_frames)
    p.add_argument("--iface", default="eth0")
    p.add_argument("--kinds", required=True)
    p.add_argument("--source", required=True)
    p.add_argument("--destination", required=True)
    command("many-server", many_server, sink=True)
    p = command("many-client", many_client, sink=False)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--hold", type=float, default=1.0)
    p.add_argument("--ready-file")

    def server(name, func):
        """A server of `serve`: TCP and UDP port lists, its address, and how long it runs."""
        p = sub.add_parser(name)
        p.set_defaults(func=func)
        p.add_argument("--tcp", default="")
        p.add_argument("--udp", default="")
        p.add_argument("--bind", default="0.0.0.0")
        p.add_argument("--ready-file")
        p.add_argument("--seconds", type=float, default=600)
        return p

    server("echo-server", echo_server)
    p = server("name-server", name_server)
    p.add_argument("--name", required=True)
    p.add_argument("--http", type=int, default=0)
    p.add_argument("--health-file", default="")
    p = sub.add_parser("lb-client")
    p.set_defaults(func=lb_client)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--proto", choices=["tcp", "udp"], default="tcp")
    p.add_argument("--timeout", type=float, default=2.0)
    p = sub.add_parser("lb-hold")
    p.set_defaults(func=lb_hold)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--stop-file")
    p.add_argument("--ready-file")
    for name, func in (("probe", probe), ("probe-loop", probe_loop)):
        p = sub.add_parser(name)
        p.set_defaults(func=func)
        p.add_argument("--host", required=True)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--proto", choices=["tcp", "udp"], default="tcp")
        p.add_argument("--timeout", type=float, default=1.0)
        if name == "probe-loop":
            p.add_argument("--seconds", type=float, required=True)
            p.add_argument("--stop-file", help="stop as soon as this file exists")
            p.add_argument("--interval", type=float, default=20.0, help="milliseconds")

    p = command("reopen", reopen, sink=False)
    p.add_argument("--source-port", type=int, required=True)
    p.add_argument("--hold", type=float, required=True)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--ready-file")

    p = command("http-server", http_server, sink=True)
    p.add_argument("--name", default="server")
    p.add_argument("--fail-every", type=int, default=0, help="answer every Nth request with 503")
    p.add_argument("--delay", type=float, default=0.0, help="milliseconds to wait before answering")
    p.add_argument("--tls-cert", help="serve HTTPS with this PEM chain")
    p.add_argument("--tls-key", help="the key of --tls-cert")
    p = sub.add_parser("http-client")
    p.set_defaults(func=http_client)
    p.add_argument("--url", required=True)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--method", default="GET")
    p.add_argument("--interval", type=float, default=0.0, help="milliseconds between requests")
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--body", type=int, default=0, help="bytes of request body")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--progress-file")
    p.add_argument("--sequence", type=lambda t: t.split(","), default=None,
                   help='"METHOD /path,METHOD /path": the requests in turn, instead of --method and the URL\'s path')
    p = command("http-raw", http_raw, sink=False)
    p.add_argument("--data", required=True, help="hex")
    p.add_argument("--pad-header", type=int, default=0, help="insert a header of this many bytes after the request line")
    p.add_argument("--timeout", type=float, default=5.0)

    args = parser.parse_args()
    try:
        return args.func(args) or 0
    except (OSError, ValueError) as e:
        print(f"traffic {args.cmd}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
