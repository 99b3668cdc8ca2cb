//! Relaying a worker's stdout and stderr through the master, line by line, optionally
//! prefixed with the worker: the master is the only writer, so lines from several workers
//! never interleave mid-line.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use crate::sys::fd;

/// The longest partial line kept before it is written out anyway.
const MAX_LINE: usize = 64 * 1024;

/// The master's read end of one worker stream.
#[derive(Debug)]
pub(crate) struct Relay {
    read: File,
    buf: Vec<u8>,
    to_stderr: bool,
    prefix: String,
}

impl Relay {
    /// A pipe whose write end becomes the worker's stdout (or stderr).
    pub fn pipe(to_stderr: bool) -> io::Result<(Relay, OwnedFd)> {
        // Both ends close-on-exec: the exec path duplicates the write end onto the child's
        // stdout or stderr, and only that copy survives exec.
        let (read, write) = fd::pipe_cloexec()?;
        fd::set_nonblocking(read.as_fd())?;
        Ok((
            Relay {
                read: File::from(read),
                buf: Vec::new(),
                to_stderr,
                prefix: String::new(),
            },
            write,
        ))
    }

    pub fn set_prefix(&mut self, prefix: String) {
        self.prefix = prefix;
    }

    pub fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// Reads what the worker wrote and relays every complete line. Returns false at end of
    /// file (after relaying a last partial line).
    pub fn pump(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        let open = loop {
            match self.read.read(&mut chunk) {
                Ok(0) => break false,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break true,
                Err(_) => break false,
            }
        };
        let mut lines = Vec::new();
        while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            lines.extend_from_slice(self.prefix.as_bytes());
            lines.extend_from_slice(&line);
        }
        if (!open || self.buf.len() > MAX_LINE) && !self.buf.is_empty() {
            lines.extend_from_slice(self.prefix.as_bytes());
            lines.append(&mut self.buf);
            lines.push(b'\n');
        }
        if !lines.is_empty() {
            // One write of whole lines: nothing else writes these streams mid-line.
            let _ = if self.to_stderr {
                io::stderr().lock().write_all(&lines)
            } else {
                let mut out = io::stdout().lock();
                out.write_all(&lines).and_then(|()| out.flush())
            };
        }
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pump_reports_end_of_file() {
        let (mut relay, write) = Relay::pipe(true).unwrap();
        relay.set_prefix("[test] ".into());
        let mut w = File::from(write);
        w.write_all(b"one\ntw").unwrap();
        assert!(relay.pump());
        assert_eq!(relay.buf, b"tw");
        drop(w);
        assert!(!relay.pump());
        assert!(relay.buf.is_empty());
    }
}
