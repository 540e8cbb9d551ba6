import MeshModel
import NIOConcurrencyHelpers
import NIOCore

/// The retry budget of each routed frontend: requests and retries counted over a sliding
/// window, shared by every connection. Kept across configurations (meshd sends a new one
/// on every endpoint change, and a budget that restarted each time would not bound much).
final class RetryBudgets: Sendable {
    /// The window in this many slices; a count leaves the window one slice at a time.
    static let slices = 10

    private struct Window {
        var budget: RetryBudget
        var requests = [Int](repeating: 0, count: RetryBudgets.slices)
        var retries = [Int](repeating: 0, count: RetryBudgets.slices)
        /// Which slice of time each position last counted, to clear it when reused.
        var sliceOf = [Int64](repeating: -1, count: RetryBudgets.slices)

        init(budget: RetryBudget) { self.budget = budget }

        mutating func position(at now: NIODeadline) -> Int {
            let sliceNanos = max(1, Int64(min(budget.windowSeconds, 365 * 86_400) * 1e9) / Int64(RetryBudgets.slices))
            let slice = Int64(clamping: now.uptimeNanoseconds) / sliceNanos
            let at = Int(slice % Int64(RetryBudgets.slices))
            // Positions not touched for a whole window hold counts that left it.
            for i in 0..<RetryBudgets.slices where sliceOf[i] <= slice - Int64(RetryBudgets.slices) {
                requests[i] = 0
                retries[i] = 0
                sliceOf[i] = -1
            }
            if sliceOf[at] != slice {
                requests[at] = 0
                retries[at] = 0
                sliceOf[at] = slice
            }
            return at
        }
    }

    private let windows = NIOLockedValueBox<[PeerAddress: Window]>([:])

    /// Counts a request to `frontend`.
    func deposit(_ frontend: PeerAddress, budget: RetryBudget, now: NIODeadline = .now()) {
        windows.withLockedValue { windows in
            var window = Self.window(frontend, budget, &windows)
            window.requests[window.position(at: now)] += 1
            windows[frontend] = window
        }
    }

    /// Whether one more retry fits the budget (retries in the window < percent% of the
    /// requests + minPerSecond × window); counts it when it does.
    func withdraw(_ frontend: PeerAddress, budget: RetryBudget, now: NIODeadline = .now()) -> Bool {
        windows.withLockedValue { windows in
            var window = Self.window(frontend, budget, &windows)
            let at = window.position(at: now)
            let requests = Double(window.requests.reduce(0, +))
            let retries = Double(window.retries.reduce(0, +))
            guard retries < budget.percent / 100 * requests + budget.minPerSecond * budget.windowSeconds else { return false }
            window.retries[at] += 1
            windows[frontend] = window
            return true
        }
    }

    private static func window(_ frontend: PeerAddress, _ budget: RetryBudget,
                               _ windows: inout [PeerAddress: Window]) -> Window {
        // A new budget starts counting afresh: old counts were kept under other rules.
        guard let window = windows[frontend], window.budget == budget else { return Window(budget: budget) }
        return window
    }

    /// Forgets the frontends no configuration has any more.
    func keep(only frontends: Set<PeerAddress>) {
        windows.withLockedValue { windows in windows = windows.filter { frontends.contains($0.key) } }
    }
}
