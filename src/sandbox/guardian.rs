//! The guardian: one tiny helper process, forked the first time a command runs, that kills
//! every running command's process group if the engine process dies, even by SIGKILL.
//!
//! Running groups are kept in a table of shared memory (mapped before the fork, so both
//! processes see it): the engine writes a group id into a free slot when a command starts
//! and clears it when the group is gone, with plain atomic stores and no system call.
//! The guardian sleeps in `read` on a pipe whose write end only the engine holds. When the
//! engine dies the kernel closes that end, the read returns end-of-file, and the guardian
//! kills every group still in the table and exits. Commands themselves start with plain
//! `posix_spawn` (no `pre_exec` hook), which keeps spawning cheap in a large process.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock};

/// Most command groups tracked at once; more still run and are killed on cancel and
/// timeout, just not on an engine crash (a warning says so).
const CAPACITY: usize = 16_384;

struct Guardian {
    /// `CAPACITY` slots in memory shared with the guardian process; 0 is free.
    table: &'static [AtomicI32],
    /// Free slot numbers (engine side only).
    free: Mutex<Vec<usize>>,
}

static GUARDIAN: OnceLock<Option<Guardian>> = OnceLock::new();

/// A group registered with the guardian; dropping it unregisters the group.
pub(crate) struct Watch {
    slot: Option<usize>,
}

/// Starts the guardian now, if it is not running yet. The engine calls this before it
/// grows: the guardian is a `fork` of the engine and keeps a copy of every page the engine
/// rewrites afterwards, so the smaller the engine at that moment, the smaller the guardian.
pub(crate) fn start_early() {
    GUARDIAN.get_or_init(start);
}

/// Asks the guardian to kill `pgid` if the engine dies, until the returned value drops.
pub(crate) fn watch(pgid: i32) -> Watch {
    let Some(g) = GUARDIAN.get_or_init(start).as_ref() else {
        return Watch { slot: None };
    };
    let slot = g.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
    match slot {
        Some(i) => g.table[i].store(pgid, Ordering::SeqCst),
        None => log::warn!(
            "more than {CAPACITY} commands at once: group {pgid} is not guarded against an engine crash"
        ),
    }
    Watch { slot }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let (Some(i), Some(Some(g))) = (self.slot, GUARDIAN.get()) {
            g.table[i].store(0, Ordering::SeqCst);
            g.free.lock().unwrap_or_else(|p| p.into_inner()).push(i);
        }
    }
}

fn start() -> Option<Guardian> {
    let fail = |what: &str| {
        log::error!(
            "cannot start the command guardian ({what}: {}); commands may outlive a crashed engine",
            std::io::Error::last_os_error()
        );
        None
    };
    let bytes = CAPACITY * std::mem::size_of::<AtomicI32>();
    // SAFETY: a fresh anonymous shared mapping; checked for MAP_FAILED below.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return fail("mmap");
    }
    // SAFETY: the mapping is zeroed, aligned for i32, `bytes` long, and never unmapped.
    let table: &'static [AtomicI32] =
        unsafe { std::slice::from_raw_parts(mem as *const AtomicI32, CAPACITY) };
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array. O_CLOEXEC keeps the write end out of
    // every command spawned later, so only this process holds it.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return fail("pipe");
    }
    let (read_end, write_end) = (fds[0], fds[1]);
    // SAFETY: after fork() in a multi-threaded process the child may only make
    // async-signal-safe calls; `guard` makes raw system calls only and never returns.
    match unsafe { libc::fork() } {
        -1 => {
            unsafe {
                libc::close(read_end);
                libc::close(write_end);
            }
            fail("fork")
        }
        0 => unsafe { guard(read_end, write_end, table) },
        pid => {
            // SAFETY: the read end belongs to the child now. The write end is never
            // written: it exists so that its closing, at the engine's death, wakes the child.
            unsafe { libc::close(read_end) };
            log::debug!("command guardian started as pid {pid}");
            Some(Guardian {
                table,
                free: Mutex::new((0..CAPACITY).rev().collect()),
            })
        }
    }
}

/// The guardian's whole life. Only async-signal-safe calls; never returns.
unsafe fn guard(read_end: i32, write_end: i32, table: &[AtomicI32]) -> ! {
    libc::close(write_end);
    // Its own session: a terminal's Ctrl-C meant for the engine must not kill it first.
    libc::setsid();
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGPIPE] {
        libc::signal(sig, libc::SIG_IGN);
    }
    // Hold nothing of the engine's: its sockets and files must close when it closes them.
    let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
    for fd in 0..3 {
        if null >= 0 {
            libc::dup2(null, fd);
        }
    }
    let pipe_fd = 3;
    if read_end != pipe_fd {
        libc::dup2(read_end, pipe_fd);
    }
    if libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32) != 0 {
        for fd in 4..65_536 {
            libc::close(fd);
        }
    }
    let mut byte = 0u8;
    loop {
        let n = libc::read(pipe_fd, (&mut byte as *mut u8).cast(), 1);
        if n < 0 && *libc::__errno_location() == libc::EINTR {
            continue;
        }
        break; // end-of-file (or an error): the engine is gone
    }
    for slot in table {
        let pgid = slot.load(Ordering::SeqCst);
        if pgid > 1 {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
    libc::_exit(0)
}
