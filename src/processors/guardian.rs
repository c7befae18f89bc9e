//! The guardian: one tiny helper process, forked the first time a command runs, that kills
//! every running command's process group if the engine process dies, even by SIGKILL.
//!
//! The engine tells it `+PGID` when a command starts and `-PGID` when its group is gone,
//! over a pipe whose write end only the engine holds. When the engine dies the kernel
//! closes that end; the guardian reads end-of-file, kills the groups it still knows, and
//! exits. Commands themselves are started with plain `posix_spawn` (no `pre_exec` hook),
//! which keeps spawning cheap in a large multi-threaded process.

use std::os::fd::RawFd;
use std::sync::OnceLock;

/// Most command groups tracked at once; more are still killed on cancel and timeout, but
/// not on an engine crash.
const CAPACITY: usize = 65_536;

struct Guardian {
    fd: RawFd,
}

static GUARDIAN: OnceLock<Option<Guardian>> = OnceLock::new();

fn guardian() -> Option<&'static Guardian> {
    GUARDIAN.get_or_init(start).as_ref()
}

/// Asks the guardian to kill `pgid` if the engine dies.
pub(crate) fn watch(pgid: i32) {
    if let Some(g) = guardian() {
        g.send(b'+', pgid);
    }
}

/// Tells the guardian `pgid` is gone.
pub(crate) fn unwatch(pgid: i32) {
    if let Some(g) = GUARDIAN.get().and_then(Option::as_ref) {
        g.send(b'-', pgid);
    }
}

impl Guardian {
    fn send(&self, sign: u8, pgid: i32) {
        let line = format!("{}{pgid}\n", sign as char);
        let mut rest = line.as_bytes();
        while !rest.is_empty() {
            // SAFETY: writing a live buffer to our own pipe. Lines are shorter than
            // PIPE_BUF, so concurrent writers never interleave.
            let n = unsafe { libc::write(self.fd, rest.as_ptr().cast(), rest.len()) };
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return; // the guardian is gone; nothing better to do
            }
            rest = &rest[n as usize..];
        }
    }
}

fn start() -> Option<Guardian> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills the two-element array. O_CLOEXEC keeps the write end out of
    // every command we later spawn, so only this process holds it.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        log::error!(
            "cannot start the command guardian: {}; commands may outlive a crashed engine",
            std::io::Error::last_os_error()
        );
        return None;
    }
    let (read_end, write_end) = (fds[0], fds[1]);
    // Everything the child touches is allocated before the fork: after fork() in a
    // multi-threaded process the child may only make async-signal-safe calls.
    let mut table = vec![0i32; CAPACITY].into_boxed_slice();
    let mut buf = [0u8; 4096];
    // SAFETY: see above; the child runs only `guard`, which makes raw syscalls and never
    // allocates, locks, panics or returns.
    match unsafe { libc::fork() } {
        -1 => {
            log::error!(
                "cannot fork the command guardian: {}; commands may outlive a crashed engine",
                std::io::Error::last_os_error()
            );
            unsafe {
                libc::close(read_end);
                libc::close(write_end);
            }
            None
        }
        0 => unsafe { guard(read_end, write_end, &mut table, &mut buf) },
        pid => {
            // SAFETY: the read end belongs to the child now.
            unsafe { libc::close(read_end) };
            log::debug!("command guardian started as pid {pid}");
            Some(Guardian { fd: write_end })
        }
    }
}

/// The guardian's whole life. Only async-signal-safe calls; never returns.
unsafe fn guard(read_end: RawFd, write_end: RawFd, table: &mut [i32], buf: &mut [u8]) -> ! {
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
    let mut used = 0usize; // entries beyond `used` are all free
    let (mut sign, mut value, mut digits) = (0u8, 0i64, false);
    loop {
        let n = libc::read(pipe_fd, buf.as_mut_ptr().cast(), buf.len());
        if n < 0 && *libc::__errno_location() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            break; // the engine is gone
        }
        for &b in buf.iter().take(n as usize) {
            match b {
                b'+' | b'-' => (sign, value, digits) = (b, 0, false),
                b'0'..=b'9' => {
                    value = value.saturating_mul(10).saturating_add((b - b'0') as i64);
                    digits = true;
                }
                b'\n' => {
                    if digits && value > 1 && value <= i32::MAX as i64 {
                        let pgid = value as i32;
                        if sign == b'+' {
                            if let Some(slot) = table.iter_mut().take(used).find(|s| **s == 0) {
                                *slot = pgid;
                            } else if used < table.len() {
                                table[used] = pgid;
                                used += 1;
                            }
                        } else if let Some(slot) = table.iter_mut().take(used).find(|s| **s == pgid)
                        {
                            *slot = 0;
                        }
                    }
                    (sign, value, digits) = (0, 0, false);
                }
                _ => {}
            }
        }
    }
    for &pgid in table.iter().take(used) {
        if pgid > 1 {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
    libc::_exit(0)
}
