#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A work item on its own worker thread, with schedule_work's contract:
/// scheduling work that is already pending does nothing, and the pending
/// bit is cleared before the function runs, so a schedule that comes in
/// while it runs makes it run once more. Scheduling allocates nothing.
public final class Work: @unchecked Sendable {
    private let function: @Sendable () -> Void
    private let pending = Atomic<Bool>(false)
    private let running = Atomic<Bool>(false)
    private let stopping = Atomic<Bool>(false)
    /// A frozen work runs nothing until thawed (freezable workqueues): lets
    /// a test pile work up and then see exactly one run take it all.
    private let frozen = Atomic<Bool>(false)
    private let cond: UnsafeMutablePointer<pthread_cond_t>
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var thread: RCUThread?
    /// Times the function ran.
    public let runs = Atomic<Int>(0)

    /// `cpu`: bind the worker to one CPU, as system_wq's per-CPU pools are
    /// bound: work queued by a task runs on that task's CPU, so it waits for
    /// the task to yield instead of racing it on another core.
    public init(cpu: Int? = nil, _ function: @escaping @Sendable () -> Void) {
        self.function = function
        cond = .allocate(capacity: 1)
        mutex = .allocate(capacity: 1)
        pthread_cond_init(cond, nil)
        pthread_mutex_init(mutex, nil)
        thread = RCUThread(cpu: cpu) { [unowned self] in self.workerLoop() }
    }

    /// schedule_work: true if this call made the work pending.
    @discardableResult
    public func schedule() -> Bool {
        guard !pending.exchange(true, ordering: .acquiringAndReleasing) else { return false }
        signal()
        return true
    }

    public func freeze() { frozen.store(true, ordering: .releasing) }

    public func thaw() {
        frozen.store(false, ordering: .releasing)
        signal()
    }

    /// flush_work: return once no run is pending or in progress.
    public func flush() {
        pthread_mutex_lock(mutex)
        while pending.load(ordering: .acquiring) || running.load(ordering: .acquiring) {
            pthread_cond_wait(cond, mutex)
        }
        pthread_mutex_unlock(mutex)
    }

    /// Finish pending work, then end the worker thread.
    public func shutdown() {
        thaw()
        flush()
        stopping.store(true, ordering: .releasing)
        signal()
        thread?.join()
        thread = nil
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    private func signal() {
        pthread_mutex_lock(mutex)
        pthread_cond_broadcast(cond)
        pthread_mutex_unlock(mutex)
    }

    private func workerLoop() {
        while true {
            pthread_mutex_lock(mutex)
            while !stopping.load(ordering: .acquiring)
                    && (!pending.load(ordering: .acquiring) || frozen.load(ordering: .acquiring)) {
                pthread_cond_wait(cond, mutex)
            }
            if stopping.load(ordering: .acquiring) && !pending.load(ordering: .acquiring) {
                pthread_mutex_unlock(mutex)
                return
            }
            running.store(true, ordering: .releasing)
            pending.store(false, ordering: .releasing)
            pthread_mutex_unlock(mutex)
            function()
            runs.add(1, ordering: .relaxed)
            running.store(false, ordering: .releasing)
            signal()
        }
    }
}
