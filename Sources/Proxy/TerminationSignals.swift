import Dispatch
#if canImport(Glibc)
import Glibc
#endif

/// Waits for SIGTERM or SIGINT, so a proxy process can stop gracefully instead of dying.
public enum TerminationSignals {
    /// Returns the first of the two signals to arrive.
    public static func wait() async -> Int32 {
        await withCheckedContinuation { (continuation: CheckedContinuation<Int32, Never>) in
            let queue = DispatchQueue(label: "mesh-proxy.signals")
            // The sources live until a signal arrives; resuming twice is prevented by
            // cancelling both from the queue that runs their handlers one at a time.
            var sources: [any DispatchSourceSignal] = []
            for number in [SIGTERM, SIGINT] {
                signal(number, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
                sources.append(source)
            }
            let all = sources
            for (source, number) in zip(all, [SIGTERM, SIGINT]) {
                source.setEventHandler {
                    guard !source.isCancelled else { return }
                    all.forEach { $0.cancel() }
                    continuation.resume(returning: number)
                }
                source.resume()
            }
        }
    }
}
