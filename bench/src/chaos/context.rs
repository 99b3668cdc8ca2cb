//! What every scenario is given: the binary under test, where logs go, the mode.

use std::path::PathBuf;

pub struct Ctx {
    /// The forklift binary under test.
    pub bin: PathBuf,
    pub repo: PathBuf,
    /// target/chaos-logs: one log per server.
    pub logs: PathBuf,
    pub quick: bool,
    pub fuzz_seconds: f64,
    pub fuzz_engine: String,
    /// This process's RLIMIT_NOFILE soft limit after raising it.
    pub nofile: u64,
}

impl Ctx {
    /// The quick mode's value or the full mode's.
    pub fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

/// Raises this process's open-file limit to `want` (the hard limit too, as root); returns
/// the soft limit in force.
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        let mut new = lim;
        if new.rlim_max < want {
            new.rlim_max = want;
        }
        new.rlim_cur = want.min(new.rlim_max);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &new) != 0 {
            new = lim;
            new.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &new);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}
