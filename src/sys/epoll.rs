//! Waking one worker, not every worker, for a connection on a listener they share:
//! `EPOLLEXCLUSIVE` (Linux 4.5) on the registration tokio made for the listener.
//!
//! Every worker waits for connections on the same listening socket, each through its own
//! runtime's epoll instance. Without the flag a connection wakes every worker asleep in
//! `epoll_wait`, and all but one find the accept queue empty and go back to sleep. With it the
//! kernel wakes the first worker that waits, and passes over those that are busy (their epoll
//! still records the event, so nothing is lost when no worker waits). nginx has used it by
//! default since 1.11.3.
//!
//! tokio (through mio) registers every source without the flag and has no way to ask for it,
//! and `EPOLL_CTL_MOD` cannot add it. So [`Exclusive::take_over`] finds the registration tokio
//! made: the runtime's epoll fd is the one whose `/proc/self/fdinfo` lists the listener's fd
//! and inode, with the token tokio routes its events by. It deletes that registration and adds
//! it again with the flag and the same token. The kernel allows only `EPOLLIN`, `EPOLLOUT`,
//! `EPOLLERR`, `EPOLLHUP`, `EPOLLWAKEUP` and `EPOLLET` beside it; tokio's `EPOLLOUT` and
//! `EPOLLRDHUP` mean nothing for a listener, so the new registration drops them. Where any of
//! this is missing (no /proc, an older kernel, another platform) the listener keeps tokio's
//! own registration: correct, just with every waiting worker woken.
//!
//! The price of the flag: a connection goes to the first waiting worker whether or not it will
//! accept it. A worker that stops accepting for a while (at its connection limit, or backing
//! off after EMFILE) but still sleeps in `epoll_wait` for its other connections would hold
//! new connections back while the others sleep. Such a worker takes its listener out of the
//! set for the while ([`Exclusive::stand_aside`]), as nginx disables its accept events. And
//! the kernel considers waiting workers in the order they registered, so an idle server would
//! give every connection to the same worker; [`Exclusive::go_last`] lets a worker that
//! accepted step to the back (the accept loop's `Turns` says when).

use std::io;
use std::os::fd::{BorrowedFd, RawFd};

/// A listener's exclusive registration in this thread's runtime epoll instance.
#[derive(Debug)]
pub(crate) struct Exclusive {
    epfd: RawFd,
    fd: RawFd,
    /// The events and token of the exclusive registration.
    events: u32,
    token: u64,
}

impl Exclusive {
    /// Makes the registration tokio holds for `listener` exclusive. `Ok(None)`: not done, for
    /// a reason that leaves tokio's registration in place (said at DEBUG). An error: tokio's
    /// registration was deleted and could not be made again, so the listener would never
    /// report a connection; the worker cannot serve on it.
    ///
    /// Call it right after tokio registered the listener (`from_std`) and before the runtime
    /// polls for events again.
    pub fn take_over(listener: BorrowedFd<'_>) -> io::Result<Option<Exclusive>> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use std::os::fd::AsRawFd;
            let fd = listener.as_raw_fd();
            let Some((epfd, events, token)) = find_registration(fd) else {
                return Ok(None);
            };
            let exclusive = Exclusive {
                epfd,
                fd,
                events: (events & KEPT) | libc::EPOLLEXCLUSIVE as u32,
                token,
            };
            ctl(epfd, Op::Del, fd)?;
            match exclusive.add() {
                Ok(()) => Ok(Some(exclusive)),
                Err(e) => {
                    tracing::debug!("EPOLLEXCLUSIVE refused ({e}); keeping tokio's registration");
                    // Put back what was there, so the listener still reports connections.
                    ctl(epfd, Op::Add(events, token), fd)?;
                    Ok(None)
                }
            }
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            let _ = listener;
            Ok(None)
        }
    }

    /// Takes the listener out of the epoll set until the returned guard drops, which puts it
    /// back; connections meanwhile wake the other workers. A connection already queued when
    /// it comes back is reported at once (`EPOLL_CTL_ADD` polls the socket).
    pub fn stand_aside(&self) -> StandAside<'_> {
        match ctl(self.epfd, Op::Del, self.fd) {
            Ok(()) => StandAside(Some(self)),
            Err(e) => {
                tracing::warn!("could not take the listener out of the epoll set: {e}");
                StandAside(None)
            }
        }
    }

    /// Registers the listener again, which puts this worker last among those the kernel
    /// considers for the next exclusive wake-up: it walks the listener's wait queue from the
    /// front, and a new registration joins at the back.
    pub fn go_last(&self) {
        drop(self.stand_aside());
    }

    fn add(&self) -> io::Result<()> {
        ctl(self.epfd, Op::Add(self.events, self.token), self.fd)
    }
}

/// A listener out of the epoll set; see [`Exclusive::stand_aside`].
#[must_use = "the listener goes back into the epoll set when this drops"]
pub(crate) struct StandAside<'a>(Option<&'a Exclusive>);

impl Drop for StandAside<'_> {
    fn drop(&mut self) {
        if let Some(exclusive) = self.0 {
            if let Err(e) = exclusive.add() {
                // Not expected (the fd is open and was in the set a moment ago). Without its
                // registration this worker stops accepting on the listener; the others go on.
                tracing::error!("could not put the listener back into the epoll set: {e}");
            }
        }
    }
}

/// What the exclusive registration keeps of tokio's: the kernel refuses anything but
/// `EPOLLIN`, `EPOLLOUT`, `EPOLLERR`, `EPOLLHUP`, `EPOLLWAKEUP` and `EPOLLET` beside the flag
/// (its `EPOLLEXCLUSIVE_OK_BITS`), and a listener has no use for `EPOLLOUT`.
#[cfg(any(target_os = "linux", target_os = "android"))]
const KEPT: u32 = (libc::EPOLLIN | libc::EPOLLERR | libc::EPOLLHUP | libc::EPOLLET) as u32;

/// An epoll_ctl(2) operation.
#[derive(Clone, Copy)]
#[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
enum Op {
    Add(u32, u64),
    Del,
}

/// epoll_ctl(2): adds `fd` to `epfd`'s set with events and token, or deletes it.
fn ctl(epfd: RawFd, op: Op, fd: RawFd) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let (op, mut event) = match op {
            Op::Add(events, token) => (
                libc::EPOLL_CTL_ADD,
                libc::epoll_event { events, u64: token },
            ),
            Op::Del => (libc::EPOLL_CTL_DEL, libc::epoll_event { events: 0, u64: 0 }),
        };
        // SAFETY: epoll_ctl(2) on fds this process holds open, with an event that lives across
        // the call (the kernel ignores it for a delete).
        if unsafe { libc::epoll_ctl(epfd, op, fd, &mut event) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (epfd, op, fd);
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// The epoll fd of this process that has `fd` registered, with the registration's events and
/// token: `(epfd, events, token)`. None when there is not exactly one (said at DEBUG).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn find_registration(fd: RawFd) -> Option<(RawFd, u32, u64)> {
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(format!("/proc/self/fd/{fd}")).ok()?.ino();
    let found: Vec<_> = match registrations_of(fd) {
        Ok(all) => all
            .into_iter()
            .filter(|(_, r)| r.inode == inode)
            .map(|(epfd, r)| (epfd, r.events, r.token))
            .collect(),
        Err(e) => {
            tracing::debug!("EPOLLEXCLUSIVE not set: /proc/self/fd: {e}");
            return None;
        }
    };
    match found[..] {
        [one] => Some(one),
        _ => {
            tracing::debug!(
                "EPOLLEXCLUSIVE not set: fd {fd} is registered in {} epoll instances (or with different tokens), not one",
                found.len()
            );
            None
        }
    }
}

/// Every registration of `fd` in this process's epoll instances, each with an epoll fd that
/// reaches it, from /proc/self/fdinfo. Each shows once: mio keeps a duplicate of its epoll fd
/// (`Registry::try_clone`), two fds of one instance that list the same registration, and
/// either fd serves.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn registrations_of(fd: RawFd) -> io::Result<Vec<(RawFd, Registration)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")?.flatten() {
        let is_epoll = std::fs::read_link(entry.path())
            .is_ok_and(|link| link.as_os_str() == "anon_inode:[eventpoll]");
        let Some(epfd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if !is_epoll {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{epfd}")) else {
            continue;
        };
        found.extend(
            registrations(&info)
                .filter(|r| r.fd == fd)
                .map(|r| (epfd, r)),
        );
    }
    found.sort_unstable_by_key(|(epfd, r)| (r.token, r.events, r.inode, *epfd));
    found.dedup_by_key(|(_, r)| (r.token, r.events, r.inode));
    Ok(found)
}

/// One `tfd:` line of an epoll fd's fdinfo (fs/eventpoll.c `ep_show_fdinfo`):
/// `tfd: %8d events: %8x data: %16llx  pos:%lli ino:%lx sdev:%x`.
#[cfg(any(target_os = "linux", target_os = "android"))]
#[derive(Debug, PartialEq)]
struct Registration {
    fd: RawFd,
    events: u32,
    token: u64,
    inode: u64,
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn registrations(fdinfo: &str) -> impl Iterator<Item = Registration> + '_ {
    fdinfo.lines().filter_map(|line| {
        let mut words = line.split_whitespace();
        if words.next()? != "tfd:" {
            return None;
        }
        let fd = words.next()?.parse().ok()?;
        let mut events = None;
        let mut token = None;
        let mut inode = None;
        while let Some(word) = words.next() {
            match word {
                "events:" => events = u32::from_str_radix(words.next()?, 16).ok(),
                "data:" => token = u64::from_str_radix(words.next()?, 16).ok(),
                _ => {
                    if let Some(hex) = word.strip_prefix("ino:") {
                        inode = u64::from_str_radix(hex, 16).ok();
                    }
                }
            }
        }
        Some(Registration {
            fd,
            events: events?,
            token: token?,
            inode: inode?,
        })
    })
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, AsRawFd};
    use std::time::Duration;

    #[test]
    fn fdinfo_lines_parse() {
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1057\n\
                    tfd:        7 events: 8000201d data:     55d1c2a0b4c0  pos:0 ino:2b1f sdev:8\n\
                    tfd:       12 events:       19 data:                c  pos:0 ino:2b22 sdev:8\n";
        let all: Vec<_> = registrations(info).collect();
        assert_eq!(
            all,
            [
                Registration {
                    fd: 7,
                    events: 0x8000_201d,
                    token: 0x55d1_c2a0_b4c0,
                    inode: 0x2b1f
                },
                Registration {
                    fd: 12,
                    events: 0x19,
                    token: 0xc,
                    inode: 0x2b22
                },
            ]
        );
    }

    /// The listener's registrations as this process's fdinfo shows them.
    fn shown(fd: RawFd) -> Vec<Registration> {
        registrations_of(fd)
            .unwrap()
            .into_iter()
            .map(|(_, r)| r)
            .collect()
    }

    #[test]
    fn a_listener_tokio_registered_is_made_exclusive_and_still_reports_connections() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            std.set_nonblocking(true).unwrap();
            let addr = std.local_addr().unwrap();
            let listener = tokio::net::TcpListener::from_std(std).unwrap();
            let fd = listener.as_raw_fd();
            let before = shown(fd);
            assert_eq!(before.len(), 1, "tokio registered the listener once");

            let exclusive = Exclusive::take_over(listener.as_fd())
                .unwrap()
                .expect("made exclusive");
            let after = shown(fd);
            assert_eq!(after.len(), 1);
            assert_ne!(after[0].events & libc::EPOLLEXCLUSIVE as u32, 0);
            assert_eq!(after[0].token, before[0].token, "tokio's token kept");

            // tokio still hears about a connection.
            let client = std::net::TcpStream::connect(addr).unwrap();
            let (_conn, peer) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
                .await
                .expect("accepted")
                .unwrap();
            assert_eq!(peer, client.local_addr().unwrap());

            // Standing aside takes it out of the set; a connection that comes meanwhile is
            // reported once it is back.
            {
                let _aside = exclusive.stand_aside();
                assert!(shown(fd).is_empty(), "out of the epoll set");
                let _second = std::net::TcpStream::connect(addr).unwrap();
                // Let the runtime poll: readiness must not come from a listener out of the set.
                // (tokio may still hold readiness from before; accept then finds the queue.)
                tokio::task::yield_now().await;
            }
            assert_eq!(shown(fd).len(), 1, "back in the epoll set");
            tokio::time::timeout(Duration::from_secs(5), listener.accept())
                .await
                .expect("the connection queued while aside is accepted")
                .unwrap();
        });
    }
}
