// swift-tools-version: 6.1
// SwiftMesh: an eBPF-assisted, sidecar-free service-mesh data plane for Linux nodes.
import PackageDescription

let package = Package(
    name: "SwiftMesh",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "meshd", targets: ["meshd"]),
        .executable(name: "meshctl", targets: ["meshctl"]),
        .executable(name: "mesh-proxy", targets: ["mesh-proxy"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.24.0"),
        .package(url: "https://github.com/apple/swift-nio-http2", from: "1.30.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.1.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.25.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.10.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.0.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.10.0"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-asn1", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.30.0"),
    ],
    targets: [
        // The shared kernel/userspace ABI header (bpf/include/mesh_abi.h) as a C module.
        .target(name: "MeshABI"),
        // libbpf with the ABI, as one C module for the Datapath module.
        .target(
            name: "CBPF",
            dependencies: ["MeshABI"],
            linkerSettings: [.linkedLibrary("bpf"), .linkedLibrary("elf"), .linkedLibrary("z")]
        ),
        // rtnetlink through libmnl (Debian's libmnl-dev) and the namespace calls: endpoint
        // plumbing without an `ip` process.
        .target(name: "CNetlink", linkerSettings: [.linkedLibrary("mnl")]),
        // Compiles bpf/*.bpf.c with clang -target bpf and embeds each object into Swift.
        .executableTarget(name: "BPFEmbed", path: "Sources/BPFEmbed"),
        .plugin(
            name: "BPFCompilerPlugin",
            capability: .buildTool(),
            dependencies: ["BPFEmbed"],
            path: "Sources/BPFCompilerPlugin"
        ),
        .target(name: "BPFObjects", plugins: ["BPFCompilerPlugin"]),
        .target(
            name: "Datapath",
            dependencies: ["CBPF", "BPFObjects"]
        ),
        .target(name: "MeshModel", dependencies: ["MeshABI"]),
        .target(
            name: "Agent",
            dependencies: [
                "CNetlink",
                "Datapath", "MeshModel",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        .executableTarget(
            name: "meshd",
            dependencies: [
                "Agent",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .executableTarget(
            name: "meshctl",
            dependencies: [
                "MeshModel",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        // The L7 HTTP proxy as a library: transparent listener, HTTP/1.1 forwarding under L7
        // policy, the control socket meshd drives, metrics.
        .target(
            name: "Proxy",
            dependencies: [
                "MeshModel", "MeshABI",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ]
        ),
        .executableTarget(
            name: "mesh-proxy",
            dependencies: [
                "Proxy",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            path: "Sources/mesh-proxy"
        ),
        .testTarget(name: "MeshModelTests", dependencies: ["MeshModel"]),
        // The proxy on real loopback sockets: a NIO upstream, NIO and raw clients, the control socket.
        .testTarget(
            name: "ProxyTests",
            dependencies: [
                "Proxy", "MeshModel",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOExtras", package: "swift-nio-extras"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The agent's parts that need no root: the state database, settings, identities.
        .testTarget(name: "AgentTests", dependencies: ["Agent", "MeshModel"]),
        .testTarget(
            name: "DatapathTests",
            dependencies: ["Datapath", "BPFObjects", "CBPF"]
        ),
        .testTarget(
            name: "IntegrationTests",
            dependencies: ["MeshModel", "Agent"],
            exclude: ["Fixtures"]
        ),
    ]
)
