//! One port for everything, as the contract says: a request for `/ws/chat` becomes a WhatsApp
//! WebSocket connection; anything else is plain HTTP (media and the control API).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::{Hub, conn, ctl, media, web};

pub async fn serve(listener: TcpListener, hub: Arc<Hub>, stop: CancellationToken) {
    let app: Router = ctl::routes()
        .merge(media::routes())
        .merge(web::routes())
        .with_state(hub.clone());
    let tasks = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let hub = hub.clone();
        let app = app.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            tokio::select! {
                () = connection(stream, hub, app) => {}
                () = stop.cancelled() => {}
            }
        });
    }
    tasks.close();
    tasks.wait().await;
}

async fn connection(stream: TcpStream, hub: Arc<Hub>, app: Router) {
    if is_websocket(&stream).await {
        if hub.faults.unreachable() {
            return;
        }
        match tokio_websockets::ServerBuilder::new().accept(stream).await {
            Ok((_request, ws)) => conn::serve(hub, ws).await,
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
        return;
    }
    let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let app = app.clone();
        async move {
            let response = app.oneshot(request.map(axum::body::Body::new)).await?;
            Ok::<_, Infallible>(response)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// Looks at the request head without consuming it: is this the WhatsApp socket's path?
async fn is_websocket(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 2048];
    for _ in 0..200 {
        let Ok(n) = stream.peek(&mut buf).await else {
            return false;
        };
        let head = &buf[..n];
        if let Some(line_end) = head.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&head[..line_end]);
            return line.starts_with("GET /ws/chat");
        }
        if n == buf.len() || n == 0 {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}
