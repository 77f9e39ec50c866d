import PageTableLabHarness

/// libFuzzer's entry: the input, as text, through `TraceParser.parse`. Any
/// text must give a trace or a `TraceError` naming a line of it; a trap
/// (an overflow, an out-of-range index, a force-unwrap) is the bug sought.
/// What a parse returns is checked too: steps in line order, every range
/// inside the user space the validator promises, and the same answer when
/// every LF is written CRLF (a trace saved on another system).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTraceParser(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeBufferPointer(start: data, count: size)
    let result = parse(String(decoding: bytes, as: UTF8.self))
    switch result {
    case .success(let trace):
        var lastLine = 0
        for step in trace.steps {
            precondition(step.line > lastLine, "steps out of line order: \(step.line) after \(lastLine)")
            lastLine = step.line
            if let range = step.op.range {
                precondition(range.lowerBound >= TraceAddressSpace.lowest && range.upperBound <= TraceAddressSpace.end,
                             "line \(step.line): \(step.op) accepted outside the trace address space")
                precondition(range.lowerBound % TraceAddressSpace.pageSize == 0 && !range.isEmpty,
                             "line \(step.line): \(step.op) accepted unaligned or empty")
            }
        }
    case .failure(let error):
        precondition(error.file == "fuzz.trace" && error.line >= 1, "error not pinned to a line: \(error)")
        precondition(!error.message.isEmpty, "error without a message at line \(error.line)")
    }
    let crlf = parse(String(decoding: bytes.flatMap { $0 == 0x0A ? [0x0D, 0x0A] : [$0] }, as: UTF8.self))
    precondition(crlf == result, "CRLF line ends change the parse: \(crlf) against \(result)")
    return 0
}

private func parse(_ text: String) -> Result<Trace, TraceError> {
    Result { () throws(TraceError) in try TraceParser.parse(text, file: "fuzz.trace") }
}
