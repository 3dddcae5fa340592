//! The process's allocator: mimalloc, not glibc's malloc. A relayed text is
//! allocated on one thread and freed on another, and glibc's arenas (their
//! locks, chunk consolidation, heaps grown by `mprotect`) were an eighth of
//! the node's CPU and a tenth of a client's; with mimalloc a relayed text
//! costs the node 10% fewer instructions and the bench's clients 9% fewer.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` in mimalloc.h's `mi_option_t`.
#[cfg(target_os = "linux")]
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
/// `mi_option_purge_decommits` in mimalloc.h's `mi_option_t`.
#[cfg(target_os = "linux")]
const MI_OPTION_PURGE_DECOMMITS: libmimalloc_sys::mi_option_t = 5;

/// Arenas commit memory as it is used, and memory freed for a while is
/// given back lazily (`MADV_FREE`: the kernel takes the pages only when it
/// needs them), not decommitted.
///
/// - mimalloc's default on Linux commits whole arenas up front and resets
///   what it frees; memory handed out again is then zeroed by hand and
///   faulted back in. Every QUIC endpoint allocates a 3 MB receive buffer
///   with `calloc`, so a client's start cost three times its CPU (the
///   bench's login storm fell from ~600 to ~270 logins/s).
/// - Decommitted memory is faulted back in at its next use: a node or a
///   client that had a burst and then runs at a steady trickle paid page
///   faults on its paced texts (`bench all`'s latency p99 after the ring
///   and cross-node loads: 1.5–1.9 ms decommitting, 0.8–1.3 ms not).
///
/// Set before anything is allocated: mimalloc reads them when it reserves
/// its first arena, before `main`.
#[cfg(target_os = "linux")]
extern "C" fn allocator_options() {
    // SAFETY: sets two of mimalloc's options; they take any value, and this
    // runs before any other thread exists.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DECOMMITS, 0);
    }
}

/// Runs [`allocator_options`] before the Rust runtime and mimalloc's own
/// start-up (constructors with a priority run before those without).
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array.00101")]
static ALLOCATOR_OPTIONS: extern "C" fn() = allocator_options;

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn the_options_were_set_before_main() {
        for option in [
            super::MI_OPTION_ARENA_EAGER_COMMIT,
            super::MI_OPTION_PURGE_DECOMMITS,
        ] {
            // SAFETY: reads an option.
            let value = unsafe { libmimalloc_sys::mi_option_get(option) };
            assert_eq!(value, 0, "option {option}");
        }
    }
}
