//! Resource limits (`getrlimit`/`setrlimit`): the open-file limit the master raises at start,
//! before it binds or spawns, so that every worker inherits it.

use std::io;

/// The open-file limit before and after [`raise_nofile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NofileRaise {
    pub from: libc::rlim_t,
    pub to: libc::rlim_t,
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit, as nginx's
/// `worker_rlimit_nofile` and Go's runtime do: the soft limit is often 1024 (systemd's
/// default, for programs that still use `select(2)`), which a busy server reaches long before
/// memory runs out, while the hard limit is far higher. On macOS the hard limit may be
/// `RLIM_INFINITY`, which `setrlimit` refuses for this resource: the target is capped at
/// `kern.maxfilesperproc`, as Go caps it.
pub(crate) fn raise_nofile() -> io::Result<NofileRaise> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes one rlimit struct through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let from = lim.rlim_cur;
    let mut target = lim.rlim_max;
    if let Some(cap) = per_process_cap() {
        target = target.min(cap);
    }
    if target <= from {
        return Ok(NofileRaise { from, to: from });
    }
    lim.rlim_cur = target;
    // SAFETY: setrlimit(2) reads one initialised rlimit struct; the new soft limit is at most
    // the hard one, which an unprivileged process may do.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(NofileRaise { from, to: target })
}

/// The most files one process may open whatever its hard limit says (macOS:
/// `kern.maxfilesperproc`); `None` where the hard limit is the only bound.
#[cfg(target_vendor = "apple")]
fn per_process_cap() -> Option<libc::rlim_t> {
    let mut n: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>();
    // SAFETY: sysctlbyname(3) with a NUL-terminated name, an output buffer of `len` bytes
    // and no new value.
    let rc = unsafe {
        libc::sysctlbyname(
            c"kern.maxfilesperproc".as_ptr(),
            (&mut n as *mut libc::c_int).cast(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    (rc == 0 && n > 0).then_some(n as libc::rlim_t)
}

#[cfg(not(target_vendor = "apple"))]
fn per_process_cap() -> Option<libc::rlim_t> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        // Raising is idempotent, so running it in the test process changes nothing a second
        // call could see differently.
        let first = raise_nofile().unwrap();
        assert!(first.to >= first.from);
        let again = raise_nofile().unwrap();
        assert_eq!(again.from, again.to, "already raised");
        assert_eq!(again.to, first.to);
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as in raise_nofile.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(lim.rlim_cur, first.to);
        #[cfg(not(target_vendor = "apple"))]
        assert_eq!(lim.rlim_cur, lim.rlim_max);
    }
}
