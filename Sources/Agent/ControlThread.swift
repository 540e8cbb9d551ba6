import MeshModel
import NIOCore
import NIOPosix

/// The thread the control plane's actors (EndpointManager, PolicyEngine) run on.
///
/// Their work blocks: `ip` processes and waitpid, BPF system calls over whole maps, the
/// grace period before a policy slot is rewritten, parsing and compiling large policy
/// files. On Swift's cooperative pool (one thread per core, two here) two such jobs would
/// stall every other request, the API's status included; on a thread of their own they
/// only queue behind each other, which they do anyway (one actor awaits the other).
enum ControlThread {
    static let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    static let executor: any SerialExecutor = {
        // SelectableEventLoop is a SerialExecutor (NIOSerialEventLoopExecutor).
        guard let loop = group.next() as? any SerialExecutor else {
            fatalError("the NIO event loop is not a SerialExecutor; this NIO is too old")
        }
        return loop
    }()

    /// Runs blocking work (netlink, map walks) on the control thread and waits for it.
    static func run<T: Sendable>(_ body: @escaping @Sendable () throws(MeshError) -> T) async throws(MeshError) -> T {
        do {
            return try await group.next().submit { () throws -> T in try body() }.get()
        } catch let error as MeshError {
            throw error
        } catch {
            throw MeshError(.internalError, "\(error)")
        }
    }
}
