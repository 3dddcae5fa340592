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

/// Arenas commit memory as it is used. mimalloc's default on Linux commits
/// whole arenas up front and resets what it frees; memory handed out again
/// is then zeroed by hand and faulted back in. Every QUIC endpoint
/// allocates a 3 MB receive buffer with `calloc`, so a client's start
/// cost three times its CPU (the bench's login storm fell from ~600 to
/// ~270 logins/s). Set before anything is allocated: mimalloc reads it when
/// it reserves its first arena, before `main`.
#[cfg(target_os = "linux")]
extern "C" fn commit_on_demand() {
    // SAFETY: sets one of mimalloc's options; it takes any value and runs
    // before any other thread exists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
}

/// Runs [`commit_on_demand`] before the Rust runtime and mimalloc's own
/// start-up (constructors with a priority run before those without).
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array.00101")]
static COMMIT_ON_DEMAND: extern "C" fn() = commit_on_demand;

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn arenas_commit_on_demand() {
        // SAFETY: reads an option.
        let value = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_ARENA_EAGER_COMMIT) };
        assert_eq!(value, 0, "the option was set before main");
    }
}
