//! The accept loop: HTTP/1 connections served by hyper with a header read timeout.
//!
//! `axum::serve` gives hyper no timer, so a client that opens a connection and sends its
//! headers one byte a minute holds a connection (and a task) forever. Here every connection
//! gets hyper's `header_read_timeout`; the body's own deadline is the handler's (see
//! `chat::read_body`). On shutdown the listener closes, each connection finishes the response
//! it is sending and closes, and [`serve`] returns once all of them have.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Serves `router` on `listener` until `stop` turns true, then waits for open connections.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    stop: watch::Receiver<bool>,
) {
    // Every connection task holds a clone of `open_rx`; `open_tx.closed()` resolves once all
    // of them (and ours) are gone.
    let (open_tx, open_rx) = watch::channel(());
    let mut stop_rx = stop.clone();
    let stopping = async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    };
    let mut stopping = std::pin::pin!(stopping);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => {
                    // Out of file descriptors or a connection reset before accept: wait a
                    // little rather than spin.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stopping.as_mut() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let mut conn_stop = stop.clone();
        let open = open_rx.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let stopping = async move {
                let _ = conn_stop.wait_for(|s| *s).await;
            };
            let finished = tokio::select! {
                _ = conn.as_mut() => true,
                _ = stopping => false,
            };
            if !finished {
                conn.as_mut().graceful_shutdown();
                let _ = conn.as_mut().await;
            }
            drop(open);
        });
    }
    drop(listener);
    drop(open_rx);
    open_tx.closed().await;
}
