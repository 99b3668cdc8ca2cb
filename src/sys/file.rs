//! The file system calls of the static file service (`files/`) and of the fast path's file
//! writer (`http/fast/sendfile.rs`): opening a path beneath a directory without leaving it,
//! the path an open fd names, and `sendfile(2)`.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Flags of every file the service opens: read-only, close-on-exec, and non-blocking so that
/// a FIFO planted in the root cannot hang the worker in open(2) (regular files ignore it).
const OPEN_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY;

/// Opens a directory to serve beneath: open(2) with `O_DIRECTORY`.
pub(crate) fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = cstring(path.as_os_str().as_bytes())?;
    // SAFETY: open(2) with a NUL-terminated path that outlives the call.
    let fd = unsafe { libc::open(c.as_ptr(), OPEN_FLAGS | libc::O_DIRECTORY) };
    owned(fd)
}

/// Opens `rel` (a relative path without `..`) beneath the directory `dir`, whose canonical
/// path is `dir_path`, following symbolic links only as far as they stay inside it.
///
/// On Linux this is openat2(2) with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`: a link that
/// climbs out, or an absolute link, fails with `EXDEV` before anything outside is opened.
/// Where openat2 is missing (`ENOSYS`, or `EPERM` from a seccomp filter) and on other systems
/// it is openat(2), then the fd's own path ([`fd_path`]) must start with `dir_path`; that
/// also admits absolute links that point inside. A file outside is reported as `EXDEV`.
pub(crate) fn open_beneath(dir: BorrowedFd<'_>, dir_path: &Path, rel: &str) -> io::Result<File> {
    let c = cstring(if rel.is_empty() { b"." } else { rel.as_bytes() })?;
    #[cfg(target_os = "linux")]
    {
        let how = OpenHow {
            flags: OPEN_FLAGS as u64,
            mode: 0,
            resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
        };
        // SAFETY: openat2(2) with an open directory fd, a NUL-terminated path and an
        // `open_how` of the size given, all alive for the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                c.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        match owned(fd as libc::c_int) {
            Ok(fd) => return Ok(File::from(fd)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => {}
            Err(e) => return Err(e),
        }
    }
    open_checked(dir, dir_path, &c)
}

/// openat(2), then the opened file's own path must lie inside `dir_path` (`EXDEV` if not).
fn open_checked(dir: BorrowedFd<'_>, dir_path: &Path, rel: &CString) -> io::Result<File> {
    // SAFETY: openat(2) with an open directory fd and a NUL-terminated path.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), rel.as_ptr(), OPEN_FLAGS) };
    let file = File::from(owned(fd)?);
    let real = fd_path(file.as_fd())?;
    if real.starts_with(dir_path) {
        Ok(file)
    } else {
        Err(io::Error::from_raw_os_error(libc::EXDEV))
    }
}

/// openat2(2)'s `struct open_how` (libc's is `non_exhaustive`, so it cannot be built).
#[cfg(target_os = "linux")]
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// The path an open fd names now: readlink(2) of `/proc/self/fd/N` on Linux, fcntl(2)
/// `F_GETPATH` on macOS.
pub(crate) fn fd_path(fd: BorrowedFd<'_>) -> io::Result<PathBuf> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
    }
    #[cfg(any(target_os = "macos", target_os = "ios"))]
    {
        let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
        // SAFETY: F_GETPATH writes at most PATH_MAX bytes and a NUL into the buffer.
        let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPATH, buf.as_mut_ptr()) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        buf.truncate(len);
        Ok(PathBuf::from(
            <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(buf),
        ))
    }
    #[cfg(not(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "ios"
    )))]
    {
        let _ = fd;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "no way to ask the path of an open file on this system",
        ))
    }
}

/// sendfile(2): copies up to `count` bytes of `file` from `*offset` to the socket `out`
/// inside the kernel, and advances `*offset` by what it sent. `Ok(0)` means the file ends
/// at `*offset`. A non-blocking socket that is full gives `WouldBlock`.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn sendfile(
    out: BorrowedFd<'_>,
    file: BorrowedFd<'_>,
    offset: &mut u64,
    count: usize,
) -> io::Result<usize> {
    let mut off = libc::off_t::try_from(*offset)
        .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    // SAFETY: sendfile(2) between two fds the borrows keep open; `off` is a valid off_t.
    let n = unsafe { libc::sendfile(out.as_raw_fd(), file.as_raw_fd(), &mut off, count) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    *offset = off as u64;
    Ok(n as usize)
}

/// send(2) with `MSG_MORE`: the kernel holds these bytes back for the data that follows (a
/// response head before its `sendfile`), so head and body leave in full segments.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn send_more(out: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: send(2) of a buffer that outlives the call, on a socket the borrow keeps open.
    let n = unsafe {
        libc::send(
            out.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_MORE | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// pread(2) of exactly `n` bytes of `file` at `offset`, appended to `buf` without zeroing
/// them first. `UnexpectedEof` if the file ends before; `buf` is as it was on any error.
pub(crate) fn pread_append(
    file: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    n: usize,
    offset: u64,
) -> io::Result<()> {
    let start = buf.len();
    buf.reserve(n);
    let mut done = 0;
    while done < n {
        let spare = &mut buf.spare_capacity_mut()[done..n];
        let at = libc::off_t::try_from(offset + done as u64)
            .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        // SAFETY: pread(2) writes at most `spare.len()` bytes into the vector's spare
        // capacity, which `reserve` made at least that long; the fd is open for the call.
        let r =
            unsafe { libc::pread(file.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), at) };
        match r {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file became shorter while it was being sent",
                ))
            }
            r if r > 0 => done += r as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    // SAFETY: the `n` bytes after `start` were written by pread above.
    unsafe { buf.set_len(start + n) };
    Ok(())
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the system call just returned this fd, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "forklift-sys-file-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("root/sub")).unwrap();
        dir.canonicalize().unwrap()
    }

    #[test]
    fn opens_beneath_and_refuses_links_out() {
        let base = tempdir("beneath");
        let root = base.join("root");
        std::fs::write(root.join("sub/a.txt"), b"a").unwrap();
        std::fs::write(base.join("outside.txt"), b"secret").unwrap();
        std::os::unix::fs::symlink("sub/a.txt", root.join("in-link")).unwrap();
        std::os::unix::fs::symlink("../outside.txt", root.join("out-link")).unwrap();
        std::os::unix::fs::symlink(base.join("outside.txt"), root.join("abs-out")).unwrap();
        let dir = open_dir(&root).unwrap();
        let f = open_beneath(dir.as_fd(), &root, "sub/a.txt").unwrap();
        assert_eq!(std::io::read_to_string(f).unwrap(), "a");
        let f = open_beneath(dir.as_fd(), &root, "in-link").unwrap();
        assert_eq!(
            std::io::read_to_string(f).unwrap(),
            "a",
            "a link inside is followed"
        );
        for rel in ["out-link", "abs-out"] {
            let e = open_beneath(dir.as_fd(), &root, rel).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EXDEV), "{rel}: {e}");
        }
        // The check of the opened path (where openat2 is missing) refuses the same links
        // out, and admits absolute links that point inside.
        let c = |s: &str| CString::new(s).unwrap();
        std::os::unix::fs::symlink(root.join("sub/a.txt"), root.join("abs-in")).unwrap();
        assert!(open_checked(dir.as_fd(), &root, &c("in-link")).is_ok());
        assert!(open_checked(dir.as_fd(), &root, &c("abs-in")).is_ok());
        for rel in ["out-link", "abs-out"] {
            let e = open_checked(dir.as_fd(), &root, &c(rel)).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EXDEV), "checked {rel}: {e}");
        }
        let e = open_beneath(dir.as_fd(), &root, "missing").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let d = open_beneath(dir.as_fd(), &root, "").unwrap();
        assert!(d.metadata().unwrap().is_dir(), "the root itself");
        assert_eq!(fd_path(d.as_fd()).unwrap(), root);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn sendfile_copies_a_range_and_advances_the_offset() {
        use std::io::Read;
        let base = tempdir("sendfile");
        let path = base.join("root/digits");
        std::fs::write(&path, b"0123456789").unwrap();
        let file = File::open(&path).unwrap();
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut off = 2;
        assert_eq!(sendfile(b.as_fd(), file.as_fd(), &mut off, 3).unwrap(), 3);
        assert_eq!(off, 5);
        let mut off_end = 10;
        assert_eq!(
            sendfile(b.as_fd(), file.as_fd(), &mut off_end, 3).unwrap(),
            0
        );
        assert_eq!(send_more(b.as_fd(), b"!").unwrap(), 1);
        drop(b);
        let mut got = String::new();
        a.read_to_string(&mut got).unwrap();
        assert_eq!(got, "234!");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn pread_append_reads_exactly_or_fails_whole() {
        let base = tempdir("pread");
        let path = base.join("root/digits");
        std::fs::write(&path, b"0123456789").unwrap();
        let file = File::open(&path).unwrap();
        let mut buf = b"head:".to_vec();
        pread_append(file.as_fd(), &mut buf, 4, 3).unwrap();
        assert_eq!(buf, b"head:3456");
        let e = pread_append(file.as_fd(), &mut buf, 4, 8).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(buf, b"head:3456", "unchanged on error");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
