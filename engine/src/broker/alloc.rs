//! A global allocator that keeps absurd allocations from aborting the broker.
//!
//! kafka-protocol pre-allocates arrays with `Vec::with_capacity(n)` where `n` is the element
//! count read from the wire, before it knows whether that many elements follow. A 26-byte
//! request claiming 2^31 elements asks for ~150 GB; when the system allocator refuses, Rust
//! aborts the whole process (allocation failure is not a panic), taking every connection down.
//!
//! [`GuardedAlloc`] serves such huge requests with an anonymous `MAP_NORESERVE` mapping: it is
//! only address space, no memory is committed until written, and the decoder can never write
//! more than the request's bytes allow (it fails at the end of the frame and the Vec is freed).
//! Everything below [`HUGE`] goes to the system allocator unchanged. Under
//! `vm.overcommit_memory = 2` (strict accounting) the kernel still refuses such mappings, and
//! the allocation fails as it would have without this allocator.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at or above this size are served by `MAP_NORESERVE` mappings.
pub const HUGE: usize = 1 << 30;

const PAGE: usize = 4096;

/// The broker's global allocator (see the module docs).
pub struct GuardedAlloc;

fn huge(layout: &Layout) -> bool {
    layout.size() >= HUGE && layout.align() <= PAGE
}

// SAFETY: every method either forwards to `System` with the caller's arguments, or handles
// layouts for which `huge` is true with mmap/munmap of exactly `layout.size()` bytes. Whether
// a block came from mmap is decided by `huge(layout)`, and GlobalAlloc guarantees dealloc and
// realloc receive the layout the block was allocated with, so each block is freed by the
// allocator that made it. mmap returns page-aligned memory, which satisfies any alignment up
// to PAGE (larger alignments are never routed to mmap).
unsafe impl GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !huge(&layout) {
            // SAFETY: same contract as ours.
            return unsafe { System.alloc(layout) };
        }
        // SAFETY: anonymous private mapping with no address hint; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            p.cast()
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !huge(&layout) {
            // SAFETY: same contract as ours.
            return unsafe { System.alloc_zeroed(layout) };
        }
        // Fresh anonymous mappings are zero-filled by the kernel.
        // SAFETY: same contract as ours.
        unsafe { self.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !huge(&layout) {
            // SAFETY: `ptr` came from System.alloc with this layout (see the impl's SAFETY).
            return unsafe { System.dealloc(ptr, layout) };
        }
        // SAFETY: `ptr` is a mapping of exactly `layout.size()` bytes made by `alloc`.
        unsafe {
            libc::munmap(ptr.cast(), layout.size());
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        if !huge(&layout) && !huge(&new_layout) {
            // SAFETY: the block and both layouts belong to System.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        if huge(&layout) && huge(&new_layout) {
            // Resize the mapping in place or move it without touching (committing) its pages.
            // SAFETY: `ptr` is a mapping of `layout.size()` bytes made by `alloc`.
            let p =
                unsafe { libc::mremap(ptr.cast(), layout.size(), new_size, libc::MREMAP_MAYMOVE) };
            return if p == libc::MAP_FAILED {
                std::ptr::null_mut()
            } else {
                p.cast()
            };
        }
        // Crossing the threshold: move the block; the side below HUGE bounds the copy.
        // SAFETY: `new_layout` is valid; on success we copy the common prefix and free the old
        // block with its own layout.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_capacity_is_address_space_only() {
        let a = GuardedAlloc;
        let layout = Layout::from_size_align(200 << 30, 8).unwrap();
        // SAFETY: valid non-zero layout; freed with the same layout.
        unsafe {
            let p = a.alloc(layout);
            assert!(
                !p.is_null(),
                "a 200 GiB NORESERVE mapping should be granted"
            );
            *p = 7;
            *p.add((200 << 30) - 1) = 9;
            assert_eq!(*p, 7);
            let bigger = a.realloc(p, layout, 300 << 30);
            assert!(!bigger.is_null());
            assert_eq!(*bigger, 7);
            let layout = Layout::from_size_align(300 << 30, 8).unwrap();
            let q = a.realloc(bigger, layout, 64);
            assert!(!q.is_null());
            assert_eq!(*q, 7);
            a.dealloc(q, Layout::from_size_align(64, 8).unwrap());
        }
    }

    #[test]
    fn small_allocations_use_the_system_allocator() {
        let a = GuardedAlloc;
        let layout = Layout::from_size_align(100, 16).unwrap();
        // SAFETY: valid layout; realloc keeps the alignment; freed with the final layout.
        unsafe {
            let p = a.alloc_zeroed(layout);
            assert!(!p.is_null());
            assert_eq!(*p.add(99), 0);
            let q = a.realloc(p, layout, 1000);
            assert!(!q.is_null());
            a.dealloc(q, Layout::from_size_align(1000, 16).unwrap());
        }
    }
}
