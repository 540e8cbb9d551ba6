import Foundation
import XCTest
@testable import Agent
import MeshModel

/// The state database's endpoint table, which Store also keeps decoded in memory: after
/// every write, what it lists must be what a fresh open of the same file reads.
final class StoreTests: XCTestCase {
    var dir: String!

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "smstore-\(getpid())-\(UUID().uuidString.prefix(6))"
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func endpoint(_ id: Int, _ name: String, _ labels: String) throws(MeshError) -> Endpoint {
        Endpoint(id: id, name: name, labels: try Labels(parsing: labels), ipv4: IPv4Address("10.200.0.\(id)")!, netns: "ns-\(name)",
                 interface: "sm\(id)", cgroup: "/cg/\(name)", createdAt: Date(), ports: ["http": 80],
                 readiness: try ReadinessProbe(parsing: "http:http/health"))
    }

    func testTheListIsWhatTheFileHoldsAfterEveryWrite() throws {
        let store = try Store(directory: dir)
        func assertOnFile(_ step: String, file: StaticString = #filePath, line: UInt = #line) throws {
            XCTAssertEqual(try store.endpoints(), try Store(directory: dir).endpoints(), step, file: file, line: line)
        }
        XCTAssertEqual(try store.endpoints(), [])
        let web = try store.insertEndpoint { (id: Int) throws(MeshError) -> Endpoint in try self.endpoint(id, "web", "app=web,tier=front") }
        _ = try store.insertEndpoint { (id: Int) throws(MeshError) -> Endpoint in try self.endpoint(id, "db", "app=db") }
        try assertOnFile("two inserted")
        XCTAssertEqual(try store.endpoint(named: "web"), web, "the insert answers with the endpoint as stored")
        XCTAssertEqual(try store.endpoints().map(\.name), ["web", "db"], "in id order")

        XCTAssertTrue(try store.setLabels(try Labels(parsing: "app=web,tier=back"), ofEndpoint: "web"))
        try assertOnFile("relabelled")
        XCTAssertEqual(try store.endpoint(named: "web")?.labels, try Labels(parsing: "app=web,tier=back"))
        // An undo that finds other labels than it expects changes nothing.
        XCTAssertFalse(try store.setLabels(try Labels(parsing: "app=x"), ofEndpoint: "web", ifCurrently: try Labels(parsing: "app=web")))
        try assertOnFile("undo refused")
        XCTAssertFalse(try store.setLabels(try Labels(parsing: "app=x"), ofEndpoint: "nobody"))

        // A failed insert (the make closure refuses) leaves the table and the list as they were.
        XCTAssertThrowsError(try store.insertEndpoint { _ throws(MeshError) -> Endpoint in throw MeshError.invalid("no") })
        try assertOnFile("failed insert")
        XCTAssertEqual(try store.endpoints().count, 2)

        XCTAssertTrue(try store.deleteEndpoint(named: "db"))
        XCTAssertFalse(try store.deleteEndpoint(named: "db"))
        try assertOnFile("deleted")
        XCTAssertEqual(try store.endpoints().map(\.name), ["web"])
        let next = try store.insertEndpoint { (id: Int) throws(MeshError) -> Endpoint in try self.endpoint(id, "cache", "app=cache") }
        XCTAssertEqual(next.id, 3, "ids are never reused")
        try assertOnFile("inserted after a delete")
    }
}
