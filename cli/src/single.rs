//! `forklift serve --single-process`: the demo handler on one multi-thread tokio runtime, in
//! one process. The baseline the seeds call "non-prefork", kept so the benchmark can compare
//! prefork against it with everything else equal: the handler, the HTTP stack (forklift's
//! HTTP/1 fast path, then hyper with the workers' settings), the backlog, TCP_DEFER_ACCEPT.

use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicUsize, Ordering};

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
            forklift::__defer_accept(&l);
            l.set_nonblocking(true)?;
            let l = tokio::net::TcpListener::from_std(l)?;
            crate::say!("listening on http://{}", l.local_addr()?);
            tcp.push(l);
        }
        crate::say!("ready pids={}", std::process::id());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let live = Arc::new(Live::default());
        let worker = http::HeaderValue::from(std::process::id());
        let accepts: Vec<_> = tcp
            .into_iter()
            .map(|l| {
                tokio::spawn(accept_loop(
                    l,
                    header_read_timeout,
                    stop_rx.clone(),
                    live.clone(),
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
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(graceful_timeout, live.drained()).await;
        Ok(())
    })
}

/// Open connections, and a wake-up for when the last one closes.
#[derive(Default)]
struct Live {
    count: AtomicUsize,
    idle: tokio::sync::Notify,
}

impl Live {
    async fn drained(&self) {
        loop {
            let idle = self.idle.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    header_read_timeout: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
    live: Arc<Live>,
    worker: http::HeaderValue,
) {
    let service = hyper::service::service_fn(move |req| crate::demo(req, worker.clone(), false));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let (service, stop, live) = (service.clone(), stop.clone(), live.clone());
                live.count.fetch_add(1, Ordering::SeqCst);
                // Boxed as a worker boxes a connection's future (forklift's `spawn_conn`), so
                // that both spawn the same way.
                tokio::spawn(Box::pin(async move {
                    forklift::__serve_connection(stream, service, header_read_timeout, stop).await;
                    if live.count.fetch_sub(1, Ordering::SeqCst) == 1 {
                        live.idle.notify_waiters();
                    }
                }));
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
