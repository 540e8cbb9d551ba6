import XCTest
@testable import MeshModel

final class APITests: XCTestCase {
    func testPaths() {
        XCTAssertEqual(APIPath.status, "/v1/status")
        XCTAssertEqual(APIPath.endpoints, "/v1/endpoints")
        XCTAssertEqual(APIPath.endpoint("web-1"), "/v1/endpoints/web-1")
    }

    func testEndpointRoundTripsWithTextAddressLabelObjectAndISODate() throws {
        let endpoint = Endpoint(id: 3, name: "web-1", labels: try Labels(parsing: "app=web,env=prod"),
                                ipv4: ip("10.200.0.3"), netns: "sm-web-1", interface: "smv3",
                                cgroup: "/sys/fs/cgroup/swiftmesh/web-1",
                                createdAt: Date(timeIntervalSince1970: 1_700_000_000))
        let data = try MeshJSON.encoder().encode(endpoint)
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
        XCTAssertEqual(object["ipv4"] as? String, "10.200.0.3")
        XCTAssertEqual(object["labels"] as? [String: String], ["app": "web", "env": "prod"])
        XCTAssertEqual(object["createdAt"] as? String, "2023-11-14T22:13:20Z")
        XCTAssertEqual(object["cgroup"] as? String, "/sys/fs/cgroup/swiftmesh/web-1", "slashes unescaped")
        XCTAssertEqual(try MeshJSON.decoder().decode(Endpoint.self, from: data), endpoint)
    }

    func testEndpointDecodingRejectsInvalidLabelsOrAddress() throws {
        let good = #"{"id":1,"name":"web","labels":{"app":"web"},"ipv4":"10.200.0.2","netns":"n","interface":"i","cgroup":"/c","createdAt":"2024-01-01T00:00:00Z"}"#
        XCTAssertNoThrow(try MeshJSON.decoder().decode(Endpoint.self, from: Data(good.utf8)))
        let badLabels = good.replacingOccurrences(of: #"{"app":"web"}"#, with: #"{"app":"-web"}"#)
        assertDataCorrupted(mentioning: ["\"-web\""]) {
            _ = try MeshJSON.decoder().decode(Endpoint.self, from: Data(badLabels.utf8))
        }
        let badAddress = good.replacingOccurrences(of: "10.200.0.2", with: "10.200.0.02")
        assertDataCorrupted(mentioning: ["\"10.200.0.02\""]) {
            _ = try MeshJSON.decoder().decode(Endpoint.self, from: Data(badAddress.utf8))
        }
    }

    func testEncoderSortsKeysSoOutputIsStable() throws {
        let request = EndpointCreateRequest(name: "web", labels: ["z": "1", "a": "2"])
        let text = String(decoding: try MeshJSON.encoder().encode(request), as: UTF8.self)
        let a = try XCTUnwrap(text.range(of: "\"a\"")), z = try XCTUnwrap(text.range(of: "\"z\""))
        let labels = try XCTUnwrap(text.range(of: "\"labels\"")), name = try XCTUnwrap(text.range(of: "\"name\""))
        XCTAssertLessThan(a.lowerBound, z.lowerBound)
        XCTAssertLessThan(labels.lowerBound, name.lowerBound)
    }
}
