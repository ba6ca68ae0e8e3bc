//! The HTTP/1.1 server around the router, with the limits that keep slow or idle clients from
//! holding the daemon: at most `max_connections` at once (further ones wait in the kernel's
//! backlog), a connection that sends no request head within `header_timeout` (counted from
//! its first byte, or from its opening), or stays idle between requests for `idle_timeout`, is
//! closed; a request body must arrive within `body_timeout` ([`DeadlineBody`]).
//!
//! hyper's own header timeout starts when the connection begins waiting for a request, so it
//! cannot tell an idle keep-alive connection from a slow head; the phase of each connection is
//! tracked here instead: [`TimedIo`] sees the bytes, the service wrapper sees the requests.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use http_body::Frame;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

/// Limits on clients (README "Security"); every one is a setting.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// A request head must be complete this long after its first byte (or after the connection
    /// opened, for its first request).
    pub header_timeout: Duration,
    /// A request body must be complete this long after the handler started reading it.
    pub body_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown`, then lets open requests finish (connections
/// close after their current response) and returns once every connection is closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    settings: ServerSettings,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(settings.max_connections));
    let connections = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    // The phases below replace hyper's header timeout, which would need a timer.
    http.header_read_timeout(None);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = shutdown.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // wait a moment instead of spinning.
                    tracing::warn!(error = %e, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let phase = Arc::new(Mutex::new(Conn {
            phase: Phase::opened(),
            reader: None,
        }));
        let io = TokioIo::new(TimedIo::new(stream, phase.clone(), settings.clone()));
        let app = app.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            set(&phase, Phase::Busy);
            let finished = Finished(phase.clone());
            let app = app.clone();
            async move {
                let response = app.oneshot(request.map(Body::new)).await?;
                Ok::<_, Infallible>(response.map(|body| {
                    Body::new(TrackedBody {
                        body,
                        _finished: finished,
                    })
                }))
            }
        });
        let connection = http.serve_connection(io, service);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(permit);
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

/// A connection's phase, and the reader to wake when it changes (a read that is pending while
/// a request is handled has no deadline, and must look again once the response is written).
struct Conn {
    phase: Phase,
    reader: Option<Waker>,
}

/// What a connection is doing, for its deadline.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Waiting for a request since `since`; `head_from` is when its first byte arrived.
    Waiting {
        since: Instant,
        head_from: Option<Instant>,
        first: bool,
    },
    /// A request is being handled or its response written: the handler and [`DeadlineBody`]
    /// decide how long that may take.
    Busy,
}

impl Phase {
    fn opened() -> Self {
        Self::Waiting {
            since: Instant::now(),
            head_from: None,
            first: true,
        }
    }

    fn deadline(self, settings: &ServerSettings) -> Option<Instant> {
        match self {
            Self::Waiting {
                head_from: Some(at), ..
            } => Some(at + settings.header_timeout),
            Self::Waiting { since, first: true, .. } => Some(since + settings.header_timeout),
            Self::Waiting { since, .. } => Some(since + settings.idle_timeout),
            Self::Busy => None,
        }
    }
}

fn lock(conn: &Mutex<Conn>) -> std::sync::MutexGuard<'_, Conn> {
    conn.lock().unwrap_or_else(|p| p.into_inner())
}

fn set(conn: &Mutex<Conn>, to: Phase) {
    let reader = {
        let mut conn = lock(conn);
        conn.phase = to;
        conn.reader.take()
    };
    if let Some(reader) = reader {
        reader.wake();
    }
}

/// Dropped when hyper is done with a response: the connection waits for the next request.
struct Finished(Arc<Mutex<Conn>>);

impl Drop for Finished {
    fn drop(&mut self) {
        set(
            &self.0,
            Phase::Waiting {
                since: Instant::now(),
                head_from: None,
                first: false,
            },
        );
    }
}

/// A response body that marks its connection idle once written (or dropped).
struct TrackedBody {
    body: Body,
    _finished: Finished,
}

impl http_body::Body for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The socket, failing its reads once the connection's phase deadline has passed: hyper then
/// closes it.
struct TimedIo {
    stream: TcpStream,
    conn: Arc<Mutex<Conn>>,
    settings: ServerSettings,
    timer: Pin<Box<Sleep>>,
}

impl TimedIo {
    fn new(stream: TcpStream, conn: Arc<Mutex<Conn>>, settings: ServerSettings) -> Self {
        let timer = Box::pin(tokio::time::sleep(settings.header_timeout));
        Self {
            stream,
            conn,
            settings,
            timer,
        }
    }
}

impl AsyncRead for TimedIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if let Phase::Waiting {
                    head_from: head @ None, ..
                } = &mut lock(&this.conn).phase
                    && buf.filled().len() > before
                {
                    *head = Some(Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let deadline = {
                    let mut conn = lock(&this.conn);
                    conn.reader = Some(cx.waker().clone());
                    conn.phase.deadline(&this.settings)
                };
                let Some(deadline) = deadline else {
                    return Poll::Pending;
                };
                if this.timer.deadline() != deadline {
                    this.timer.as_mut().reset(deadline);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent no complete request in time",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            failed => failed,
        }
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Why a request body stopped: it did not arrive within the body timeout.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time (WAGHL_HTTP_BODY_TIMEOUT_MS)")]
pub struct BodyTimeout;

/// A request body that fails once `deadline` has passed, however slowly bytes trickle in.
pub struct DeadlineBody {
    body: Body,
    deadline: Pin<Box<Sleep>>,
}

impl DeadlineBody {
    pub fn wrap(request: Request, timeout: Duration) -> Request {
        request.map(|body| {
            Body::new(Self {
                body,
                deadline: Box::pin(tokio::time::sleep(timeout)),
            })
        })
    }
}

impl http_body::Body for DeadlineBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimeout))));
        }
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
