//! The document root of the static workloads: the files forklift (`serve --dir`) and nginx
//! (bench/peers/nginx-static.conf.in) serve, made afresh by each run in its log directory.

use std::io;
use std::path::{Path, PathBuf};

/// A file of the document root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct File {
    pub name: &'static str,
    pub len: usize,
}

/// static-small's file, and the one each idle connection asks for once.
pub const SMALL: File = File {
    name: "4k.bin",
    len: 4096,
};

/// static-big's file.
pub const BIG: File = File {
    name: "1m.bin",
    len: 1024 * 1024,
};

/// Every file of the document root.
pub const FILES: [File; 2] = [SMALL, BIG];

impl File {
    /// Its URL path, `/4k.bin`.
    pub fn path(self) -> String {
        format!("/{}", self.name)
    }
}

/// Writes [`FILES`] of random bytes (nothing a server could compress or dedupe) into
/// `dir/docroot`, replacing what a previous run left there, and returns that directory.
pub fn create(dir: &Path) -> io::Result<PathBuf> {
    let root = dir.join("docroot");
    std::fs::create_dir_all(&root)?;
    let mut rng = XorShift::seeded();
    for f in FILES {
        std::fs::write(root.join(f.name), rng.bytes(f.len))?;
    }
    Ok(root)
}

/// xorshift64*: random enough for file contents, without a dependency.
struct XorShift(u64);

impl XorShift {
    fn seeded() -> XorShift {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        // The state must not be zero.
        XorShift((nanos ^ (u64::from(std::process::id()) << 32)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(len);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_the_files_at_their_sizes_with_random_contents() {
        let dir =
            std::env::temp_dir().join(format!("forklift-bench-docroot-{}", std::process::id()));
        let root = create(&dir).unwrap();
        assert_eq!(root, dir.join("docroot"));
        for f in FILES {
            let bytes = std::fs::read(root.join(f.name)).unwrap();
            assert_eq!(bytes.len(), f.len, "{}", f.name);
            // Random: every byte value shows up in 4 KiB (a zero-filled file would not).
            let mut seen = [false; 256];
            for b in &bytes {
                seen[*b as usize] = true;
            }
            assert!(seen.iter().filter(|s| **s).count() > 200, "{}", f.name);
        }
        assert_eq!(SMALL.path(), "/4k.bin");
        // A second run replaces the files.
        let before = std::fs::read(root.join(SMALL.name)).unwrap();
        create(&dir).unwrap();
        assert_ne!(std::fs::read(root.join(SMALL.name)).unwrap(), before);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
