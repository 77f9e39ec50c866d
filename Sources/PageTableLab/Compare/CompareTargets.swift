/// Where `ptlab compare` gets its two sides. The mm model plugs in by
/// replacing the one line of `makeModel`.
public enum CompareTargets {
    /// Builds the model side for a profile.
    public static let makeModel: @Sendable (CompareProfile) throws -> any TraceTarget = { _ in
        throw CompareTargetsError.modelUnavailable
    }

    public static func makeKernel() throws -> any TraceTarget { try LiveKernel() }
}

public enum CompareTargetsError: Error, CustomStringConvertible {
    case modelUnavailable

    public var description: String {
        switch self {
        case .modelUnavailable: "this build has no mm model to compare (CompareTargets.makeModel)"
        }
    }
}
