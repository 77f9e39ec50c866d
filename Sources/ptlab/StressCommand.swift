import ArgumentParser

/// Placeholder until the stress tests land (issue 3).
struct StressCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stress",
        abstract: "Hammer one freeing mechanism with concurrent walkers and report use-after-free detections.")

    @OptionGroup var module: ModuleParameterOptions

    func run() throws {
        _ = try module.resolve()
        throw ValidationError("ptlab stress is not implemented yet")
    }
}
