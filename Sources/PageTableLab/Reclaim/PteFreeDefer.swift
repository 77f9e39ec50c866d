internal import CSupport

extension MM {
    /// pte_free_defer: free a PTE table after a grace period, through the
    /// rcu_head embedded in its descriptor. Allocates nothing: its caller
    /// (khugepaged's retract) runs where memory cannot be relied on. The
    /// destructor runs in the callback with the free: even before 6.14 this
    /// path never split them (the dtor-at-unlink bug was the gather's).
    public func pteFreeDefer(_ table: Page) throws(RCUError) {
        guard PageTables.markDeferred(table) else { throw .alreadyQueued(operation: "pte_free_defer") }
        try RCU.call(ptlab_ptdesc_rcu_head(table.desc), bytes: 4096, pteFreeNow)
    }
}

/// pte_free_now: container_of back to the ptdesc, then pagetable_dtor_free.
func pteFreeNow(_ head: UnsafeMutablePointer<ptlab_rcu_head>?) {
    guard let head else { return }
    _ = PageAllocator.withLoaded { PageTables.dtorFree(Page(ptlab_ptdesc_of_rcu(head)), allocator: $0) }
}
