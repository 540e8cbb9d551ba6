import Datapath
import Foundation
import XCTest

/// A test against the real kernel: needs root, and gets a pin folder of its own under
/// bpffs (named like every test run's leftovers, so tools/setup can sweep a killed run's).
class BPFTestCase: XCTestCase {
    var pinDir = ""

    override func setUpWithError() throws {
        guard geteuid() == 0 else {
            if ProcessInfo.processInfo.environment["SWIFTMESH_REQUIRE_PRIVILEGED"] == "1" {
                XCTFail("needs root to load BPF programs; tools/test runs as root")
            }
            throw XCTSkip("needs root to load BPF programs (run tools/test as root)")
        }
        pinDir = "/sys/fs/bpf/smt\(getpid())x\(UInt32.random(in: 1000...9999))"
    }

    /// Datapaths a test made: their background slot catch-up is waited for before the pin
    /// folder goes, so it never writes into the next test's maps.
    var opened: [MeshDatapath] = []

    override func tearDown() {
        for dp in opened { dp.settle() }
        opened = []
        BPFFS.removeDirectory(pinDir)
    }
}
