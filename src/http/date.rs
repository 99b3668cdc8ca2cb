//! The `Date` header value, formatted once a second per thread (as hyper caches it).

use std::cell::RefCell;
use std::time::{Duration, UNIX_EPOCH};

/// An IMF-fixdate is always this long: `Sun, 06 Nov 1994 08:49:37 GMT`.
const LEN: usize = 29;

thread_local! {
    static CACHED: RefCell<(u64, [u8; LEN])> = const { RefCell::new((u64::MAX, [0; LEN])) };
}

/// Appends the current date, as an HTTP `Date` header value, to `dst`.
pub(crate) fn extend(dst: &mut Vec<u8>) {
    let secs = unix_seconds();
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            let text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
            if text.len() == LEN {
                cached.1.copy_from_slice(text.as_bytes());
                cached.0 = secs;
            } else {
                dst.extend_from_slice(text.as_bytes());
                return;
            }
        }
        dst.extend_from_slice(&cached.1);
    });
}

/// Seconds since the epoch. Called once per response: on Linux from the coarse clock, which
/// the kernel updates every tick (1-10 ms) and the vDSO reads without touching the hardware
/// clock; a Date header has one-second resolution.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn unix_seconds() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } == 0 {
        return u64::try_from(ts.tv_sec).unwrap_or(0);
    }
    precise_unix_seconds()
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn unix_seconds() -> u64 {
    precise_unix_seconds()
}

fn precise_unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    #[test]
    fn date_is_an_imf_fixdate_of_now() {
        let mut out = Vec::new();
        super::extend(&mut out);
        let text = std::str::from_utf8(&out).unwrap();
        let parsed = httpdate::parse_http_date(text).unwrap();
        let skew = std::time::SystemTime::now()
            .duration_since(parsed)
            .unwrap_or_default();
        assert!(skew.as_secs() <= 2, "{text}");
        assert!(text.ends_with(" GMT") && text.len() == 29, "{text}");
    }

    #[test]
    fn the_coarse_clock_agrees_with_the_precise_one() {
        let precise = super::precise_unix_seconds();
        let coarse = super::unix_seconds();
        assert!(precise.abs_diff(coarse) <= 1, "{precise} {coarse}");
    }
}
