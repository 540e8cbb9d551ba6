import CNetlink
import Foundation
import Logging
import MeshModel
import ServiceLifecycle

/// Keeps the node's L7 proxy (`mesh-proxy`, a process of its own) running and configured.
///
/// The proxy listens on a control socket in the state folder; this supervisor connects to
/// it. Nobody there: it starts a proxy (in a session of its own, so a signal meant for
/// meshd's terminal never reaches it) and connects. Someone there: a proxy an earlier meshd
/// started, which kept serving while meshd was away; it is adopted, not replaced, so no
/// proxied connection breaks. The control connection closing means the proxy died: it is
/// started again at once, and counted.
///
/// The connection is served by a thread of its own (blocking reads, short writes): nothing
/// here runs on Swift's cooperative pool.
final class ProxySupervisor: Service, @unchecked Sendable {
    struct Status: Sendable {
        var connected: Bool
        var pid: Int32?
        var adopted: Bool
        var restarts: Int
        var generationApplied: UInt64
        var lastRejection: String?
    }

    let binary: String
    let controlPath: String
    let port: UInt16
    let logPath: String
    let logger: Logger
    /// Called with each L7 event the proxy reports (from the supervisor's thread).
    var onEvent: (@Sendable (L7Event) -> Void)?

    /// One writer at a time on the control socket, so lines never interleave. Separate from
    /// `lock`, so that a slow write never holds up status reads or configuration updates.
    private let writeLock = NSLock()
    /// Where configuration messages are encoded and written, one at a time (see queueConfigLocked).
    private let configQueue = DispatchQueue(label: "swiftmesh.proxy-config")
    /// The configuration message waiting for `configQueue`, for that fd (under `lock`).
    private var queuedConfig: (message: ProxyControlMessage, fd: Int32, legacy: Bool)?
    /// The last configuration could not be written whole (under `lock`).
    private var resendConfig = false
    /// The connected proxy predates the compact ipcache (an adopted proxy of an older
    /// meshd, whose hello names no protocol): it is sent the ipcache as an array (under `lock`).
    private var legacyPeer = false
    /// The connected proxy keeps the ipcache a configuration left (protocol 3; under `lock`).
    private var peerKeepsIPCache = false
    /// The ipcache of the last configuration written whole to that fd (under `lock`): the
    /// next one with the same ipcache says so instead of sending it again.
    private var sentIPCache: (fd: Int32, ipcache: [ProxyIPCacheEntry])?
    // Everything below is guarded by `lock`.
    private let lock = NSLock()
    private var config = ProxyConfig.empty
    private var generation: UInt64 = 0
    private var certificateGeneration: UInt64 = 1
    private var eventsWanted = false
    private var fd: Int32 = -1
    private var child: pid_t?
    private var status = Status(connected: false, pid: nil, adopted: false, restarts: 0, generationApplied: 0)
    private var pendingMetrics: [UInt64: CheckedContinuation<String?, Never>] = [:]
    private var nextMetricsID: UInt64 = 1
    private var stopping = false

    init(binary: String, controlPath: String, port: UInt16, logPath: String, logger: Logger) {
        self.binary = binary
        self.controlPath = controlPath
        self.port = port
        self.logPath = logPath
        self.logger = logger
    }

    var currentStatus: Status { lock.withLock { status } }

    /// The proxy's configuration from now on: sent now if the proxy is connected, else as
    /// soon as it is.
    func update(_ next: ProxyConfig) {
        lock.withLock {
            // The policy engine knows nothing of routes and gateways: they stay as
            // ServiceManager set them.
            var merged = next
            merged.generation = config.generation
            merged.routes = config.routes
            merged.gateways = config.gateways
            // A revision that changes nothing the proxy sees (most L4 changes) costs no
            // message, unless the last one could not be written whole.
            guard merged != config || resendConfig else { return }
            config = merged
            queueConfigLocked()
        }
    }

    /// The routed frontends and gateway ports from now on (ServiceManager's part of the
    /// configuration).
    func updateRoutes(_ routing: ProxyRouting) {
        lock.withLock {
            config.routes = routing.routes
            config.gateways = routing.gateways
            queueConfigLocked()
        }
    }

    var routedFrontends: Int { lock.withLock { config.routes.count } }

    var gatewayPorts: Int { lock.withLock { config.gateways.count } }

    /// Whether the proxy should stream L7 events (while a `meshctl monitor` wants them).
    func setEvents(_ on: Bool) {
        let fd = lock.withLock { () -> Int32 in
            eventsWanted = on
            return self.fd
        }
        if fd >= 0 { send(ProxyControlMessage(events: on), on: fd) }
    }

    /// The proxy's metrics in the Prometheus text format; nil when it does not answer
    /// within a second (down, restarting).
    func metricsText() async -> String? {
        let (fd, id) = lock.withLock { () -> (Int32, UInt64) in
            defer { nextMetricsID += 1 }
            return (self.fd, nextMetricsID)
        }
        guard fd >= 0 else { return nil }
        return await withCheckedContinuation { (c: CheckedContinuation<String?, Never>) in
            lock.withLock { pendingMetrics[id] = c }
            send(ProxyControlMessage(metricsRequest: id), on: fd)
            DispatchQueue.global().asyncAfter(deadline: .now() + 1) { [weak self] in self?.finishMetrics(id, nil) }
        }
    }

    private func finishMetrics(_ id: UInt64, _ text: String?) {
        let c = lock.withLock { pendingMetrics.removeValue(forKey: id) }
        c?.resume(returning: text)
    }

    /// Must hold `lock`. Queues the configuration for the connected proxy (if any), in
    /// generation order. It is encoded and written on `configQueue`, not by the caller: with
    /// a large ipcache that is milliseconds a policy publish need not wait for (nothing
    /// waits for the proxy to apply a configuration; `generationApplied` says when it has).
    ///
    /// Only the newest queued configuration is written: each replaces the whole of the
    /// last, so a proxy that reads slowly (a write may wait out SO_SNDTIMEO) never has a
    /// pile of stale ones building up for it.
    private func queueConfigLocked() {
        guard fd >= 0 else { return }
        let scheduled = queuedConfig != nil
        queuedConfig = (configMessageLocked(), self.fd, legacyPeer)
        resendConfig = false
        if scheduled { return }
        configQueue.async { [self] in
            guard let (message, fd, legacy) = lock.withLock({ () -> (ProxyControlMessage, Int32, Bool)? in
                defer { queuedConfig = nil }
                return queuedConfig
            }) else { return }
            let kept = lock.withLock { peerKeepsIPCache && sentIPCache?.fd == fd ? sentIPCache?.ipcache : nil }
            var wire = message
            if let kept, var config = wire.config, config.ipcache == kept {
                config.ipcache = []
                config.ipcacheUnchanged = true
                wire.config = config
            }
            if send(wire, on: fd, legacyIPCache: legacy) {
                if let ipcache = message.config?.ipcache { lock.withLock { sentIPCache = (fd, ipcache) } }
            } else {
                // The proxy may hold half a line: the next change is sent even if equal
                // (and, as send says, with its ipcache).
                lock.withLock { resendConfig = true }
            }
        }
    }

    /// Must hold `lock`. Each configuration sent gets a generation above any the proxy has
    /// seen, whichever meshd sent that one.
    private func configMessageLocked() -> ProxyControlMessage {
        generation += 1
        var c = config
        c.generation = generation
        c.tunnel?.certificateGeneration = certificateGeneration
        return ProxyControlMessage(config: c)
    }

    /// Certificate files were rewritten (issued, rotated, a new bundle): the proxy's next
    /// TLS connections must read them again.
    func certificatesChanged() {
        lock.withLock {
            certificateGeneration += 1
            queueConfigLocked()
        }
    }

    func run() async throws {
        let thread = Thread { [self] in supervise() }
        thread.name = "swiftmesh.proxy-supervisor"
        thread.start()
        // On shutdown the proxy keeps running, as the datapath does: the next meshd adopts it.
        try? await gracefulShutdown()
        let fd = lock.withLock { () -> Int32 in
            stopping = true
            return self.fd
        }
        if fd >= 0 { shutdown(fd, Int32(SHUT_RDWR)) }
    }

    // MARK: The supervisor thread

    private func supervise() {
        var everStarted = false
        var backoff = 0.05
        while !lock.withLock({ stopping }) {
            if let fd = connectControl() {
                backoff = 0.05
                session(fd)
                continue
            }
            // No proxy answers: start one, unless ours is still starting up.
            if let pid = lock.withLock({ child }), kill(pid, 0) == 0, waitpid(pid, nil, WNOHANG) == 0 {
                Thread.sleep(forTimeInterval: 0.02)
                continue
            }
            do {
                let pid = try spawn()
                lock.withLock {
                    child = pid
                    if everStarted { status.restarts += 1 }
                }
                logger.info(everStarted ? "L7 proxy restarted" : "L7 proxy started", metadata: ["pid": "\(pid)", "port": "\(port)"])
                everStarted = true
                if waitForControl(pid: pid) { continue }
            } catch {
                logger.error("cannot start the L7 proxy", metadata: ["binary": "\(binary)", "error": "\(error)"])
            }
            // It died at once (bad binary, port taken): do not spin.
            Thread.sleep(forTimeInterval: backoff)
            backoff = min(backoff * 2, 5)
        }
    }

    /// Waits until the proxy `pid` answers on its control socket (or exits).
    private func waitForControl(pid: pid_t) -> Bool {
        for _ in 0..<500 {
            var st: Int32 = 0
            if waitpid(pid, &st, WNOHANG) == pid {
                logger.error("the L7 proxy exited while starting; see its log", metadata: ["status": "\(st)", "log": "\(logPath)"])
                lock.withLock { child = nil }
                return false
            }
            if FileManager.default.fileExists(atPath: controlPath) { return true }
            Thread.sleep(forTimeInterval: 0.01)
        }
        return true
    }

    private func connectControl() -> Int32? {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let path = Array(controlPath.utf8.prefix(MemoryLayout.size(ofValue: addr.sun_path) - 1))
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in path.enumerated() { raw[i] = b }
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            close(fd)
            return nil
        }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    /// One control connection, until the proxy closes it (it died) or meshd stops.
    private func session(_ fd: Int32) {
        var reader = LineReader(fd: fd)
        guard let first = reader.next(), let hello = decode(first)?.hello else {
            close(fd)
            Thread.sleep(forTimeInterval: 0.05)
            return
        }
        let (events, adopted) = lock.withLock { () -> (Bool, Bool) in
            self.fd = fd
            legacyPeer = (hello.protocolVersion ?? 1) < 2
            peerKeepsIPCache = (hello.protocolVersion ?? 1) >= 3
            sentIPCache = nil
            generation = max(generation, hello.generation)
            let adopted = child != hello.pid
            status.connected = true
            status.pid = hello.pid
            status.adopted = adopted
            queueConfigLocked()
            return (eventsWanted, adopted)
        }
        logger.info(adopted ? "adopted the running L7 proxy" : "L7 proxy connected",
                    metadata: ["pid": "\(hello.pid)", "port": "\(hello.port)", "generation": "\(hello.generation)"])
        if events { send(ProxyControlMessage(events: true), on: fd) }
        while let line = reader.next() {
            guard let m = decode(line) else { continue }
            if let e = m.event { onEvent?(e) }
            if let r = m.metrics { finishMetrics(r.id, r.text) }
            if let g = m.configApplied { lock.withLock { status.generationApplied = g } }
            if let r = m.configRejected {
                lock.withLock {
                    status.lastRejection = r.reason
                    sentIPCache = nil // the next one carries its ipcache, whatever the cause
                    // The proxy lost the ipcache it was told to keep (a line it could not
                    // read): the configuration in force here goes again, whole.
                    if r.ipcacheMissing == true { queueConfigLocked() }
                }
                logger.error("the L7 proxy rejected its configuration; it keeps the previous one",
                             metadata: ["generation": "\(r.generation)", "reason": "\(r.reason)"])
            }
        }
        let (pid, stopping, waiting) = lock.withLock { () -> (pid_t?, Bool, [CheckedContinuation<String?, Never>]) in
            self.fd = -1
            status.connected = false
            let waiting = Array(pendingMetrics.values)
            pendingMetrics = [:]
            return (child, self.stopping, waiting)
        }
        // Nothing queued may be written after the close, to whatever reuses the number.
        configQueue.sync {}
        close(fd)
        for c in waiting { c.resume(returning: nil) }
        if stopping { return }
        var why = "connection closed"
        if let pid, pid == hello.pid {
            // Ours: reap it (it is gone, or going, since it closed its control socket).
            var st: Int32 = 0
            var tries = 0
            while waitpid(pid, &st, WNOHANG) == 0 && tries < 100 { Thread.sleep(forTimeInterval: 0.01); tries += 1 }
            why = (st & 0x7f) != 0 ? "killed by signal \(st & 0x7f)" : "exit status \((st >> 8) & 0xff)"
            lock.withLock { child = nil }
        }
        logger.warning("the L7 proxy went away; starting a new one", metadata: ["pid": "\(hello.pid)", "why": "\(why)"])
    }

    private func spawn() throws -> pid_t {
        guard access(binary, X_OK) == 0 else {
            throw MeshError(.unavailable, "\(binary) is not an executable", hint: "build it (swift build) or give --proxy-binary")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        // Nothing of meshd's may outlive it in the proxy: not its listening sockets (the
        // next meshd could not bind its metrics port), nor its BPF objects. Not every
        // library opens its descriptors close-on-exec, so close them all.
        _ = sm_spawn_close_from(&actions, 3)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        // A session of its own; default signal handling, whatever meshd ignores.
        var defaults = sigset_t()
        sigfillset(&defaults)
        posix_spawnattr_setsigdefault(&attr, &defaults)
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attr, &none)
        // glibc's POSIX_SPAWN_SETSID, hidden from Swift's Glibc module (it needs _GNU_SOURCE).
        let setsid: Int32 = 0x80
        posix_spawnattr_setflags(&attr, Int16(setsid | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
        // The proxy logs at meshd's level, so that `meshd --log-level debug` debugs both.
        let args = [binary, "--port", "\(port)", "--control", controlPath, "--log-level", logger.logLevel.rawValue]
        var cArgs = args.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, binary, &actions, &attr, &cArgs, environ)
        guard rc == 0 else { throw MeshError(.internalError, "posix_spawn \(binary): \(String(cString: strerror(rc)))") }
        return pid
    }

    @discardableResult
    private func send(_ message: ProxyControlMessage, on fd: Int32, legacyIPCache: Bool = false) -> Bool {
        let encoder = JSONEncoder()
        if legacyIPCache { encoder.userInfo[CompactIPCache.legacyArrayKey] = true }
        guard var data = try? encoder.encode(message) else { return false }
        data.append(0x0a)
        // A dead peer fails the write; a stuck one times out (SO_SNDTIMEO) rather than
        // holding meshd.
        let complete = writeLock.withLock {
            data.withUnsafeBytes { raw -> Bool in
                var off = 0
                while off < raw.count {
                    let n = Glibc.send(fd, raw.baseAddress! + off, raw.count - off, Int32(MSG_NOSIGNAL))
                    if n <= 0 { return false }
                    off += n
                }
                return true
            }
        }
        if !complete {
            logger.warning("a message to the L7 proxy could not be written", metadata: ["errno": "\(String(cString: strerror(errno)))"])
            // Whatever it was, the proxy may join its half to the next line and read
            // neither: the next configuration carries its ipcache.
            lock.withLock { sentIPCache = nil }
        }
        return complete
    }

    private func decode(_ line: [UInt8]) -> ProxyControlMessage? {
        try? JSONDecoder().decode(ProxyControlMessage.self, from: Data(line))
    }
}

/// Lines from a blocking socket, at most 64 MiB each (a longer one ends the connection).
struct LineReader {
    let fd: Int32
    private var buffer: [UInt8] = []
    private var start = 0

    init(fd: Int32) { self.fd = fd }

    mutating func next() -> [UInt8]? {
        while true {
            if let nl = buffer[start...].firstIndex(of: 0x0a) {
                let line = Array(buffer[start..<nl])
                start = nl + 1
                if start > 65536 {
                    buffer.removeFirst(start)
                    start = 0
                }
                return line
            }
            guard buffer.count - start < 64 << 20 else { return nil }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { return nil }
            buffer.append(contentsOf: chunk[0..<n])
        }
    }
}
