//! The control socket: a Unix socket (mode 0600) that takes one command line per connection
//! (`status`, `reload`, `stop`, `incr`, `decr`: the words are `master/command.rs`'s table)
//! and writes back the master's answer. `forklift status|reload|stop --control PATH` is its
//! client; so is [`control`].

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// The master's end: a listening Unix socket that only its owner may use.
#[derive(Debug)]
pub(crate) struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    /// Whether this master removes the socket file when it goes: not while a new master
    /// it handed the socket to serves on it, nor before this one has taken over.
    owns_path: bool,
}

impl ControlSocket {
    pub fn bind(path: &Path) -> Result<ControlSocket> {
        let fail = |e: io::Error| Error::io(format!("control socket {}", path.display()), e);
        if path.exists() {
            // A socket left by a dead master is stale; one that answers belongs to a live one.
            match UnixStream::connect(path) {
                Ok(_) => {
                    return Err(Error::AddrInUse {
                        addr: format!("control socket {}", path.display()),
                    })
                }
                Err(_) => crate::sys::listener::remove_stale_socket(path).map_err(fail)?,
            }
        }
        let listener = UnixListener::bind(path).map_err(fail)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
        listener.set_nonblocking(true).map_err(fail)?;
        Ok(ControlSocket {
            listener,
            path: path.to_path_buf(),
            owns_path: true,
        })
    }

    /// The control socket a previous master handed over (binary upgrade). Its file becomes
    /// this master's to remove once it has taken over ([`adopt`](Self::adopt)).
    pub fn inherited(listener: UnixListener, path: &Path) -> Result<ControlSocket> {
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io(format!("control socket {}", path.display()), e))?;
        Ok(ControlSocket {
            listener,
            path: path.to_path_buf(),
            owns_path: false,
        })
    }

    /// The socket as an fd to hand to the next master.
    pub fn handover_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Keep the file: the next master serves on it now.
    pub fn hand_over(&mut self) {
        self.owns_path = false;
    }

    /// This master took over: the file is its own.
    pub fn adopt(&mut self) {
        self.owns_path = true;
    }

    pub fn fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Accepts the waiting connections and reads each one's command line (what it means is
    /// `master/command.rs`'s business). Clients write their command at once; one that does
    /// not within a second gets `None`.
    pub fn accept(&self) -> Vec<(UnixStream, Option<String>)> {
        let mut out = Vec::new();
        while let Ok((stream, _)) = self.listener.accept() {
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let mut line = String::new();
            let command = match BufReader::new(&stream).take(256).read_line(&mut line) {
                Ok(_) => Some(line),
                Err(_) => None,
            };
            out.push((stream, command));
        }
        out
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if self.owns_path {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes a reply and closes the connection.
pub(crate) fn reply(mut stream: UnixStream, text: &str) {
    let _ = stream.write_all(text.as_bytes());
}

/// Sends `command` (`status`, `reload`, `stop`, `incr`, `decr`) to the master listening on the
/// control socket at `path`, and returns its answer.
///
/// # Errors
/// If nothing answers at `path`.
///
/// ```no_run
/// print!("{}", forklift::control("/run/app/forklift.ctl", "status")?);
/// # Ok::<(), forklift::Error>(())
/// ```
pub fn control(path: impl AsRef<Path>, command: &str) -> Result<String> {
    let path = path.as_ref();
    let mut stream = UnixStream::connect(path).map_err(|e| {
        Error::io(
            format!(
                "cannot reach a forklift master at {} (is it running with this control socket?)",
                path.display()
            ),
            e,
        )
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .and_then(|()| stream.write_all(format!("{command}\n").as_bytes()))
        .map_err(|e| Error::io(format!("control socket {}", path.display()), e))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| Error::io(format!("control socket {}", path.display()), e))?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_is_private_and_removed_on_drop() {
        let path = std::env::temp_dir().join(format!("forklift-ctl-{}.sock", std::process::id()));
        let ctl = ControlSocket::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A second master on the same path is refused while the first answers.
        assert!(ControlSocket::bind(&path).is_err());
        drop(ctl);
        assert!(!path.exists());
    }
}
