//! `forklift serve --single-process`: the demo handler on one multi-thread tokio runtime, in
//! one process. The baseline the seeds call "non-prefork", kept so the benchmark can compare
//! prefork against it with everything else equal (handler, hyper settings, backlog).

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::signal::unix::{signal, SignalKind};

use forklift::{BoxError, ListenAddr, Listener};

/// Serves the demo on `addrs` with `threads` runtime threads until TERM, QUIT or INT.
pub fn serve(
    addrs: &[String],
    threads: usize,
    backlog: u32,
    graceful_timeout: Duration,
    header_read_timeout: Duration,
) -> Result<(), BoxError> {
    let mut listeners = Vec::new();
    for a in addrs {
        let addr: ListenAddr = a.parse()?;
        match Listener::bind(&addr, backlog)? {
            Listener::Tcp(l) => listeners.push(l),
            _ => return Err(format!("--single-process serves TCP only, not {addr}").into()),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut tcp = Vec::new();
        for l in listeners {
            l.set_nonblocking(true)?;
            let l = tokio::net::TcpListener::from_std(l)?;
            crate::say!("listening on http://{}", l.local_addr()?);
            tcp.push(l);
        }
        crate::say!("ready pids={}", std::process::id());
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout);
        let builder = Arc::new(builder);
        let graceful = Arc::new(GracefulShutdown::new());
        let worker = http::HeaderValue::from(std::process::id());
        let accepts: Vec<_> = tcp
            .into_iter()
            .map(|l| {
                tokio::spawn(accept_loop(
                    l,
                    builder.clone(),
                    graceful.clone(),
                    worker.clone(),
                ))
            })
            .collect();
        let mut term = signal(SignalKind::terminate())?;
        let mut quit = signal(SignalKind::quit())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = quit.recv() => {}
            _ = int.recv() => return Ok(()),
        }
        for a in accepts {
            a.abort();
            let _ = a.await;
        }
        if let Ok(graceful) = Arc::try_unwrap(graceful) {
            let _ = tokio::time::timeout(graceful_timeout, graceful.shutdown()).await;
        }
        Ok(())
    })
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    builder: Arc<auto::Builder<TokioExecutor>>,
    graceful: Arc<GracefulShutdown>,
    worker: http::HeaderValue,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let (builder, watcher, worker) =
                    (builder.clone(), graceful.watcher(), worker.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        crate::demo(req.map(forklift::Body::from), worker.clone(), false)
                    });
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!("connection ended with an error: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
