//! Page-backed buffers for the local TCP stack's connections, so that an
//! idle connection costs (almost) no resident memory.
//!
//! smoltcp's socket buffers have a fixed capacity, chosen when the
//! connection is accepted (its window scale depends on it). A connection
//! that moves a little data and then stays open (a keep-alive HTTP
//! connection, a push channel) would keep the pages its buffers touched
//! for its whole life. Here each buffer is whole pages of anonymous
//! memory from a shared [`PagePool`]: one page, or a slot of its size in
//! a chunk of slots of that size mapped together (so that thousands of
//! connections do not take thousands of mappings). Once both of a
//! connection's buffers are empty (and nothing waits out of order: see
//! [`ConnSockets::release`]), their pages are given back to the system
//! (`MADV_DONTNEED`); the next bytes fault fresh zero pages in. A closed
//! connection's pages and slots are emptied the same way and kept by the
//! pool for the next connections (address space only), so that opening
//! and closing connections does not map and unmap memory each time. Where
//! mapping fails, the buffers are ordinary heap vectors of at most
//! [`HEAP_BUFFER_MAX`] and are never released.
//!
//! This is the library's one module with `unsafe` code: smoltcp borrows
//! its buffers for `'static`, and giving pages back is a system call on
//! memory a socket holds. Both are contained in [`ConnSockets`], which
//! keeps each socket and its buffers together and drops the socket first.
#![expect(unsafe_code, reason = "mapping, releasing and lending socket buffers")]

use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

use nix::sys::mman::{MapFlags, MmapAdvise, ProtFlags};
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;

/// Sets the C allocator's heap trimming and mapping thresholds for a
/// process that moves packets (glibc only; elsewhere nothing changes).
///
/// Each packet written to the TUN and each chunk read from a server is a
/// short-lived buffer of up to 64 KiB. With glibc's defaults, freeing one
/// can shrink the heap (its top beyond 128 KiB is trimmed) and the next
/// one grows it again, faulting fresh pages in: measured during a download
/// through the TUN, ~130,000 page faults a second and a fifth of the
/// throughput. Fixed thresholds (which also stop glibc adjusting them) keep
/// up to [`TRIM_THRESHOLD`] of free heap, and serve blocks below
/// [`MMAP_THRESHOLD`] from the heap.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets the allocator's parameters; it is called
    // at start, before the process has other threads.
    unsafe {
        use nix::libc;
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
    }
}

/// Free heap kept before it is given back, with [`tune_allocator`].
pub const TRIM_THRESHOLD: usize = 2 * 1024 * 1024;
/// Allocations this big or bigger get their own mapping, with
/// [`tune_allocator`].
pub const MMAP_THRESHOLD: usize = 512 * 1024;

/// Pages mapped at once for the pool.
const CHUNK_PAGES: usize = 256;

/// Bytes of slots mapped at once for buffers bigger than a page (at
/// least one slot): 16 slots of the default 1 MiB buffers.
pub const SLOT_CHUNK: usize = 16 * 1024 * 1024;

/// The largest buffer made on the heap where pages cannot be mapped.
pub const HEAP_BUFFER_MAX: usize = 64 * 1024;

/// The system's page size (4 KiB where it cannot be read).
pub fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|p| usize::try_from(p).ok())
            .filter(|p| p.is_power_of_two())
            .unwrap_or(4096)
    })
}

/// Rounds `n` up to whole pages (at least one).
pub fn whole_pages(n: usize) -> usize {
    let p = page_size();
    n.max(1).div_ceil(p) * p
}

/// Single pages for one-page buffers, mapped `CHUNK_PAGES` at a time, and
/// slots for bigger ones, mapped [`SLOT_CHUNK`] bytes at a time, all
/// reused; a page or slot is released to the system whenever it is freed,
/// so the pool's resident memory is only the pages in use. Its mappings
/// (its address space: at most what the most buffers open at once needed,
/// rounded up to chunks) stay until the pool is dropped, which happens
/// after the last buffer using it is gone.
#[derive(Debug, Default)]
pub struct PagePool {
    inner: Mutex<PoolInner>,
}

#[derive(Debug, Default)]
struct PoolInner {
    /// Free pages, by address.
    free: Vec<usize>,
    /// Mappings: (address, length).
    chunks: Vec<(usize, usize)>,
    /// Free slots for buffers bigger than a page, by length: addresses.
    slots: std::collections::HashMap<usize, Vec<usize>>,
}

impl PagePool {
    /// An empty pool (nothing is mapped until a page is asked for).
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A page, or `None` when no more can be mapped.
    fn take(&self) -> Option<NonNull<u8>> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.free.is_empty() {
            let len = CHUNK_PAGES * page_size();
            let at = map(len)?;
            g.chunks.push((at.as_ptr() as usize, len));
            let base = at.as_ptr() as usize;
            g.free
                .extend((0..CHUNK_PAGES).rev().map(|i| base + i * page_size()));
        }
        g.free.pop().and_then(|a| NonNull::new(a as *mut u8))
    }

    /// Takes back a page, releasing its memory.
    fn give(&self, page: NonNull<u8>) {
        release(page, page_size());
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.free.push(page.as_ptr() as usize);
    }

    /// A slot of `len` bytes (whole pages, more than one), or `None` when
    /// no more can be mapped.
    fn take_slot(&self, len: usize) -> Option<NonNull<u8>> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let g = &mut *g;
        let free = g.slots.entry(len).or_default();
        if free.is_empty() {
            let n = (SLOT_CHUNK / len).max(1);
            let at = map(n * len)?;
            g.chunks.push((at.as_ptr() as usize, n * len));
            let base = at.as_ptr() as usize;
            free.extend((0..n).rev().map(|i| base + i * len));
        }
        free.pop().and_then(|a| NonNull::new(a as *mut u8))
    }

    /// Takes back a slot, releasing its memory.
    fn give_slot(&self, at: NonNull<u8>, len: usize) {
        release(at, len);
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.slots.entry(len).or_default().push(at.as_ptr() as usize);
    }

    /// Free slots, all lengths.
    pub fn free_slots(&self) -> usize {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.slots.values().map(Vec::len).sum()
    }

    /// Mappings made (chunks of pages or slots).
    pub fn mappings(&self) -> usize {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.chunks.len()
    }

    /// Pages mapped (in use or free).
    pub fn mapped_pages(&self) -> usize {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.chunks.iter().map(|c| c.1).sum::<usize>() / page_size()
    }
}

impl Drop for PagePool {
    fn drop(&mut self) {
        let g = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        for &(at, len) in &g.chunks {
            if let Some(p) = NonNull::new(at as *mut std::ffi::c_void) {
                // SAFETY: the pool mapped this range, and no buffer uses it
                // any more (each holds the pool alive).
                let _ = unsafe { nix::sys::mman::munmap(p, len) };
            }
        }
    }
}

/// Maps `len` bytes of fresh anonymous memory.
fn map(len: usize) -> Option<NonNull<u8>> {
    let n = NonZeroUsize::new(len)?;
    // SAFETY: a new private anonymous mapping at an address the system
    // chooses aliases nothing.
    unsafe {
        nix::sys::mman::mmap_anonymous(
            None,
            n,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_PRIVATE,
        )
    }
    .ok()
    .map(NonNull::cast)
}

/// Gives the pages of `[at, at + len)` back to the system; their contents
/// read as zeros afterwards.
fn release(at: NonNull<u8>, len: usize) {
    // SAFETY: the range is a whole-page part of a mapping of ours, and its
    // contents are not needed (callers release only empty buffers).
    let _ = unsafe { nix::sys::mman::madvise(at.cast(), len, MmapAdvise::MADV_DONTNEED) };
}

/// One buffer's pages.
#[derive(Debug)]
struct Pages {
    at: NonNull<u8>,
    /// The buffer's length (whole pages).
    len: usize,
    /// The pool that gave the pages and takes them back.
    pool: Arc<PagePool>,
}

// SAFETY: `Pages` owns its range outright (like a `Box<[u8]>`); the pool
// is shared behind a mutex.
unsafe impl Send for Pages {}

impl Pages {
    /// `len` bytes (whole pages) of zeroed memory.
    fn new(len: usize, pool: &Arc<PagePool>) -> Option<Self> {
        let len = whole_pages(len);
        let at = if len == page_size() {
            pool.take()?
        } else {
            pool.take_slot(len)?
        };
        Some(Self {
            at,
            len,
            pool: pool.clone(),
        })
    }

    /// The buffer as the socket sees it.
    ///
    /// # Safety
    /// The slice must not be used after `self` is dropped.
    unsafe fn slice(&mut self) -> &'static mut [u8] {
        // SAFETY: the range is ours, mapped read-write, and zeroed; the
        // caller keeps its use within our life.
        unsafe { std::slice::from_raw_parts_mut(self.at.as_ptr(), self.len) }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // No longer used (see `slice`).
        if self.len == page_size() {
            self.pool.give(self.at);
        } else {
            self.pool.give_slot(self.at, self.len);
        }
    }
}

/// One connection's socket set (holding its one TCP socket) and the
/// buffers the socket uses. The set is declared (and so dropped) before
/// the buffers, and never leaves this struct: the socket cannot outlive
/// the memory it borrows.
pub struct ConnSockets {
    set: SocketSet<'static>,
    /// The socket's receive and send buffers; `None`: heap-backed, owned by
    /// the socket itself.
    pages: Option<[Pages; 2]>,
    handle: SocketHandle,
}

impl std::fmt::Debug for ConnSockets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnSockets")
            .field("pages", &self.pages)
            .finish_non_exhaustive()
    }
}

impl ConnSockets {
    /// A set with one TCP socket whose buffers are `each` bytes each way,
    /// rounded up to whole pages (the real size is
    /// [`ConnSockets::capacity`]).
    pub fn new(each: usize, pool: &Arc<PagePool>) -> Self {
        let pages = Pages::new(each, pool).zip(Pages::new(each, pool));
        let (sock, pages) = match pages {
            Some((mut rx, mut tx)) => {
                // SAFETY: the slices live in `self.set`, which is dropped
                // before `self.pages` and never handed out by value.
                let (r, t) = unsafe { (rx.slice(), tx.slice()) };
                (
                    tcp::Socket::new(tcp::SocketBuffer::new(r), tcp::SocketBuffer::new(t)),
                    Some([rx, tx]),
                )
            }
            None => {
                // Heap memory is never given back: kept small.
                let each = whole_pages(each.min(HEAP_BUFFER_MAX));
                (
                    tcp::Socket::new(
                        tcp::SocketBuffer::new(vec![0; each]),
                        tcp::SocketBuffer::new(vec![0; each]),
                    ),
                    None,
                )
            }
        };
        let mut set = SocketSet::new(Vec::with_capacity(1));
        let handle = set.add(sock);
        Self { set, pages, handle }
    }

    /// Bytes of buffers each way.
    pub fn capacity(&self) -> usize {
        self.socket().recv_capacity()
    }

    /// The set, for the stack to poll.
    pub fn set(&mut self) -> &mut SocketSet<'static> {
        &mut self.set
    }

    /// The connection's socket.
    pub fn socket(&self) -> &tcp::Socket<'static> {
        self.set.get::<tcp::Socket>(self.handle)
    }

    /// The connection's socket, to change.
    pub fn socket_mut(&mut self) -> &mut tcp::Socket<'static> {
        self.set.get_mut::<tcp::Socket>(self.handle)
    }

    /// Gives both buffers' pages back to the system if both are empty and
    /// `nothing_out_of_order` (smoltcp keeps segments that arrived ahead
    /// of a gap in the free part of the receive buffer, and does not say
    /// so: the caller, who sees every segment, does). Returns whether it
    /// did.
    pub fn release(&mut self, nothing_out_of_order: bool) -> bool {
        let s = self.set.get::<tcp::Socket>(self.handle);
        if !nothing_out_of_order || s.recv_queue() != 0 || s.send_queue() != 0 {
            return false;
        }
        let Some(pages) = &self.pages else {
            return false;
        };
        for p in pages {
            release(p.at, p.len);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many of the pages of `[at, at + len)` are resident.
    fn resident(at: NonNull<u8>, len: usize) -> usize {
        let mut v = vec![0u8; len / page_size()];
        // SAFETY: the range is a mapping of ours; `v` has a byte per page.
        let r = unsafe { nix::libc::mincore(at.as_ptr().cast(), len, v.as_mut_ptr().cast()) };
        assert_eq!(r, 0, "mincore");
        v.iter().filter(|&&b| b & 1 == 1).count()
    }

    #[test]
    fn pool_pages_are_reused_and_zeroed() {
        let pool = PagePool::new();
        let mut a = Pages::new(100, &pool).expect("a page");
        assert_eq!(a.len, page_size());
        // SAFETY: used while `a` lives.
        let s = unsafe { a.slice() };
        assert!(s.iter().all(|&b| b == 0));
        s.fill(0xAB);
        let at = a.at;
        drop(a);
        let b = Pages::new(page_size(), &pool).expect("a page");
        assert_eq!(b.at, at, "the freed page is taken again");
        // SAFETY: read while `b` lives.
        let s = unsafe { std::slice::from_raw_parts(b.at.as_ptr(), b.len) };
        assert!(s.iter().all(|&x| x == 0), "a reused page reads as zeros");
        assert_eq!(pool.mapped_pages(), CHUNK_PAGES);
    }

    #[test]
    fn bigger_buffers_are_slots_of_shared_mappings() {
        let pool = PagePool::new();
        let len = 256 * page_size();
        let per_chunk = SLOT_CHUNK / len;
        let many: Vec<Pages> = (0..per_chunk + 1)
            .map(|_| Pages::new(len - 1, &pool).expect("pages"))
            .collect();
        assert!(many.iter().all(|p| p.len == len));
        assert_eq!(
            pool.mappings(),
            2,
            "{} slots in two mappings",
            per_chunk + 1
        );
        assert_eq!(pool.mapped_pages(), 2 * per_chunk * len / page_size());
        drop(many);
        assert_eq!(pool.free_slots(), 2 * per_chunk);
    }

    #[test]
    fn closed_buffers_slots_are_emptied_and_reused() {
        let pool = PagePool::new();
        let len = 16 * page_size();
        let mut a = Pages::new(len, &pool).expect("pages");
        // SAFETY: written while `a` lives.
        unsafe { a.slice() }.fill(0xCD);
        let at = a.at;
        drop(a);
        // SAFETY: the free slot is in the pool's mapping, still mapped.
        assert_eq!(resident(at, len), 0, "a free slot holds no memory");
        let b = Pages::new(len, &pool).expect("pages");
        assert_eq!(b.at, at, "the freed slot is taken again");
        // SAFETY: read while `b` lives.
        let s = unsafe { std::slice::from_raw_parts(b.at.as_ptr(), b.len) };
        assert!(s.iter().all(|&x| x == 0), "a reused slot reads as zeros");
        let mappings = pool.mappings();
        drop(b);
        for _ in 0..100 {
            drop(Pages::new(len, &pool).expect("pages"));
        }
        assert_eq!(
            pool.mappings(),
            mappings,
            "opening and closing maps nothing"
        );
    }

    #[test]
    fn empty_buffers_give_their_memory_back() {
        let pool = PagePool::new();
        let mut conns: Vec<ConnSockets> = [1, 256 * 1024]
            .iter()
            .map(|&n| ConnSockets::new(n, &pool))
            .collect();
        for c in &mut conns {
            let s = c.socket();
            assert_eq!((s.recv_queue(), s.send_queue()), (0, 0));
            let pages = c.pages.as_mut().expect("page-backed");
            for p in pages.iter_mut() {
                // Written as traffic would (the socket has nothing queued,
                // so what it sees does not change).
                // SAFETY: written while the buffers live.
                unsafe { p.slice() }.fill(1);
                assert_eq!(resident(p.at, p.len), p.len / page_size());
            }
            assert!(
                !c.release(false),
                "nothing is released while out-of-order data may wait"
            );
            let pages = c.pages.as_ref().expect("page-backed");
            assert!(pages.iter().all(|p| resident(p.at, p.len) > 0));
            assert!(c.release(true));
            let pages = c.pages.as_ref().expect("page-backed");
            assert!(pages.iter().all(|p| resident(p.at, p.len) == 0));
        }
        assert_eq!(conns[0].capacity(), page_size());
        assert_eq!(conns[1].capacity(), 256 * 1024);
    }
}
