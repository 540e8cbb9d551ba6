import NIOCore

/// One clock of a connection that is set again far more often than it runs out: once or
/// twice per request, while it expires only for a stalled peer. Scheduling and cancelling
/// a task on every request cost about 5% of the proxy's time (perf under wrk: an allocation,
/// a heap insert and a cancel each); here moving the deadline later costs a clock read. One
/// task is kept; when it fires before the deadline then in force, it schedules itself again
/// for that deadline. Only a deadline earlier than the task's replaces the task.
///
/// Used only on its event loop, by the handler that owns it.
final class LazyTimer {
    private let loop: any EventLoop
    /// The task is never scheduled further out than this, so that a deadline set later (but
    /// no earlier than `now + maxDelay`) never has to replace it.
    private let maxDelay: TimeAmount?
    private var deadline: NIODeadline?
    private var task: Scheduled<Void>?
    private var taskAt = NIODeadline.distantFuture
    /// Called, on the loop, when a deadline is reached. The owner keeps the timer, so this
    /// holds the owner weakly.
    private let onExpiry: () -> Void

    init(loop: any EventLoop, maxDelay: TimeAmount? = nil, onExpiry: @escaping () -> Void) {
        self.loop = loop
        self.maxDelay = maxDelay
        self.onExpiry = onExpiry
    }

    /// Whether a deadline is set.
    var isSet: Bool { deadline != nil }

    /// Sets the clock to run out `timeout` from now, replacing any deadline set before.
    func set(_ timeout: TimeAmount) {
        let now = NIODeadline.now()
        let at = now + timeout
        deadline = at
        if task != nil, taskAt <= at { return }
        task?.cancel()
        schedule(at: maxDelay.map { min(at, now + $0) } ?? at)
    }

    /// Stops the clock; the task, if any, finds nothing to do when it fires.
    func clear() {
        deadline = nil
    }

    /// Stops the clock and drops the task (the connection is going away).
    func cancel() {
        clear()
        task?.cancel()
        task = nil
        taskAt = .distantFuture
    }

    private func schedule(at: NIODeadline) {
        taskAt = at
        let bound = NIOLoopBound(self, eventLoop: loop)
        task = loop.scheduleTask(deadline: at) { bound.value.fired() }
    }

    private func fired() {
        task = nil
        taskAt = .distantFuture
        guard let deadline else { return }
        let now = NIODeadline.now()
        guard now >= deadline else {
            schedule(at: maxDelay.map { min(deadline, now + $0) } ?? deadline)
            return
        }
        clear()
        onExpiry()
    }
}
