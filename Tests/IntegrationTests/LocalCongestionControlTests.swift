import Foundation
import XCTest

/// Connections between two local endpoints get `local-congestion-control` as they are
/// established, read back from the kernel on both sockets; an application's own choice
/// stays, a name the kernel lacks changes nothing, and the setting survives a restart.
final class LocalCongestionControlTests: XCTestCase {
    var node: TestNode!
    var traffic: Traffic { Traffic(node: node) }
    let server = "10.201.0.2"
    var port: Int32 = 7900

    override func setUpWithError() throws {
        node = try TestNode()
        try node.start()
        try node.ctlOK("endpoint", "create", "client", "--labels", "app=client")
        try node.ctlOK("endpoint", "create", "server", "--labels", "app=server")
        // Every socket of the endpoints would otherwise start with reno: whatever runs
        // something else was given it by meshd (or chose it itself).
        for ep in ["client", "server"] {
            try Run.checked("ip", "netns", "exec", "\(node.name)-ep-\(ep)", "sysctl", "-q", "-w", "net.ipv4.tcp_congestion_control=reno")
        }
        let available = try String(contentsOfFile: "/proc/sys/net/ipv4/tcp_available_congestion_control", encoding: .utf8)
        let names = available.split(whereSeparator: \.isWhitespace)
        XCTAssertTrue(names.contains("cubic") && names.contains("bbr"),
                      "these tests need cubic and bbr, built into the kernels SwiftMesh runs on: \(available)")
    }

    override func tearDown() { node?.destroy() }

    func metric(_ outcome: String) throws -> Double {
        try node.metric("mesh_local_congestion_control_total", ["outcome": outcome]) ?? 0
    }

    /// One connection client -> server; the congestion control each end's socket runs.
    func connection(clientCC: String = "", serverCC: String = "") throws -> (client: String, server: String) {
        port += 1
        let srv = try traffic.start(in: "server", ["cc-server", "--port", "\(port)", "--cc", serverCC], waitReady: true)
        let cli = try traffic.run(in: "client", ["cc-client", "--host", server, "--port", "\(port)", "--cc", clientCC])
        let s = try srv.result()
        return (cli["cc"] as? String ?? "?: \(cli)", s["cc"] as? String ?? "?: \(s)")
    }

    func testLocalConnectionsGetCubicByDefaultWithRedirectOnOrOff() throws {
        XCTAssertTrue(try node.ctlOK("config", "get").contains("local-congestion-control: cubic\n"))
        let applied = try metric("applied")
        var c = try connection()
        XCTAssertEqual(c.client, "cubic")
        XCTAssertEqual(c.server, "cubic")
        XCTAssertEqual(try metric("applied") - applied, 2, "both sockets counted")
        // Off, connections take the stack, which is where the algorithm matters.
        try node.ctlOK("config", "set", "socket-redirect", "off")
        c = try connection()
        XCTAssertEqual(c.client, "cubic")
        XCTAssertEqual(c.server, "cubic")
    }

    func testKeepLeavesTheNamespaceDefaultAndANewNameTakesNewConnections() throws {
        XCTAssertEqual(try node.ctlOK("config", "set", "local-congestion-control", "keep"), "local-congestion-control: keep\n")
        let applied = try metric("applied")
        var c = try connection()
        XCTAssertEqual(c.client, "reno")
        XCTAssertEqual(c.server, "reno")
        XCTAssertEqual(try metric("applied"), applied, "keep sets nothing")
        try node.ctlOK("config", "set", "local-congestion-control", "cubic")
        c = try connection()
        XCTAssertEqual(c.client, "cubic")
        XCTAssertEqual(c.server, "cubic")
    }

    func testAnApplicationsOwnChoiceStays() throws {
        let own = try metric("own_choice")
        // Both ends ask for reno themselves, the namespace default too: meshd's cubic
        // would show if it overrode them.
        let c = try connection(clientCC: "reno", serverCC: "reno")
        XCTAssertEqual(c.client, "reno")
        XCTAssertEqual(c.server, "reno", "the listener's choice carries over to the accepted socket")
        XCTAssertEqual(try metric("own_choice") - own, 2)
    }

    func testARouteThatLocksACongestionControlKeepsIt() throws {
        // The client's route to the server says bbr, locked (`ip route ... congctl lock`):
        // the route wins over meshd's cubic, as over the namespace's reno.
        let ns = "\(node.name)-ep-client"
        let route = Run.run("/usr/sbin/ip", ["-n", ns, "-o", "route", "show", "default"]).stdout
        let via = route.split(whereSeparator: \.isWhitespace).dropFirst().map(String.init) // "via GW dev eth0 ..."
        XCTAssertFalse(via.isEmpty, "the endpoint has a default route: \(route)")
        let add = Run.run("/usr/sbin/ip", ["-n", ns, "route", "add", "\(server)/32"] + via + ["congctl", "lock", "bbr"])
        XCTAssertEqual(add.status, 0, add.stderr)
        let own = try metric("own_choice")
        let c = try connection()
        XCTAssertEqual(c.client, "bbr")
        XCTAssertEqual(c.server, "cubic", "the server's side has no such route")
        XCTAssertEqual(try metric("own_choice") - own, 1)
    }

    func testANameTheKernelLacksIsRefusedAndChangesNothing() throws {
        for bad in ["no_such_cc", "Cubic", "cubic; reno", String(repeating: "x", count: 16), ""] {
            let r = node.ctl("config", "set", "local-congestion-control", bad)
            XCTAssertEqual(r.status, 1, bad)
            XCTAssertTrue(r.stderr.contains("local-congestion-control"), "says which setting: \(r.stderr)")
        }
        let r = node.ctl("config", "set", "local-congestion-control", "no_such_cc")
        XCTAssertTrue(r.stderr.contains("no such congestion control") && r.stderr.contains("reno"), "names what is available: \(r.stderr)")
        XCTAssertTrue(try node.ctlOK("config", "get").contains("local-congestion-control: cubic\n"))
        XCTAssertEqual(try connection().client, "cubic")
    }

    func testTheSettingSurvivesARestartAndFlagsAndConfigFilesAreChecked() throws {
        try node.ctlOK("config", "set", "local-congestion-control", "reno")
        node.stop()
        try node.start()
        XCTAssertTrue(try node.ctlOK("config", "get").contains("local-congestion-control: reno\n"))
        node.stop()
        XCTAssertThrowsError(try node.start(["--local-congestion-control", "no_such_cc"])) { error in
            XCTAssertTrue("\(error)".contains("no such congestion control"), "\(error)")
        }
        try node.start(["--local-congestion-control", "keep"])
        XCTAssertTrue(try node.ctlOK("config", "get").contains("local-congestion-control: keep\n"))
        // The config file: the same name without dashes, and the same checks.
        node.stop()
        let file = node.dir + "/meshd.yaml"
        try "local-congestion-control: Not A Name\n".write(toFile: file, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try node.start(["--config", file])) { error in
            XCTAssertTrue("\(error)".contains("local-congestion-control \"Not A Name\" must be a congestion control name"), "\(error)")
        }
        // Stored now: keep (the flag above), so cubic can only come from the file.
        try "local-congestion-control: cubic\n".write(toFile: file, atomically: true, encoding: .utf8)
        try node.start(["--config", file])
        XCTAssertTrue(try node.ctlOK("config", "get").contains("local-congestion-control: cubic\n"))
        XCTAssertEqual(try connection().server, "cubic")
    }
}
