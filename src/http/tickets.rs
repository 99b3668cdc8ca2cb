//! TLS session tickets that every worker can open, so a client resumes its session whichever
//! worker (or whichever generation, after a reload or an upgrade) takes its next connection.
//!
//! A per-process session cache or ticket key resumes only when the client lands on the worker
//! that served it before: 1 time in N with N workers, never after a reload. nginx shares its
//! ticket keys by making them before it forks; forklift does the same, and carries them over
//! exec'd workers and binary upgrades:
//!
//! - The master makes one random secret before it spawns any worker (or takes the previous
//!   master's after a USR2 upgrade, from an inherited pipe named `forklift.tls-tickets`).
//!   A forked worker has it in memory; an exec'd worker reads it as the first line on its
//!   status channel (announced by `FORKLIFT_TLS_TICKETS=channel`). It never travels in the
//!   environment or on a command line.
//! - With a ticket key file (`--tls-ticket-key-file`, nginx's `ssl_session_ticket_key`) the
//!   secret is that file's bytes instead, read by each worker as it boots: hosts that share the
//!   file resume each other's tickets, and a reload picks up a new file.
//!
//! Keys rotate without any message: the key of epoch `N = unix_time / period` is
//! HKDF-SHA256(secret, N), so every process with the secret derives the same current key.
//! Tickets are sealed with the current epoch's key (AES-256-GCM, a random nonce) and carry
//! their epoch; a ticket from the previous epoch (or the next: a fleet's clocks differ by a
//! little) still opens, an older one does not and the client gets a full handshake. The
//! ticket lifetime told to clients is the period. Deriving the key per ticket costs two
//! HMACs, noise beside a handshake, and keeps no expanded key around longer than needed.
//!
//! The secret is zeroed when dropped; the expanded AES key of each ticket lives in aws-lc for
//! that ticket only.

use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, NONCE_LEN};
use aws_lc_rs::hkdf;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use tracing::{debug, info};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::worker::Worker;

/// The shortest secret forklift takes, from a key file or a previous master.
pub(crate) const MIN_SECRET_LEN: usize = 32;

/// The default period of key rotation (and the ticket lifetime told to clients).
pub(crate) const DEFAULT_ROTATION: Duration = Duration::from_secs(3600);

/// The first bytes of a ticket: a format version. Bumped if the layout ever changes.
const VERSION: u8 = 1;
/// Version, epoch (u64, big-endian), nonce: the ticket's clear prefix, also its AAD.
const HEADER_LEN: usize = 1 + 8 + NONCE_LEN;
const HKDF_SALT: &[u8] = b"forklift tls session tickets v1";

/// The first bytes of the line that gives an exec'd worker the secret on its status channel.
pub(crate) const CHANNEL_PREFIX: &[u8] = b"tls-tickets ";

/// The secret every ticket key derives from; zeroed on drop, never printed.
#[derive(Clone)]
pub(crate) struct Secret(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

impl Secret {
    /// 32 random bytes from the system's generator.
    pub(crate) fn random() -> Result<Secret> {
        let mut bytes = Zeroizing::new(vec![0u8; 32]);
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| Error::Tls("the system random generator failed".into()))?;
        Ok(Secret(bytes))
    }

    /// Takes `bytes` as a secret if they are long enough; `from` names them in the error.
    fn from_bytes(bytes: Zeroizing<Vec<u8>>, from: &str) -> Result<Secret> {
        if bytes.len() < MIN_SECRET_LEN {
            return Err(Error::Tls(format!(
                "{from} holds {} bytes; a TLS ticket key needs at least {MIN_SECRET_LEN} \
                 random bytes (make one with `openssl rand 80 > FILE`)",
                bytes.len()
            )));
        }
        Ok(Secret(bytes))
    }

    /// Reads a ticket key file (nginx's `ssl_session_ticket_key`): its bytes, at least 32.
    pub(crate) fn from_file(path: &Path) -> Result<Secret> {
        let mut bytes = Zeroizing::new(Vec::new());
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| {
                Error::Tls(format!(
                    "cannot read the TLS ticket key file {}: {e}",
                    path.display()
                ))
            })?;
        Secret::from_bytes(
            bytes,
            &format!("the TLS ticket key file {}", path.display()),
        )
    }

    fn to_hex(&self) -> Zeroizing<Vec<u8>> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = Zeroizing::new(Vec::with_capacity(self.0.len() * 2));
        for b in self.0.iter() {
            out.push(DIGITS[usize::from(b >> 4)]);
            out.push(DIGITS[usize::from(b & 15)]);
        }
        out
    }

    fn from_hex(hex: &[u8]) -> Option<Secret> {
        if !hex.len().is_multiple_of(2) {
            return None;
        }
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let mut out = Zeroizing::new(Vec::with_capacity(hex.len() / 2));
        for pair in hex.chunks(2) {
            out.push(digit(pair[0])? << 4 | digit(pair[1])?);
        }
        Some(Secret(out))
    }
}

// ---- The master's secret, and how it reaches workers and the next master ----

/// Set in the master by `serve` with TLS: only then does it make, send and hand over a secret.
static IN_USE: AtomicBool = AtomicBool::new(false);
/// The master's secret, made before any worker starts (a forked worker has it in memory).
static MASTER_SECRET: OnceLock<Secret> = OnceLock::new();

/// Called by `serve` in the master when it serves TLS with shared (not file) ticket keys.
pub(crate) fn use_master_secret() {
    IN_USE.store(true, Ordering::Relaxed);
}

/// At master start-up, before any worker: takes the previous master's secret from the pipe a
/// binary upgrade handed over, or makes one. Does nothing unless TLS is served.
///
/// # Errors
/// If the handed-over secret cannot be read or is too short, or no random bytes are to be had.
pub(crate) fn settle_master_secret(inherited: Option<OwnedFd>) -> Result<()> {
    if !IN_USE.load(Ordering::Relaxed) || MASTER_SECRET.get().is_some() {
        return Ok(());
    }
    let secret = match inherited {
        Some(fd) => {
            let mut bytes = Zeroizing::new(Vec::new());
            std::fs::File::from(fd)
                .read_to_end(&mut bytes)
                .map_err(|e| {
                    Error::io("reading the TLS ticket secret of the previous master", e)
                })?;
            let secret = Secret::from_bytes(bytes, "the previous master's ticket pipe")?;
            info!("TLS session tickets: keys shared with the previous master");
            secret
        }
        None => Secret::random()?,
    };
    let _ = MASTER_SECRET.set(secret);
    Ok(())
}

/// The master's secret, if it serves TLS with shared ticket keys.
fn master_secret() -> Option<&'static Secret> {
    MASTER_SECRET.get()
}

/// For a binary upgrade: a pipe holding the secret, whose read end the new master inherits
/// (named [`TICKETS_FD_NAME`](crate::sys::listener::TICKETS_FD_NAME)). `None` without TLS.
///
/// # Errors
/// If the pipe cannot be made or written.
pub(crate) fn handover_pipe() -> io::Result<Option<OwnedFd>> {
    let Some(secret) = master_secret() else {
        return Ok(None);
    };
    let (read, write) = crate::sys::fd::pipe_cloexec()?;
    // A pipe holds 64 KiB at least: the write completes before anyone reads.
    io::Write::write_all(&mut std::fs::File::from(write), &secret.0)?;
    Ok(Some(read))
}

/// For a worker started by executing a command: the line its status channel starts with,
/// `None` without TLS (the caller then sets no `FORKLIFT_TLS_TICKETS`).
pub(crate) fn channel_line() -> Option<Zeroizing<Vec<u8>>> {
    let secret = master_secret()?;
    // Sized once: a reallocation would leave a copy of the secret behind.
    let mut line = Zeroizing::new(Vec::with_capacity(
        CHANNEL_PREFIX.len() + 2 * secret.0.len() + 1,
    ));
    line.extend_from_slice(CHANNEL_PREFIX);
    line.extend_from_slice(&secret.to_hex());
    line.push(b'\n');
    Some(line)
}

/// In a worker, as it boots: the secret its tickets derive from. From the key file if one is
/// set, else the master's: in memory after a fork, first on the status channel after an exec.
///
/// # Errors
/// An unreadable or short key file, or a master that announced a secret and sent none.
pub(crate) fn worker_secret(worker: &mut Worker, key_file: Option<&Path>) -> Result<Secret> {
    if let Some(path) = key_file {
        return Secret::from_file(path);
    }
    if let Some(secret) = master_secret() {
        return Ok(secret.clone());
    }
    if std::env::var(crate::protocol::ENV_TLS_TICKETS).as_deref() == Ok("channel") {
        let line = Zeroizing::new(
            worker
                .read_boot_line(Duration::from_secs(30))
                .map_err(|e| Error::io("reading the TLS ticket secret from the master", e))?,
        );
        return line
            .strip_prefix(CHANNEL_PREFIX)
            .and_then(Secret::from_hex)
            .filter(|s| s.0.len() >= MIN_SECRET_LEN)
            .ok_or_else(|| {
                Error::Tls("the master's first line is not a TLS ticket secret".into())
            });
    }
    // A worker whose master did not make one (an older master, a hand-made command):
    // tickets then resume on this worker only.
    debug!("no shared TLS ticket secret from the master: this worker's tickets are its own");
    Secret::random()
}

// ---- The ticketer ----

/// Seals and opens session tickets with keys derived from a [`Secret`]; see the module doc.
pub(crate) struct Ticketer {
    secret: Secret,
    /// The rotation period in seconds, at least 1.
    period: u64,
    random: SystemRandom,
    /// The keys of the epochs used lately (at most [`KEYS_KEPT`]): a handshake seals two
    /// tickets and may open one, and deriving a key (HKDF, then AES's key schedule) for each
    /// cost more than the sealing.
    keys: Mutex<Vec<(u64, Arc<LessSafeKey>)>>,
}

/// Keys the ticketer keeps: the current epoch's, the one before (tickets still open) and
/// the one after (a clock at an epoch's edge).
const KEYS_KEPT: usize = 3;

impl std::fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticketer")
            .field("period", &self.period)
            .finish_non_exhaustive()
    }
}

impl Ticketer {
    pub(crate) fn new(secret: Secret, period: Duration) -> Ticketer {
        Ticketer {
            secret,
            period: period.as_secs().max(1),
            random: SystemRandom::new(),
            keys: Mutex::new(Vec::with_capacity(KEYS_KEPT)),
        }
    }

    /// The key of `epoch`, derived once.
    fn key(&self, epoch: u64) -> Option<Arc<LessSafeKey>> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, key)) = keys.iter().find(|(e, _)| *e == epoch) {
            return Some(key.clone());
        }
        let key = Arc::new(self.derive(epoch)?);
        if keys.len() >= KEYS_KEPT {
            // Out goes the epoch farthest from this one.
            let far = (0..keys.len()).max_by_key(|&i| keys[i].0.abs_diff(epoch))?;
            keys.swap_remove(far);
        }
        keys.push((epoch, key.clone()));
        Some(key)
    }

    fn derive(&self, epoch: u64) -> Option<LessSafeKey> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(&self.secret.0);
        let epoch = epoch.to_be_bytes();
        let info = [&epoch[..]];
        let okm = prk.expand(&info, &aead::AES_256_GCM).ok()?;
        Some(LessSafeKey::new(aead::UnboundKey::from(okm)))
    }

    fn epoch(&self, unix_secs: u64) -> u64 {
        unix_secs / self.period
    }

    /// Seals `plain` with the key of the epoch `unix_secs` falls in.
    fn seal_at(&self, unix_secs: u64, plain: &[u8]) -> Option<Vec<u8>> {
        let epoch = self.epoch(unix_secs);
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + aead::AES_256_GCM.tag_len());
        out.push(VERSION);
        out.extend_from_slice(&epoch.to_be_bytes());
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        self.key(epoch)?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&out[..HEADER_LEN]),
                &mut body,
            )
            .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    /// Opens a ticket sealed in the epoch of `unix_secs`, the one before or the one after;
    /// `None` for anything else (too old, another secret, tampered with, not ours).
    fn open_at(&self, unix_secs: u64, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < HEADER_LEN + aead::AES_256_GCM.tag_len() || ticket[0] != VERSION {
            return None;
        }
        let epoch = u64::from_be_bytes(ticket[1..9].try_into().ok()?);
        let now = self.epoch(unix_secs);
        if epoch + 1 < now || epoch > now + 1 {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&ticket[9..HEADER_LEN]).ok()?;
        let mut body = ticket[HEADER_LEN..].to_vec();
        let plain_len = self
            .key(epoch)?
            .open_in_place(nonce, Aad::from(&ticket[..HEADER_LEN]), &mut body)
            .ok()?
            .len();
        body.truncate(plain_len);
        Some(body)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl rustls::server::ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(self.period).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal_at(unix_now(), plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open_at(unix_now(), cipher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3600;
    const NOW: u64 = 1_780_000_000;

    fn ticketer(secret: &[u8]) -> Ticketer {
        Ticketer::new(
            Secret(Zeroizing::new(secret.to_vec())),
            Duration::from_secs(HOUR),
        )
    }

    #[test]
    fn a_ticket_opens_in_every_process_with_the_secret() {
        let a = ticketer(&[7; 32]);
        let b = ticketer(&[7; 32]);
        let sealed = a.seal_at(NOW, b"session state").unwrap();
        assert_eq!(sealed[0], VERSION);
        assert_eq!(b.open_at(NOW, &sealed).unwrap(), b"session state");
        // Random nonces: the same state never seals to the same ticket.
        assert_ne!(a.seal_at(NOW, b"session state").unwrap(), sealed);
        assert_eq!(a.open_at(NOW, &a.seal_at(NOW, b"").unwrap()).unwrap(), b"");
    }

    #[test]
    fn keys_are_kept_for_three_epochs_and_rotate_on() {
        let t = ticketer(&[7; 32]);
        let fresh = ticketer(&[7; 32]);
        for epoch in 0..10 {
            let at = NOW + epoch * HOUR;
            let sealed = t.seal_at(at, b"state").unwrap();
            // The same key as a ticketer that derives it anew.
            assert_eq!(fresh.open_at(at, &sealed).unwrap(), b"state");
            assert_eq!(t.open_at(at + HOUR, &sealed).unwrap(), b"state");
            assert!(t.keys.lock().unwrap().len() <= KEYS_KEPT);
        }
        let epochs: Vec<u64> = t.keys.lock().unwrap().iter().map(|(e, _)| *e).collect();
        let last = t.epoch(NOW + 9 * HOUR);
        assert!(
            epochs.contains(&last) && epochs.contains(&(last - 1)),
            "{epochs:?}"
        );
    }

    #[test]
    fn another_secret_cannot_open_it() {
        let sealed = ticketer(&[7; 32]).seal_at(NOW, b"state").unwrap();
        assert_eq!(ticketer(&[8; 32]).open_at(NOW, &sealed), None);
    }

    #[test]
    fn a_tampered_ticket_is_refused() {
        let t = ticketer(&[7; 32]);
        let sealed = t.seal_at(NOW, b"state").unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(t.open_at(NOW, &bad), None, "byte {i} flipped");
        }
        assert_eq!(t.open_at(NOW, &sealed[..sealed.len() - 1]), None);
        assert_eq!(t.open_at(NOW, &sealed[..5]), None);
        assert_eq!(t.open_at(NOW, b""), None);
    }

    #[test]
    fn tickets_live_one_rotation_more_then_are_refused() {
        let t = ticketer(&[7; 32]);
        let start = NOW - NOW % HOUR;
        let sealed = t.seal_at(start, b"state").unwrap();
        assert!(t.open_at(start + HOUR - 1, &sealed).is_some());
        // The next epoch still opens the previous one's tickets...
        assert!(t.open_at(start + HOUR, &sealed).is_some());
        assert!(t.open_at(start + 2 * HOUR - 1, &sealed).is_some());
        // ...and no later one does.
        assert_eq!(t.open_at(start + 2 * HOUR, &sealed), None);
        assert_eq!(t.open_at(start + 50 * HOUR, &sealed), None);
        // A host a little behind opens a ticket from one epoch ahead, no further.
        assert!(t.open_at(start - 1, &sealed).is_some());
        assert_eq!(t.open_at(start - HOUR - 1, &sealed), None);
        // Each epoch has its own key: a new epoch's tickets differ in their prefix.
        let later = t.seal_at(start + HOUR, b"state").unwrap();
        assert_ne!(later[1..9], sealed[1..9]);
    }

    #[test]
    fn the_channel_encoding_round_trips_and_checks() {
        let secret = Secret(Zeroizing::new((0..=255u8).collect()));
        let back = Secret::from_hex(&secret.to_hex()).unwrap();
        assert_eq!(*back.0, *secret.0);
        assert!(Secret::from_hex(b"abc").is_none());
        assert!(Secret::from_hex(b"zz").is_none());
        assert!(!format!("{secret:?}").contains("ff"));
    }

    #[test]
    fn key_files_must_hold_enough_bytes() {
        let dir = std::env::temp_dir().join(format!("forklift-tickets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let short = dir.join("short.key");
        std::fs::write(&short, [1u8; 31]).unwrap();
        let err = Secret::from_file(&short).unwrap_err().to_string();
        assert!(
            err.contains("holds 31 bytes") && err.contains("at least 32"),
            "{err}"
        );
        let err = Secret::from_file(&dir.join("missing.key"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read the TLS ticket key file"), "{err}");
        let good = dir.join("good.key");
        std::fs::write(&good, [1u8; 80]).unwrap();
        assert_eq!(Secret::from_file(&good).unwrap().0.len(), 80);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
