//! A recycling global allocator for large blocks.
//!
//! Why it exists (measured on the 2-core VM, `vigil bench`, dev build): the *live* heap of the
//! pipeline in steady state is only ~30 MB, yet peak RSS with 2 workers was 119–140 MB. tract
//! 0.23 allocates every operator's output afresh each frame (0.3–4.8 MB blocks, the same sizes
//! every frame per worker) next to JPEG/resize buffers whose sizes follow the image, and the
//! freed blocks fragment glibc's heap, which then keeps ~65 MB more resident. Routing large
//! blocks to `mmap` (`MALLOC_MMAP_THRESHOLD_=1048576`) fixes RSS but costs 40 % of frames/s
//! (every block is mapped and zero-faulted per frame); mimalloc was much worse (154–220 MB).
//!
//! [`Recycle`] wraps [`System`]: small (< [`LARGE_MIN`]) and over-aligned (> [`PAGE`])
//! requests go to `System` unchanged. Large ones are rounded up to whole pages and served from
//! exact-size free lists of `mmap`'d blocks (intrusive: a freed block stores the next pointer
//! in its first word), else from the smallest cached block up to 1/[`NEAR_FRACTION`] larger,
//! lent as it is (its capacity noted in a small table, so it goes back to its own list when
//! freed), else a fresh `mmap`. A freed large block goes back to its size's list
//! while the cached bytes stay under the cap (default [`DEFAULT_CACHE_MB`] MiB, environment
//! variable `VIGIL_ALLOC_CACHE_MB` read once at the first large request; `0` disables the
//! cache), otherwise it is `munmap`ped. `VIGIL_ALLOC=system` (read once too) forwards every
//! request to `System`: an escape hatch, and the baseline the allocator is benchmarked against. The table has [`SLOTS`] size classes, each with a
//! last-used stamp: sizes that stop recurring (model loading, odd JPEG sizes) are evicted
//! after [`STALE_OPS`] large operations, and under cap pressure the least recently used size
//! goes first, so the cache follows the per-frame working set. Exact sizes alone needed a
//! ~64 MiB cache to keep frames/s (and then saved no RSS), hence the near-size reuse. An
//! earlier version resized near-size blocks with `mremap`: two sizes then traded blocks back
//! and forth (~28 `mremap`s per frame, 8× glibc's page faults, ~15 % fewer frames/s with 2
//! workers); lending a larger block unchanged faults nothing in.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Requests of at least this many bytes (and alignment ≤ [`PAGE`]) are "large".
pub const LARGE_MIN: usize = 256 * 1024;
/// Large blocks are rounded up to this granularity; `mmap` returns addresses aligned to it
/// (or to a larger page), so any alignment up to it is satisfied.
pub const PAGE: usize = 4096;
/// Default cap on cached (freed, still mapped) bytes, in MiB.
pub const DEFAULT_CACHE_MB: usize = 40;
/// Number of size classes the cache tracks at a time.
pub const SLOTS: usize = 128;
/// A size class not used for this many large allocations/frees is evicted.
pub const STALE_OPS: u64 = 1 << 14;
/// A miss is served from a cached larger block only if it is at most 1/`NEAR_FRACTION` larger
/// than the request: the excess is resident memory lent to a smaller use.
pub const NEAR_FRACTION: usize = 4;
/// Most blocks lent out at a capacity above their request at a time (a full table turns
/// near-size reuse off until one comes back).
const LENT: usize = 256;
/// Most chains evicted (then unmapped outside the lock) in one operation.
const MAX_VICTIMS: usize = 16;

/// Sentinel for "cap not read from the environment yet".
const CAP_UNSET: usize = usize::MAX;

#[derive(Clone, Copy)]
struct Slot {
    /// Page-rounded block size of this class; 0 when the slot is unused.
    size: usize,
    /// Head of the intrusive free list (null when empty).
    head: *mut u8,
    /// Blocks on the list.
    count: usize,
    /// `State::clock` at the last use of this size.
    stamp: u64,
}

const EMPTY_SLOT: Slot = Slot {
    size: 0,
    head: ptr::null_mut(),
    count: 0,
    stamp: 0,
};

struct State {
    slots: [Slot; SLOTS],
    cached: usize,
    clock: u64,
    /// Blocks in use whose mapping is larger than their request rounds to: (address,
    /// mapping size), the first `lent_len` entries.
    lent: [(usize, usize); LENT],
    lent_len: usize,
}

impl State {
    /// The mapping size of lent block `p`, forgetting it; `None` if `p` was not lent.
    fn take_lent(&mut self, p: *mut u8) -> Option<usize> {
        let n = self.lent_len;
        let i = self.lent[..n].iter().position(|&(a, _)| a == p as usize)?;
        let cap = self.lent[i].1;
        self.lent[i] = self.lent[n - 1];
        self.lent_len = n - 1;
        Some(cap)
    }
}

// SAFETY: the raw pointers in `State` are mmap'd blocks owned exclusively by the cache; they
// are only touched with the mutex held (or after being unlinked from it), never aliased.
unsafe impl Send for State {}

/// Chains unlinked from the table under the lock, unmapped after it is released.
struct Victims {
    chains: [(*mut u8, usize); MAX_VICTIMS],
    len: usize,
}

impl Victims {
    const fn new() -> Self {
        Victims {
            chains: [(ptr::null_mut(), 0); MAX_VICTIMS],
            len: 0,
        }
    }

    fn is_full(&self) -> bool {
        self.len == MAX_VICTIMS
    }

    /// Unlinks slot `i`'s whole chain into the victims (caller checks `is_full`).
    fn take(&mut self, st: &mut State, i: usize) {
        let s = &mut st.slots[i];
        if !s.head.is_null() {
            self.chains[self.len] = (s.head, s.size);
            self.len += 1;
            st.cached -= s.count * s.size;
        }
        *s = EMPTY_SLOT;
    }

    /// Unmaps every block of every chain. Call without the lock held.
    fn unmap_all(&self) {
        for &(mut p, size) in &self.chains[..self.len] {
            while !p.is_null() {
                // SAFETY: `p` is a cached block of `size` bytes (≥ LARGE_MIN, page aligned)
                // that was unlinked from the table; its first word is the next pointer,
                // written by `dealloc` and read before the block is unmapped.
                let next = unsafe { p.cast::<*mut u8>().read() };
                // SAFETY: `p`/`size` is exactly one mapping made by `map`, no longer
                // referenced by anything.
                unsafe { unmap(p, size) };
                p = next;
            }
        }
    }
}

/// The allocator; see the module documentation. `const`-constructible, so it can be a
/// `#[global_allocator]` static; a separate instance (as in tests) has its own cache.
pub struct Recycle {
    state: Mutex<State>,
    /// Cap in bytes, `CAP_UNSET` until read from `VIGIL_ALLOC_CACHE_MB`.
    cap: AtomicUsize,
    /// `MODE_UNSET` until `VIGIL_ALLOC` is read (at the first large request), then
    /// `MODE_RECYCLE` or `MODE_SYSTEM` (every request forwarded to [`System`]). Fixed once
    /// read, so a large block is always freed by the path that allocated it.
    mode: AtomicU8,
}

const MODE_UNSET: u8 = 0;
const MODE_RECYCLE: u8 = 1;
const MODE_SYSTEM: u8 = 2;

impl Default for Recycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Recycle {
    /// An allocator whose cap comes from `VIGIL_ALLOC_CACHE_MB` (default
    /// [`DEFAULT_CACHE_MB`]) at the first large request.
    pub const fn new() -> Self {
        Self::build(CAP_UNSET, MODE_UNSET)
    }

    /// An allocator with an explicit cap on cached bytes (ignores the environment).
    pub const fn with_cap_bytes(cap: usize) -> Self {
        Self::build(cap, MODE_RECYCLE)
    }

    const fn build(cap: usize, mode: u8) -> Self {
        Recycle {
            state: Mutex::new(State {
                slots: [EMPTY_SLOT; SLOTS],
                cached: 0,
                clock: 0,
                lent: [(0, 0); LENT],
                lent_len: 0,
            }),
            cap: AtomicUsize::new(cap),
            mode: AtomicU8::new(mode),
        }
    }

    /// Whether large requests go to [`System`] too: environment variable `VIGIL_ALLOC=system`
    /// (an operator's escape hatch, and the baseline of the allocator's benchmark), read once.
    fn system(&self) -> bool {
        match self.mode.load(Ordering::Relaxed) {
            MODE_SYSTEM => true,
            MODE_RECYCLE => false,
            _ => {
                // May allocate (small, served by System): fine, no lock of ours is held here.
                let sys = std::env::var("VIGIL_ALLOC").is_ok_and(|v| v.trim() == "system");
                let m = if sys { MODE_SYSTEM } else { MODE_RECYCLE };
                // The first reader wins; a racing reader saw the same environment.
                let _ =
                    self.mode
                        .compare_exchange(MODE_UNSET, m, Ordering::Relaxed, Ordering::Relaxed);
                self.mode.load(Ordering::Relaxed) == MODE_SYSTEM
            }
        }
    }

    fn cap(&self) -> usize {
        let c = self.cap.load(Ordering::Relaxed);
        if c != CAP_UNSET {
            return c;
        }
        // May allocate (small, served by System): fine, no lock of ours is held here.
        let mb = std::env::var("VIGIL_ALLOC_CACHE_MB")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(DEFAULT_CACHE_MB);
        let c = mb.saturating_mul(1024 * 1024).min(CAP_UNSET - 1);
        self.cap.store(c, Ordering::Relaxed);
        c
    }

    /// Bytes currently held in the free lists (mapped, not in use).
    pub fn cached_bytes(&self) -> usize {
        self.lock().cached
    }

    /// Unmaps every cached block (e.g. after model loading or fitting, with
    /// `malloc_trim` for the small heap).
    pub fn release(&self) {
        loop {
            let mut v = Victims::new();
            {
                let mut st = self.lock();
                for i in 0..SLOTS {
                    if v.is_full() {
                        break;
                    }
                    if st.slots[i].size != 0 {
                        v.take(&mut st, i);
                    }
                }
            }
            v.unmap_all();
            if v.len < MAX_VICTIMS {
                break;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the table inconsistent in a way that
        // matters more than aborting would: keep going with the data as is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A cached block of at least `size` (page-rounded) bytes: one of that size if cached,
    /// else the smallest cached one at most 1/[`NEAR_FRACTION`] larger, lent unchanged (its
    /// pages stay resident: nothing is faulted in or discarded) and noted in the lent table.
    fn pop(&self, size: usize) -> Option<NonNull<u8>> {
        let mut st = self.lock();
        st.clock += 1;
        let now = st.clock;
        let exact = st.slots.iter().position(|s| s.size == size);
        if let Some(i) = exact {
            st.slots[i].stamp = now;
        }
        let i = match exact.filter(|&i| st.slots[i].count > 0) {
            Some(i) => i,
            None if st.lent_len < LENT => (0..SLOTS)
                .filter(|&i| st.slots[i].count > 0)
                .filter(|&i| st.slots[i].size > size)
                .filter(|&i| st.slots[i].size - size <= size / NEAR_FRACTION)
                .min_by_key(|&i| st.slots[i].size)?,
            None => return None,
        };
        let s = &mut st.slots[i];
        let p = NonNull::new(s.head)?;
        // SAFETY: `p` is the head of this slot's free list, a mapped block of `s.size`
        // bytes whose first word holds the next pointer (written by `push`).
        s.head = unsafe { p.as_ptr().cast::<*mut u8>().read() };
        s.count -= 1;
        s.stamp = now;
        let cap = s.size;
        st.cached -= cap;
        if cap != size {
            let n = st.lent_len;
            st.lent[n] = (p.as_ptr() as usize, cap);
            st.lent_len = n + 1;
        }
        Some(p)
    }

    /// Returns a freed block of `size` (page-rounded) bytes, or of its lent capacity, to the
    /// cache, or unmaps it.
    ///
    /// # Safety
    /// `p` must be a block of `size` bytes made by `map` (or lent by `pop` for a request of
    /// `size`) and no longer in use.
    unsafe fn push(&self, p: *mut u8, size: usize) {
        let cap = self.cap();
        let mut v = Victims::new();
        let mut size = size;
        let kept = {
            let mut st = self.lock();
            if let Some(c) = st.take_lent(p) {
                size = c;
            }
            st.clock += 1;
            let now = st.clock;
            // Evict stale sizes, and find this size's slot (or a free one) on the way.
            let mut mine = None;
            let mut free = None;
            for i in 0..SLOTS {
                let s = st.slots[i];
                if s.size == size {
                    mine = Some(i);
                } else if s.size == 0 || s.count == 0 {
                    free = free.or(Some(i));
                } else if now - s.stamp > STALE_OPS && !v.is_full() {
                    v.take(&mut st, i);
                    free = free.or(Some(i));
                }
            }
            // Make room under the cap: least recently used other sizes first.
            while st.cached + size > cap && !v.is_full() {
                let lru = (0..SLOTS)
                    .filter(|&i| st.slots[i].size != 0 && st.slots[i].size != size)
                    .filter(|&i| st.slots[i].count > 0)
                    .min_by_key(|&i| st.slots[i].stamp);
                match lru {
                    Some(i) => {
                        v.take(&mut st, i);
                        free = free.or(Some(i));
                    }
                    None => break,
                }
            }
            // A size the table has no room for takes the least recently used size's slot:
            // a one-off size (an odd JPEG) must not keep a per-frame one out of the cache.
            if mine.is_none() && free.is_none() && !v.is_full() {
                let lru = (0..SLOTS).min_by_key(|&i| st.slots[i].stamp);
                if let Some(i) = lru {
                    v.take(&mut st, i);
                    free = Some(i);
                }
            }
            let slot = mine.or(free);
            match slot {
                Some(i) if st.cached + size <= cap => {
                    let s = &mut st.slots[i];
                    // SAFETY: `p` is an unused mapped block of `size` ≥ LARGE_MIN bytes,
                    // page aligned: its first word is ours to hold the next pointer.
                    unsafe { p.cast::<*mut u8>().write(s.head) };
                    s.size = size;
                    s.head = p;
                    s.count += 1;
                    s.stamp = now;
                    st.cached += size;
                    true
                }
                _ => false,
            }
        };
        v.unmap_all();
        if !kept {
            // SAFETY: per this function's contract.
            unsafe { unmap(p, size) };
        }
    }

    /// A large block: cached, else freshly mapped (then already zero, flagged by `true`).
    fn get(&self, size: usize) -> Option<(NonNull<u8>, bool)> {
        if let Some(p) = self.pop(size) {
            return Some((p, false));
        }
        map(size).map(|p| (p, true))
    }
}

fn is_large(layout: &Layout) -> bool {
    layout.size() >= LARGE_MIN && layout.align() <= PAGE
}

fn page_round(size: usize) -> Option<usize> {
    size.checked_add(PAGE - 1).map(|s| s & !(PAGE - 1))
}

/// A fresh private anonymous mapping of `size` bytes (zero filled).
fn map(size: usize) -> Option<NonNull<u8>> {
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing has no
    // preconditions; failure is reported as MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    NonNull::new(p.cast::<u8>())
}

/// # Safety
/// `p`/`size` must be one mapping made by [`map`], not referenced afterwards.
unsafe fn unmap(p: *mut u8, size: usize) {
    // SAFETY: per this function's contract. munmap of a valid mapping cannot fail; there is
    // nothing useful to do if it did (the memory stays mapped).
    let _ = unsafe { libc::munmap(p.cast(), size) };
}

// SAFETY: large blocks are page-aligned mappings of at least the requested (page-rounded)
// size, owned by exactly one allocation at a time (the free lists hold only freed blocks);
// everything else is delegated to `System` with the caller's layout unchanged. Which path a
// block took depends only on its layout, which the caller passes back identically to
// `dealloc`/`realloc`.
unsafe impl GlobalAlloc for Recycle {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !is_large(&layout) || self.system() {
            // SAFETY: forwarded with the caller's (valid, non-zero-size) layout.
            return unsafe { System.alloc(layout) };
        }
        match page_round(layout.size()).and_then(|s| self.get(s)) {
            Some((p, _)) => p.as_ptr(),
            None => ptr::null_mut(),
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !is_large(&layout) || self.system() {
            // SAFETY: forwarded with the caller's layout.
            return unsafe { System.alloc_zeroed(layout) };
        }
        match page_round(layout.size()).and_then(|s| self.get(s)) {
            Some((p, true)) => p.as_ptr(),
            Some((p, false)) => {
                // SAFETY: a recycled block of at least `layout.size()` bytes, ours alone.
                unsafe { ptr::write_bytes(p.as_ptr(), 0, layout.size()) };
                p.as_ptr()
            }
            None => ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !is_large(&layout) || self.system() {
            // SAFETY: `ptr` came from `System` with this layout (see `alloc`).
            return unsafe { System.dealloc(ptr, layout) };
        }
        if let Some(size) = page_round(layout.size()) {
            // SAFETY: a large block made by `map` with this rounded size, now freed.
            unsafe { self.push(ptr, size) };
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return ptr::null_mut();
        };
        let (old_large, new_large) = (is_large(&layout), is_large(&new_layout));
        if (!old_large && !new_large) || self.system() {
            // SAFETY: both ends are System's; forwarded unchanged.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        if old_large && new_large && page_round(layout.size()) == page_round(new_size) {
            return ptr; // same mapping fits
        }
        // SAFETY: `new_layout` is valid and non-zero (new_size ≥ LARGE_MIN or the old size was).
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are live, distinct, and at least `min` bytes long.
            unsafe {
                ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

/// The process-wide instance, installed by the `vigil` binary as `#[global_allocator]`
/// (through [`GlobalRecycle`]). In a process that does not install it, its cache stays
/// empty and [`release_cache`] is a no-op.
pub static RECYCLE: Recycle = Recycle::new();

/// Zero-sized handle to [`RECYCLE`], for `#[global_allocator]`.
pub struct GlobalRecycle;

// SAFETY: delegates every call to the one static `RECYCLE` (see its impl).
// `inline(never)`: every allocation and drop site calls these; under ThinLTO their bodies
// (the size test, the calls into glibc or the cache) were inlined into each site: the
// aarch64 release binary is 328 KB smaller with them out of line (26,703,632 → 26,375,952 B).
unsafe impl GlobalAlloc for GlobalRecycle {
    #[inline(never)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract.
        unsafe { RECYCLE.alloc(layout) }
    }
    #[inline(never)]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract.
        unsafe { RECYCLE.alloc_zeroed(layout) }
    }
    #[inline(never)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract.
        unsafe { RECYCLE.dealloc(ptr, layout) }
    }
    #[inline(never)]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract.
        unsafe { RECYCLE.realloc(ptr, layout, new_size) }
    }
}

/// Whether the process-wide instance forwards every request to `System`
/// (`VIGIL_ALLOC=system`).
pub fn forwards_to_system() -> bool {
    RECYCLE.system()
}

/// Unmaps the global allocator's cached large blocks.
pub fn release_cache() {
    RECYCLE.release();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn fill(p: *mut u8, n: usize, tag: u8) {
        for i in 0..n {
            // SAFETY: test blocks are at least `n` bytes.
            unsafe { *p.add(i) = tag.wrapping_add((i % 251) as u8) };
        }
    }

    fn check(p: *const u8, n: usize, tag: u8) {
        for i in 0..n {
            // SAFETY: test blocks are at least `n` bytes.
            let b = unsafe { *p.add(i) };
            assert_eq!(
                b,
                tag.wrapping_add((i % 251) as u8),
                "corrupted at {i} of {n}"
            );
        }
    }

    /// Cheap deterministic generator (no rand dependency in the allocator tests).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    const SIZES: &[usize] = &[
        8,
        4000,
        LARGE_MIN - 1,
        LARGE_MIN,
        LARGE_MIN + 1,
        LARGE_MIN + PAGE - 1,
        LARGE_MIN + PAGE,
        LARGE_MIN + PAGE + 1,
        300 * 1024,
        1024 * 1024 - 1,
        1024 * 1024,
        1024 * 1024 + 1,
        3 * 1024 * 1024 + 17,
    ];
    const ALIGNS: &[usize] = &[8, 64, 4096, 8192];

    #[test]
    fn hammer_threads_mixed_sizes_cap_holds() {
        let cap = 4 * 1024 * 1024;
        let a = Arc::new(Recycle::with_cap_bytes(cap));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let a = Arc::clone(&a);
                std::thread::spawn(move || {
                    let mut rng = Lcg(t + 1);
                    let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
                    for step in 0..3000u32 {
                        let op = rng.next() % 4;
                        if op == 0 && !live.is_empty() {
                            let i = (rng.next() as usize) % live.len();
                            let (p, l, tag) = live.swap_remove(i);
                            check(p, l.size(), tag);
                            // SAFETY: allocated by `a` with `l`.
                            unsafe { a.dealloc(p, l) };
                        } else if op == 1 && !live.is_empty() {
                            // realloc across the threshold in both directions
                            let i = (rng.next() as usize) % live.len();
                            let (p, l, tag) = live[i];
                            let ns = SIZES[(rng.next() as usize) % SIZES.len()];
                            // SAFETY: allocated by `a` with `l`; ns is non-zero.
                            let q = unsafe { a.realloc(p, l, ns) };
                            assert!(!q.is_null());
                            let keep = l.size().min(ns);
                            check(q, keep, tag);
                            let nl = Layout::from_size_align(ns, l.align()).expect("layout");
                            fill(q, ns, tag);
                            live[i] = (q, nl, tag);
                        } else {
                            let size = SIZES[(rng.next() as usize) % SIZES.len()];
                            let align = ALIGNS[(rng.next() as usize) % ALIGNS.len()];
                            let l = Layout::from_size_align(size, align).expect("layout");
                            let zero = rng.next().is_multiple_of(2);
                            // SAFETY: non-zero size.
                            let p = unsafe {
                                if zero {
                                    a.alloc_zeroed(l)
                                } else {
                                    a.alloc(l)
                                }
                            };
                            assert!(!p.is_null());
                            assert_eq!(p as usize % align, 0, "misaligned");
                            if zero {
                                // SAFETY: `size` bytes just allocated.
                                let s = unsafe { std::slice::from_raw_parts(p, size) };
                                assert!(s.iter().all(|&b| b == 0), "alloc_zeroed not zero");
                            }
                            let tag = (step as u8).wrapping_add(t as u8 * 61);
                            fill(p, size, tag);
                            live.push((p, l, tag));
                        }
                        assert!(a.cached_bytes() <= cap, "cap exceeded");
                        if live.len() > 24 {
                            let (p, l, tag) = live.remove(0);
                            check(p, l.size(), tag);
                            // SAFETY: allocated by `a` with `l`.
                            unsafe { a.dealloc(p, l) };
                        }
                    }
                    for (p, l, tag) in live {
                        check(p, l.size(), tag);
                        // SAFETY: allocated by `a` with `l`.
                        unsafe { a.dealloc(p, l) };
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("hammer thread panicked");
        }
        assert!(a.cached_bytes() <= cap);
        assert!(a.cached_bytes() > 0, "nothing was recycled");
        a.release();
        assert_eq!(a.cached_bytes(), 0);
    }

    #[test]
    fn recycles_same_block_and_zeroes_dirty_one() {
        let a = Recycle::with_cap_bytes(8 * 1024 * 1024);
        let l = Layout::from_size_align(LARGE_MIN + 1, 64).expect("layout");
        // SAFETY: valid layout; freed with the same one.
        unsafe {
            let p = a.alloc(l);
            fill(p, l.size(), 7);
            a.dealloc(p, l);
            assert_eq!(a.cached_bytes(), LARGE_MIN + PAGE);
            // same page-rounded size, different request size: the same block comes back
            let l2 = Layout::from_size_align(LARGE_MIN + PAGE, 8).expect("layout");
            let q = a.alloc_zeroed(l2);
            assert_eq!(p, q, "block not recycled");
            assert_eq!(a.cached_bytes(), 0);
            let s = std::slice::from_raw_parts(q, l2.size());
            assert!(s.iter().all(|&b| b == 0), "recycled block not zeroed");
            a.dealloc(q, l2);
        }
    }

    #[test]
    fn near_size_miss_borrows_a_larger_block_unchanged() {
        let mb = 1024 * 1024;
        let a = Recycle::with_cap_bytes(8 * mb);
        let big = Layout::from_size_align(mb + 3 * PAGE, 64).expect("layout");
        let near = Layout::from_size_align(mb + 5, 64).expect("layout");
        let small = Layout::from_size_align(mb / 2, 64).expect("layout");
        // SAFETY: valid layouts; each freed with its own.
        unsafe {
            let p = a.alloc(big);
            fill(p, big.size(), 3);
            a.dealloc(p, big);
            // far smaller: not lent the big block
            let f = a.alloc(small);
            assert_ne!(f, p);
            assert_eq!(a.cached_bytes(), big.size());
            a.dealloc(f, small);
            // larger than the cached block: never served by it
            let g = a.alloc(Layout::from_size_align(2 * mb, 64).expect("layout"));
            assert_ne!(g, p);
            a.dealloc(g, Layout::from_size_align(2 * mb, 64).expect("layout"));
            a.release();
            let p = a.alloc(big);
            fill(p, big.size(), 3);
            a.dealloc(p, big);
            // near size: the same block, lent as it is, zeroed for alloc_zeroed
            let q = a.alloc_zeroed(near);
            assert_eq!(q, p, "near block not reused");
            assert_eq!(a.cached_bytes(), 0);
            let s = std::slice::from_raw_parts(q, near.size());
            assert!(s.iter().all(|&b| b == 0), "lent block not zeroed");
            fill(q, near.size(), 9);
            check(q, near.size(), 9);
            // freed with the smaller layout, it goes back whole to its own size's list
            a.dealloc(q, near);
            assert_eq!(a.cached_bytes(), big.size());
            assert_eq!(a.alloc(big), p, "not back on the big list");
            a.dealloc(p, big);
        }
        a.release();
        assert_eq!(a.cached_bytes(), 0);
    }

    #[test]
    fn a_full_lent_table_turns_near_reuse_off() {
        let mb = 1024 * 1024;
        let a = Recycle::with_cap_bytes(1024 * mb);
        let big = Layout::from_size_align(mb + PAGE, 8).expect("layout");
        let near = Layout::from_size_align(mb, 8).expect("layout");
        // SAFETY: valid layouts; each freed with the one it was allocated with.
        unsafe {
            let blocks: Vec<_> = (0..LENT + 2).map(|_| a.alloc(big)).collect();
            for &b in &blocks {
                a.dealloc(b, big);
            }
            let lent: Vec<_> = (0..LENT + 2).map(|_| a.alloc(near)).collect();
            let reused = lent.iter().filter(|p| blocks.contains(p)).count();
            assert_eq!(reused, LENT, "only LENT blocks lent at a larger size");
            assert_eq!(a.cached_bytes(), 2 * (mb + PAGE));
            for &p in &lent {
                fill(p, near.size(), 1);
                a.dealloc(p, near);
            }
            // lent ones back on the big list, the 2 fresh ones on the small list
            assert_eq!(a.cached_bytes(), (LENT + 2) * (mb + PAGE) + 2 * mb);
        }
        a.release();
        assert_eq!(a.cached_bytes(), 0);
    }

    #[test]
    fn cap_zero_unmaps_and_cap_evicts_lru() {
        let a = Recycle::with_cap_bytes(0);
        let l = Layout::from_size_align(LARGE_MIN, 8).expect("layout");
        // SAFETY: valid layout; freed with the same one.
        unsafe {
            let p = a.alloc(l);
            a.dealloc(p, l);
        }
        assert_eq!(a.cached_bytes(), 0);

        let mb = 1024 * 1024;
        let a = Recycle::with_cap_bytes(2 * mb);
        let l1 = Layout::from_size_align(mb, 8).expect("layout");
        let l2 = Layout::from_size_align(mb + PAGE, 8).expect("layout");
        let l3 = Layout::from_size_align(mb + 2 * PAGE, 8).expect("layout");
        // SAFETY: valid layouts; each freed with its own.
        unsafe {
            let (p1, p2, p3) = (a.alloc(l1), a.alloc(l2), a.alloc(l3));
            a.dealloc(p1, l1);
            assert_eq!(a.cached_bytes(), mb);
            a.dealloc(p2, l2); // 2 MiB + 4 KiB > cap: evicts l1's class
            assert_eq!(a.cached_bytes(), mb + PAGE);
            a.dealloc(p3, l3); // evicts l2's
            assert_eq!(a.cached_bytes(), mb + 2 * PAGE);
        }
    }

    #[test]
    fn system_mode_forwards_large_blocks_to_glibc() {
        let a = Recycle::build(64 * 1024 * 1024, MODE_SYSTEM);
        let l = Layout::from_size_align(4 * LARGE_MIN, 64).expect("layout");
        // SAFETY: valid layouts; each block freed (or grown) with its own layout.
        unsafe {
            let p = a.alloc_zeroed(l);
            assert!(!p.is_null());
            assert!(std::slice::from_raw_parts(p, l.size())
                .iter()
                .all(|&b| b == 0));
            p.write_bytes(7, l.size());
            let q = a.realloc(p, l, 2 * l.size());
            assert!(!q.is_null());
            assert_eq!(*q.add(l.size() - 1), 7, "realloc kept the contents");
            let l2 = Layout::from_size_align(2 * l.size(), 64).expect("layout");
            a.dealloc(q, l2);
        }
        // Nothing was cached: the blocks went back to System (a recycling instance caches them).
        assert_eq!(a.cached_bytes(), 0);
        let r = Recycle::with_cap_bytes(64 * 1024 * 1024);
        // SAFETY: valid layout, freed with it.
        unsafe { r.dealloc(r.alloc(l), l) };
        assert_eq!(r.cached_bytes(), page_round(l.size()).expect("size"));
    }

    #[test]
    fn stale_sizes_are_evicted() {
        let a = Recycle::with_cap_bytes(64 * 1024 * 1024);
        let old = Layout::from_size_align(2 * LARGE_MIN, 8).expect("layout");
        let hot = Layout::from_size_align(LARGE_MIN, 8).expect("layout");
        // SAFETY: valid layouts; each freed with its own.
        unsafe {
            let p = a.alloc(old);
            a.dealloc(p, old);
            for _ in 0..STALE_OPS {
                let q = a.alloc(hot);
                a.dealloc(q, hot);
            }
        }
        assert_eq!(a.cached_bytes(), LARGE_MIN, "stale class still cached");
    }

    #[test]
    fn many_sizes_beyond_the_table() {
        let a = Recycle::with_cap_bytes(1024 * 1024 * 1024);
        let ls: Vec<Layout> = (0..SLOTS + 20)
            .map(|i| Layout::from_size_align(LARGE_MIN + i * PAGE, 8).expect("layout"))
            .collect();
        let ps: Vec<*mut u8> = ls
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                // SAFETY: valid layout.
                let p = unsafe { a.alloc(l) };
                fill(p, l.size(), i as u8);
                p
            })
            .collect();
        for (i, (&p, &l)) in ps.iter().zip(&ls).enumerate() {
            check(p, l.size(), i as u8);
            // SAFETY: allocated with `l`.
            unsafe { a.dealloc(p, l) };
        }
        // Each size beyond the table took the least recently used one's slot: the newest
        // SLOTS sizes are cached, the newest one is served from the cache again.
        let newest: usize = ls.iter().rev().take(SLOTS).map(|l| l.size()).sum();
        assert_eq!(a.cached_bytes(), newest);
        let (&lp, &ll) = (ps.last().expect("ptr"), ls.last().expect("layout"));
        // SAFETY: valid layout, freed with it.
        unsafe {
            assert_eq!(a.alloc(ll), lp, "newest size not cached");
            a.dealloc(lp, ll);
        }
        a.release();
        assert_eq!(a.cached_bytes(), 0);
    }
}
