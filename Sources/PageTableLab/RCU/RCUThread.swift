#if canImport(Glibc)
import Glibc
#endif
internal import CSupport
internal import CURCU

extension RCU {
    /// Run `body` with this thread registered; registration nests, and is
    /// undone before returning, so it cannot be forgotten.
    public static func withRegisteredThread<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        ptlab_rcu_register()
        defer { ptlab_rcu_unregister() }
        return try body()
    }

    /// Register the calling thread until `unregisterThread()`, for a
    /// registration that spans an object's life rather than one scope
    /// (`withRegisteredThread` is the scoped form). Registration nests.
    public static func registerThread() { ptlab_rcu_register() }

    /// Undo one `registerThread()`; the thread must not be in a read-side
    /// critical section.
    public static func unregisterThread() { ptlab_rcu_unregister() }

    /// Start liburcu's call_rcu worker now (queue a no-op and wait for it),
    /// so that its thread, stack and first wake-up do not land inside a
    /// measurement. The calling thread must be registered and outside any
    /// read-side critical section.
    public static func startWorker() { ptlab_rcu_prime() }

    /// Which call_rcu worker threads run callbacks.
    public enum Workers: String, Sendable, CaseIterable, Codable {
        /// liburcu's one default worker.
        case `default`
        /// One worker per CPU (create_all_cpu_call_rcu_data): callbacks run
        /// on the queueing CPU's worker, as the kernel's per-CPU lists do.
        case perCPU = "per-cpu"
    }

    /// Switch to per-CPU workers. Once made they stay: liburcu cannot free
    /// workers that may still hold callbacks.
    public static func useWorkers(_ workers: Workers) -> Bool {
        switch workers {
        case .default: return true
        case .perCPU: return urcu_memb_create_all_cpu_call_rcu_data(0) == 0
        }
    }
}

/// A "CPU": a thread registered with liburcu for its whole life, optionally
/// pinned. It registers before `body` runs and unregisters after.
public final class RCUThread: @unchecked Sendable {
    private var thread: pthread_t
    private var joined = false

    private final class Start {
        let body: () -> Void
        let cpu: Int?
        init(body: @escaping () -> Void, cpu: Int?) { self.body = body; self.cpu = cpu }
    }

    /// Start a registered thread; `cpu` pins it (for node-local allocation).
    public init(cpu: Int? = nil, _ body: @escaping @Sendable () -> Void) {
        let start = Unmanaged.passRetained(Start(body: body, cpu: cpu)).toOpaque()
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, rcuThreadMain, start)
        precondition(rc == 0, "pthread_create failed: \(rc)")
        thread = tid
    }

    /// Wait for the thread to finish. Idempotent.
    public func join() {
        guard !joined else { return }
        joined = true
        pthread_join(thread, nil)
    }

    deinit { join() }

    fileprivate static func run(_ raw: UnsafeMutableRawPointer) {
        let start = Unmanaged<Start>.fromOpaque(raw).takeRetainedValue()
        if let cpu = start.cpu { pinCurrentThread(toCPU: cpu) }
        RCU.withRegisteredThread { start.body() }
    }
}

private func rcuThreadMain(_ arg: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
    RCUThread.run(arg!)
    return nil
}

/// Pin the calling thread to one CPU; false if the kernel refused.
@discardableResult
public func pinCurrentThread(toCPU cpu: Int) -> Bool {
    ptlab_pin_to_cpu(Int32(cpu)) == 0
}

/// Undo pinCurrentThread: the CPUs the process started with again.
public func unpinCurrentThread() {
    ptlab_unpin()
}
