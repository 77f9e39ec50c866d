import ArgumentParser
import PageTableLab
import PageTableLabHarness

/// `--param name=value`, shared by every subcommand, so that any run can be
/// reproduced from the parameters its report prints.
struct ModuleParameterOptions: ParsableArguments {
    @Option(
        name: .customLong("param"),
        help: ArgumentHelp(
            "Set a module parameter, as name=value (repeatable).",
            discussion: "`ptlab info --params` lists every parameter with its type and default.",
            valueName: "name=value"))
    var assignments: [String] = []

    /// Bad parameters are usage errors, caught before the subcommand runs.
    func validate() throws {
        _ = try resolve()
    }

    /// The table's defaults with the command line's assignments on top.
    func resolve() throws -> ModuleParameters {
        do {
            return try ModuleParameters(assignments)
        } catch {
            throw ValidationError(error.description)
        }
    }
}
