import ArgumentParser

/// Placeholder until the model-versus-kernel comparison lands.
struct CompareCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compare",
        abstract: "Run one mapping trace on the model and on this machine's kernel, side by side.")

    @OptionGroup var module: ModuleParameterOptions

    func run() throws {
        _ = try module.resolve()
        throw ValidationError("ptlab compare is not implemented yet")
    }
}
