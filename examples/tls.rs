//! HTTPS from certificate bytes held in memory (fasthttp's `ListenAndServeTLSEmbed`), with
//! HTTP/2 offered by ALPN.
//!
//! Shows `Prefork::tls_pem`. The example makes a self-signed certificate for `localhost` at
//! start (with rcgen), so it needs no files; a real server would embed its PEM bytes with
//! `include_bytes!` or fetch them from a secret store. For certificates in files, use
//! `Prefork::tls_files` (or `forklift serve --tls-cert PATH --tls-key PATH`), which re-reads
//! them whenever a worker starts.
//!
//! ```text
//! cargo run --example tls --features tls -- 127.0.0.1:8443
//! curl -k --http2 https://127.0.0.1:8443/
//! ```

use std::convert::Infallible;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response};

async fn hello(req: Request<forklift::Body>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = format!(
        "hello over {:?} from worker pid {}\n",
        req.version(),
        std::process::id()
    );
    Ok(Response::new(Full::new(Bytes::from(body))))
}

fn main() -> forklift::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8443".to_string());
    // In exec mode this would run again in each worker, making a different certificate per
    // worker; fork mode (the default) shares the master's bytes.
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()])
        .map_err(|e| forklift::Error::Tls(e.to_string()))?;
    let (cert_pem, key_pem) = (made.cert.pem(), made.signing_key.serialize_pem());
    forklift::Prefork::new()
        .listen(&addr)?
        .tls_pem(cert_pem, key_pem)
        .on_event(|event| {
            if let forklift::Event::Listening { addresses } = event {
                println!("listening on https://{}", addresses.join(", https://"));
            }
        })
        .serve(|| service_fn(hello))
}
