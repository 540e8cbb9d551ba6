import Foundation
import XCTest
@testable import Agent
import MeshModel

/// The single-node identity allocator on a real SQLite file: numbers stay while used,
/// survive a reopen, are released only after the grace period and are not handed out again.
final class IdentityAllocatorTests: XCTestCase {
    var dir: String!
    /// A clock the test moves by hand.
    final class Clock: @unchecked Sendable {
        private let lock = NSLock()
        private var t = Date(timeIntervalSince1970: 1_800_000_000)
        var now: Date { lock.withLock { t } }
        func advance(_ s: TimeInterval) { lock.withLock { t += s } }
    }
    let clock = Clock()

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "smagent-\(getpid())-\(UUID().uuidString.prefix(6))"
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func allocator(grace: TimeInterval = 60) throws -> StoreIdentityAllocator {
        let clock = self.clock
        return StoreIdentityAllocator(store: try Store(directory: dir), grace: grace, now: { clock.now })
    }

    func labels(_ text: String) throws -> IdentityKey { .labels(try Labels(parsing: text)) }

    func testALabelSetKeepsItsNumberWhateverElseComesAndGoes() throws {
        let a = try allocator()
        let web = try labels("app=web"), db = try labels("app=db"), cache = try labels("app=cache")
        let first = try a.sync(inUse: [web, db])
        XCTAssertEqual(Set(first.values).count, 2, "two label sets, two numbers")
        XCTAssertTrue(first.values.allSatisfy { IdentityKey.Scope.global.range.contains($0) })
        // Others come and go, in any order: web's and db's numbers never move.
        for round in 0..<20 {
            let extra = try labels("app=extra\(round)")
            let now = try a.sync(inUse: round % 2 == 0 ? [web, db, extra, cache] : [db, web])
            XCTAssertEqual(now[web], first[web])
            XCTAssertEqual(now[db], first[db])
            XCTAssertNil(now[try labels("app=extra\(round - 1)")], "only keys in use are answered")
        }
        // A CIDR gets a node-local number.
        let cidr = IdentityKey.cidr(try IPv4CIDR(parsing: "192.0.2.0/24"))
        XCTAssertTrue(IdentityKey.Scope.local.range.contains(try XCTUnwrap(try a.sync(inUse: [web, cidr])[cidr])))
    }

    func testNumbersSurviveAReopenOfTheDatabase() throws {
        let keys: Set<IdentityKey> = [try labels("app=web"), try labels("app=db,env=prod"), .cidr(try IPv4CIDR(parsing: "10.0.0.0/8"))]
        let before = try allocator().sync(inUse: keys)
        let after = try allocator().sync(inUse: keys)
        XCTAssertEqual(before, after)
        XCTAssertEqual(Set(try allocator().allocated().map(\.id)), Set(before.values))
    }

    func testAnUnusedNumberIsReleasedAfterTheGracePeriodAndNeverHandedOutAgain() throws {
        let a = try allocator(grace: 60)
        let web = try labels("app=web"), db = try labels("app=db")
        let first = try a.sync(inUse: [web, db])
        _ = try a.sync(inUse: [db])
        XCTAssertNotNil(try a.allocated().first { $0.key == web }?.unusedSince, "web is marked unused")
        clock.advance(59)
        XCTAssertEqual(try a.sync(inUse: [web, db])[web], first[web], "back within the grace period: the same number")
        _ = try a.sync(inUse: [db])
        clock.advance(61)
        _ = try a.sync(inUse: [db])
        XCTAssertFalse(try a.allocated().contains { $0.key == web }, "released after the grace period")
        let again = try a.sync(inUse: [web, db])
        XCTAssertNotEqual(again[web], first[web], "a released number is not handed out again")
        XCTAssertEqual(again[db], first[db])
        // Not even after a reopen, though the highest number in the table is now lower.
        let other = try labels("app=other")
        _ = try a.sync(inUse: [db])
        clock.advance(61)
        _ = try a.sync(inUse: [db])
        let reopened = try allocator(grace: 60).sync(inUse: [db, other])
        XCTAssertFalse([first[web], again[web]].contains(reopened[other]), "\(reopened)")
    }

    /// markUnused: what a publish that left the policies alone does to the label sets that
    /// went, instead of a retainOnly over every key. It starts their grace period, and the
    /// next retainOnly releases them once it has passed; a mark reaches the file with the
    /// next write.
    func testMarkingKeysUnusedStartsTheirGracePeriodAndTouchesNothingElse() throws {
        let a = try allocator(grace: 60)
        let web = try labels("app=web"), db = try labels("app=db"), cidr = IdentityKey.cidr(try IPv4CIDR(parsing: "10.0.0.0/8"))
        let first = try a.sync(inUse: [web, db, cidr])
        try a.markUnused([web, try labels("app=never-allocated")])
        let rows = Dictionary(uniqueKeysWithValues: try a.allocated().map { ($0.key, $0) })
        XCTAssertEqual(rows[web]?.unusedSince, clock.now, "web is unused from now")
        XCTAssertNil(rows[db]?.unusedSince)
        XCTAssertNil(rows[cidr]?.unusedSince)
        XCTAssertEqual(rows.count, 3, "a key never allocated is not added")
        clock.advance(30)
        try a.markUnused([web])
        XCTAssertEqual(try a.allocated().first { $0.key == web }?.unusedSince, clock.now - 30, "marking again does not restart the clock")
        XCTAssertEqual(try a.allocate([web])[web], first[web], "back within the grace period: the same number, in use again")
        try a.markUnused([web])
        _ = try a.allocate([try labels("app=new")]) // a write: the mark goes to the file with it
        let reopened = Dictionary(uniqueKeysWithValues: try allocator(grace: 60).allocated().map { ($0.key, $0) })
        XCTAssertEqual(reopened[web]?.unusedSince.map { Int($0.timeIntervalSince1970) }, Int(clock.now.timeIntervalSince1970), "the mark is on file")
        clock.advance(61)
        try a.retainOnly([db, cidr, try labels("app=new")])
        XCTAssertFalse(try a.allocated().contains { $0.key == web }, "released by the next retainOnly after the grace period")
    }

    func testAtTheTopOfTheRangeNumbersGoOnFromTheBottomPastTheTakenOnes() throws {
        let range = IdentityKey.Scope.global.range
        let store = try Store(directory: dir)
        // Numbers the bottom of the range already holds, and a counter one below the top.
        let clock = self.clock
        let a = StoreIdentityAllocator(store: store, grace: 60, now: { clock.now })
        try store.setSetting("identity.next.global", String(range.lowerBound))
        let low = try a.allocate([try labels("app=low0"), try labels("app=low1")])
        XCTAssertEqual(Set(low.values), [range.lowerBound, range.lowerBound + 1])
        try store.setSetting("identity.next.global", String(range.upperBound - 1))
        let b = StoreIdentityAllocator(store: store, grace: 60, now: { clock.now })
        let keys: [IdentityKey] = [try labels("app=x1"), try labels("app=x2"), try labels("app=x3")]
        let got = try b.allocate(Set(keys) .union(low.keys))
        XCTAssertEqual(got[keys[0]], range.upperBound - 1, "the last number of the range")
        XCTAssertEqual(Set([got[keys[1]], got[keys[2]]]), [range.lowerBound + 2, range.lowerBound + 3],
                       "then the bottom, stepping over the numbers still held")
        XCTAssertEqual(Set(got.values).count, 5, "no number twice")
        // And a reopened allocator goes on from there, still stepping over what is held.
        let c = StoreIdentityAllocator(store: store, grace: 60, now: { clock.now })
        let more = try c.allocate(Set(got.keys).union([try labels("app=x4")]))
        XCTAssertEqual(more[try labels("app=x4")], range.lowerBound + 4)
    }

    func testAFailedRevisionNeverCostsTheOneInForceItsNumbers() throws {
        let a = try allocator(grace: 60)
        let web = try labels("app=web"), db = try labels("app=db")
        let inForce = try a.sync(inUse: [web, db])
        // A revision without web is compiled (allocate) but never published (no retainOnly).
        _ = try a.allocate([db])
        clock.advance(3600)
        XCTAssertNil(try a.allocated().first { $0.key == web }?.unusedSince, "web is still in use by the revision in force")
        XCTAssertEqual(try a.allocate([web, db]), inForce)
    }
}
