//! What the TLS and HTTP/2 workloads (tls-ka, tls-resume, tls-full, h2, h2c) need besides the
//! servers and the load generators: the run's certificate, nginx's config, the wrk shim that
//! counts (or prevents) session resumption, and the curl probe that checks each server speaks
//! the protocol the workload asks for.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// nginx's config for these workloads, filled in by [`nginx_conf`].
pub const NGINX_TLS_CONF: &str = include_str!("../peers/nginx-tls.conf.in");
/// The LD_PRELOAD shim for wrk, built by [`build_shim`].
const SHIM_SOURCE: &str = include_str!("../peers/tls-sessions.c");

/// Where the shim writes its counts when wrk exits.
pub const COUNTS_ENV: &str = "FORKLIFT_BENCH_TLS_COUNTS";
/// Set to 1, the shim makes wrk forget its session before each new connection.
pub const NO_RESUME_ENV: &str = "FORKLIFT_BENCH_TLS_NO_RESUME";

/// nginx's session lines: tickets (keys made by the master before it forks, so every worker
/// opens every ticket) and a session cache shared by the workers, as production configs have.
pub const NGINX_SESSIONS_ON: &str =
    "    ssl_session_tickets on;\n    ssl_session_cache shared:SSL:10m;\n    ssl_session_timeout 1h;";
/// tls-full: nginx refuses resumption.
pub const NGINX_SESSIONS_OFF: &str = "    ssl_session_tickets off;\n    ssl_session_cache off;";

/// The run's certificate and key and the shim, under the log directory.
#[derive(Debug, Clone)]
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// tls-sessions.so, for wrk's LD_PRELOAD.
    pub shim: PathBuf,
}

impl Files {
    /// The paths under `dir` (nothing is written).
    pub fn under(dir: &Path) -> Files {
        Files {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            shim: dir.join("tls-sessions.so"),
        }
    }
}

/// Makes an ECDSA P-256 self-signed certificate for 127.0.0.1 and localhost with openssl,
/// the one both servers serve in this run.
pub fn make_certificate(files: &Files) -> Result<(), String> {
    if let Some(dir) = files.cert.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:P-256")
        .args(["-nodes", "-days", "7", "-subj", "/CN=localhost", "-addext"])
        .arg("subjectAltName=DNS:localhost,IP:127.0.0.1")
        .arg("-keyout")
        .arg(&files.key)
        .arg("-out")
        .arg(&files.cert)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run openssl (apt-get install openssl): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Builds bench/peers/tls-sessions.c into `files.shim` with cc.
pub fn build_shim(files: &Files) -> Result<(), String> {
    let dir = files.shim.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let src = dir.join("tls-sessions.c");
    std::fs::write(&src, SHIM_SOURCE).map_err(|e| format!("{}: {e}", src.display()))?;
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&files.shim)
        .arg(&src)
        .arg("-ldl")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run cc (apt-get install gcc): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cc tls-sessions.c failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Fills in nginx-tls.conf.in.
pub fn nginx_conf(
    port: u16,
    listen_opts: &str,
    sessions: &str,
    rundir: &Path,
    files: &Files,
) -> String {
    NGINX_TLS_CONF
        .replace("@PORT@", &port.to_string())
        .replace("@LISTEN_OPTS@", listen_opts)
        .replace("@SESSION@", sessions)
        .replace("@RUNDIR@", &rundir.display().to_string())
        .replace("@CERT@", &files.cert.display().to_string())
        .replace("@KEY@", &files.key.display().to_string())
}

/// How a probe talks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTPS, HTTP/1.1 by ALPN.
    Https1,
    /// HTTPS, HTTP/2 by ALPN.
    H2,
    /// Cleartext HTTP/2 by prior knowledge.
    H2c,
}

/// `GET /` with curl in `proto`: the body and the HTTP version curl used ("1.1", "2").
pub fn curl_get(
    proto: Proto,
    port: u16,
    cert: &Path,
    timeout: Duration,
) -> Result<(String, String), String> {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time"])
        .arg(format!("{:.1}", timeout.as_secs_f64()))
        .args(["-w", "\n%{http_code} %{http_version}"]);
    let url = match proto {
        Proto::Https1 => {
            c.arg("--http1.1").arg("--cacert").arg(cert);
            format!("https://127.0.0.1:{port}/")
        }
        Proto::H2 => {
            c.arg("--http2").arg("--cacert").arg(cert);
            format!("https://127.0.0.1:{port}/")
        }
        Proto::H2c => {
            c.arg("--http2-prior-knowledge");
            format!("http://127.0.0.1:{port}/")
        }
    };
    let out = c
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run curl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "curl: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (code, version) = tail.split_once(' ').unwrap_or((tail, ""));
    if code != "200" {
        return Err(format!("curl: status {code}"));
    }
    Ok((body.to_string(), version.to_string()))
}

/// Does the server answer `GET /` with the greeting in `proto`?
pub fn check(proto: Proto, port: u16, cert: &Path) -> Result<(), String> {
    let (body, version) = curl_get(proto, port, cert, Duration::from_secs(5))?;
    let want = match proto {
        Proto::Https1 => "1.1",
        Proto::H2 | Proto::H2c => "2",
    };
    if body != "greeting!!!" || version != want {
        return Err(format!(
            "GET / ({proto:?}) answered {body:?} in HTTP/{version}, not \"greeting!!!\" in HTTP/{want}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nginx_config_is_what_the_issue_asks_for() {
        for line in [
            "worker_processes 2;",
            "keepalive_requests 10000;",
            "access_log off;",
            "ssl_certificate     @CERT@;",
            "ssl_certificate_key @KEY@;",
            "listen 127.0.0.1:@PORT@@LISTEN_OPTS@;",
            "return 200 \"greeting!!!\";",
            "@SESSION@",
        ] {
            assert!(NGINX_TLS_CONF.contains(line), "{line}");
        }
        let files = Files::under(Path::new("/t"));
        let conf = nginx_conf(
            20_001,
            " ssl http2",
            NGINX_SESSIONS_ON,
            Path::new("/r"),
            &files,
        );
        assert!(conf.contains("listen 127.0.0.1:20001 ssl http2;"), "{conf}");
        assert!(conf.contains("ssl_session_tickets on;"));
        assert!(conf.contains("ssl_session_cache shared:SSL:10m;"));
        assert!(conf.contains("ssl_certificate     /t/cert.pem;"));
        assert!(conf.contains("pid /r/nginx.pid;"));
        assert!(!conf.contains('@'), "{conf}");
        let conf = nginx_conf(
            20_001,
            " http2",
            NGINX_SESSIONS_OFF,
            Path::new("/r"),
            &files,
        );
        assert!(conf.contains("ssl_session_tickets off;"));
        assert!(conf.contains("ssl_session_cache off;"));
    }
}
