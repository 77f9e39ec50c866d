/// Where `ptlab compare` gets its two sides.
public enum CompareTargets {
    /// The model side for a profile.
    public static func makeModel(_ profile: CompareProfile) throws -> any TraceTarget {
        try ModelTarget(profile: profile)
    }

    public static func makeKernel() throws -> any TraceTarget { try LiveKernel() }
}
