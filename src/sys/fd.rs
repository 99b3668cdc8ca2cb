//! The fd flags the rest of forklift sets: close-on-exec, non-blocking, and pipes created
//! close-on-exec. Every fd forklift opens is close-on-exec; what a child inherits is decided
//! in one place, the exec path's pre-exec (`spawn/exec.rs`), which duplicates what it passes.
//!
//! These allocate nothing but an `io::Error` on failure; the code that runs between fork and
//! exec does not use them.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Sets `FD_CLOEXEC` on `fd`, keeping its other fd flags: fcntl(2) `F_GETFD`, then `F_SETFD`.
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    add_flag(fd, libc::F_GETFD, libc::F_SETFD, libc::FD_CLOEXEC)
}

/// Sets `O_NONBLOCK` on `fd`, keeping its other status flags: fcntl(2) `F_GETFL`, then
/// `F_SETFL`. The flag belongs to the open file description, so every duplicate of `fd`
/// (in this process or a child) sees it too.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    add_flag(fd, libc::F_GETFL, libc::F_SETFL, libc::O_NONBLOCK)
}

/// Reads a flag word with `get` and writes it back with `flag` added, unless already there.
fn add_flag(
    fd: BorrowedFd<'_>,
    get: libc::c_int,
    set: libc::c_int,
    flag: libc::c_int,
) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl(2) with a get command on an fd the borrow keeps open; no pointers.
    let flags = unsafe { libc::fcntl(fd, get) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & flag == flag {
        return Ok(());
    }
    // SAFETY: fcntl(2) with a set command and an int argument on the same open fd.
    if unsafe { libc::fcntl(fd, set, flags | flag) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A pipe, `(read end, write end)`, both close-on-exec. Linux, Android and FreeBSD use
/// pipe2(2) with `O_CLOEXEC`, so no fork in another thread can see the fds without the flag;
/// elsewhere (macOS) pipe(2) and then fcntl(2) on each end.
pub(crate) fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as libc::c_int; 2];
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    // SAFETY: pipe2(2) fills the two-int array it is given.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    // SAFETY: pipe(2) fills the two-int array it is given.
    let rc = unsafe { libc::pipe(fds.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe(2) just returned these two fds, owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    for end in [&read, &write] {
        set_cloexec(std::os::fd::AsFd::as_fd(end))?;
    }
    Ok((read, write))
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

    use super::*;

    fn fd_flags(fd: &OwnedFd) -> libc::c_int {
        // SAFETY: F_GETFD on an open fd.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        assert!(flags >= 0, "{}", io::Error::last_os_error());
        flags
    }

    fn status_flags(fd: &OwnedFd) -> libc::c_int {
        // SAFETY: F_GETFL on an open fd.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        assert!(flags >= 0, "{}", io::Error::last_os_error());
        flags
    }

    /// A duplicate without close-on-exec: dup(2) never copies the flag.
    fn plain_dup(fd: &OwnedFd) -> OwnedFd {
        // SAFETY: dup(2) of an open fd; the new fd is owned by nobody else.
        let new = unsafe { libc::dup(fd.as_raw_fd()) };
        assert!(new >= 0, "{}", io::Error::last_os_error());
        // SAFETY: dup(2) just returned it.
        unsafe { OwnedFd::from_raw_fd(new) }
    }

    #[test]
    fn pipe_ends_are_close_on_exec_and_blocking() {
        let (read, write) = pipe_cloexec().unwrap();
        for end in [&read, &write] {
            assert_ne!(fd_flags(end) & libc::FD_CLOEXEC, 0);
            assert_eq!(status_flags(end) & libc::O_NONBLOCK, 0);
        }
        assert_eq!(status_flags(&read) & libc::O_ACCMODE, libc::O_RDONLY);
        assert_eq!(status_flags(&write) & libc::O_ACCMODE, libc::O_WRONLY);
    }

    #[test]
    fn cloexec_is_set_and_setting_it_twice_is_harmless() {
        let (read, _write) = pipe_cloexec().unwrap();
        let copy = plain_dup(&read);
        assert_eq!(fd_flags(&copy) & libc::FD_CLOEXEC, 0);
        set_cloexec(copy.as_fd()).unwrap();
        assert_ne!(fd_flags(&copy) & libc::FD_CLOEXEC, 0);
        set_cloexec(copy.as_fd()).unwrap();
        assert_ne!(fd_flags(&copy) & libc::FD_CLOEXEC, 0);
    }

    #[test]
    fn nonblocking_keeps_the_other_status_flags() {
        let (_read, write) = pipe_cloexec().unwrap();
        let before = status_flags(&write);
        set_nonblocking(write.as_fd()).unwrap();
        assert_eq!(status_flags(&write), before | libc::O_NONBLOCK);
        // A file status flag, unlike FD_CLOEXEC, which stays as it was.
        assert_ne!(fd_flags(&write) & libc::FD_CLOEXEC, 0);
    }
}
