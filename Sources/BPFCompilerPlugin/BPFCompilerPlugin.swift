import Foundation
import PackagePlugin

/// Compiles every `bpf/*.bpf.c` of the package into a BPF object and embeds it into the
/// target as Swift source, so `meshd` is one self-contained binary (as bpf2go and aya do)
/// and an edit to a program or to a shared header rebuilds with a plain `swift build`.
@main
struct BPFCompilerPlugin: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let bpfDir = context.package.directoryURL.appending(path: "bpf")
        let includeDir = bpfDir.appending(path: "include")
        let fm = FileManager.default
        let sources = try fm.contentsOfDirectory(at: bpfDir, includingPropertiesForKeys: nil)
            .filter { $0.lastPathComponent.hasSuffix(".bpf.c") }
            .sorted { $0.lastPathComponent < $1.lastPathComponent }
        // Headers are inputs too: without them an ABI or library edit would not rebuild.
        let headers = [includeDir, bpfDir.appending(path: "lib")].flatMap { dir in
            ((try? fm.contentsOfDirectory(at: dir, includingPropertiesForKeys: nil)) ?? []).filter { $0.pathExtension == "h" }
        }
        let embed = try context.tool(named: "BPFEmbed")
        return sources.map { source in
            let name = String(source.lastPathComponent.dropLast(".bpf.c".count))
            let output = context.pluginWorkDirectoryURL.appending(path: "\(name).bpf.swift")
            return .buildCommand(
                displayName: "Compiling BPF program \(source.lastPathComponent)",
                executable: embed.url,
                arguments: [source.path, output.path, includeDir.path, name],
                inputFiles: [source] + headers,
                outputFiles: [output]
            )
        }
    }
}
