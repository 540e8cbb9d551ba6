/// The keep-alive upstream connections of one client connection between its requests, one
/// per upstream address: a routed client connection keeps one to each backend it used, so
/// per-request balancing does not cost a connection per request.
struct IdleUpstreams {
    /// More distinct backends than this on one client connection close the oldest idle one.
    static let limit = 32

    private var byTarget: [PeerAddress: UpstreamHandler] = [:]
    private var order: [PeerAddress] = []

    /// An open connection to `target`, taken out of the idle set.
    mutating func take(_ target: PeerAddress) -> UpstreamHandler? {
        guard let handler = byTarget.removeValue(forKey: target) else { return nil }
        order.removeAll { $0 == target }
        guard handler.isOpen else {
            handler.close()
            return nil
        }
        return handler
    }

    mutating func put(_ handler: UpstreamHandler) {
        guard handler.isOpen else {
            handler.close()
            return
        }
        if let old = take(handler.target) { old.close() }
        if order.count >= Self.limit, let oldest = order.first, let evicted = take(oldest) { evicted.close() }
        byTarget[handler.target] = handler
        order.append(handler.target)
    }

    /// Forgets `handler` (it closed, or spoke out of turn); false when it was not idle here.
    mutating func remove(_ handler: UpstreamHandler) -> Bool {
        guard byTarget[handler.target] === handler else { return false }
        byTarget[handler.target] = nil
        order.removeAll { $0 == handler.target }
        return true
    }

    func resumeReading() {
        for handler in byTarget.values { handler.resumeReading() }
    }

    mutating func closeAll() {
        for handler in byTarget.values { handler.close() }
        byTarget = [:]
        order = []
    }
}
