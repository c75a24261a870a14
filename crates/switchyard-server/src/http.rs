//! Serving HTTP connections with bounds a public server needs (axum's `serve` has none of them):
//!
//! - **a cap on connections** (`http.max_connections`). Past it, up to [`OVERFLOW_CONNECTIONS`]
//!   more are taken for one request each, without keep-alive, with a short header timeout: they
//!   get `503` + `Retry-After`, except `/_liveness` and `/_readiness`, which are always served
//!   (a flood must not make an orchestrator restart a healthy process). Past those, new
//!   connections are closed at once.
//! - **a header read timeout** (`http.header_read_timeout_secs`): a request whose header has not
//!   fully arrived in time is closed (hyper counts from when the connection waits for a request:
//!   its opening, or the previous response), so half-sent requests (slowloris) hold nothing long.
//! - **a body read deadline** (`http.body_read_timeout_secs`): the whole body must arrive by then,
//!   counted from the request's header; reading it fails after, and intake answers 408
//!   (PostHog) / 500 (RudderStack), which SDKs retry.
//! - **an idle keep-alive timeout** (`http.keep_alive_timeout_secs`): a connection with no
//!   request in flight for that long is closed (never later than the header read timeout, which
//!   also runs while a connection waits for its next request).
//!
//! Shutdown: stop accepting, let every connection finish its request in flight and close.

use std::convert::Infallible;
use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tower::Service as _;

use crate::config::HttpSettings;
use crate::metrics::{ConnectionLabels, ConnectionMetrics};

/// Connections taken past the cap, each for one request answered 503 (or a health check).
pub const OVERFLOW_CONNECTIONS: usize = 256;
/// Header read timeout for connections past the cap.
const OVERFLOW_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// Accepts and serves connections until `stop` turns true; then waits for every connection to
/// finish its request in flight.
pub async fn serve_connections(
    listener: TcpListener,
    router: Router,
    settings: HttpSettings,
    metrics: ConnectionMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let overflow = Arc::new(Semaphore::new(OVERFLOW_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                if !matches!(
                    error.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                ) {
                    // Out of file descriptors, most likely: wait for some to be closed.
                    tracing::error!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                continue;
            }
        };
        let (permit, over_cap) = match slots.clone().try_acquire_owned() {
            Ok(permit) => (permit, false),
            Err(_) => match overflow.clone().try_acquire_owned() {
                Ok(permit) => {
                    metrics.refused.get_or_create(&ConnectionLabels { outcome: "answered_503" }).inc();
                    (permit, true)
                }
                Err(_) => {
                    metrics.refused.get_or_create(&ConnectionLabels { outcome: "closed" }).inc();
                    drop(stream);
                    continue;
                }
            },
        };
        let connection = Connection { router: router.clone(), settings: settings.clone(), peer, over_cap };
        let stop = stop.clone();
        metrics.open.inc();
        let open = metrics.open.clone();
        connections.spawn(async move {
            connection.run(stream, stop).await;
            open.dec();
            drop(permit);
        });
    }
    while connections.join_next().await.is_some() {}
}

struct Connection {
    router: Router,
    settings: HttpSettings,
    peer: SocketAddr,
    over_cap: bool,
}

/// What the idle timer needs to know of a connection's requests.
#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds since the connection opened at which the last request finished.
    last_done_ms: AtomicU64,
}

impl Connection {
    async fn run(self, stream: TcpStream, mut stop: watch::Receiver<bool>) {
        let opened = Instant::now();
        let activity = Arc::new(Activity::default());
        let header_timeout = if self.over_cap {
            OVERFLOW_HEADER_TIMEOUT.min(self.settings.header_read_timeout())
        } else {
            self.settings.header_read_timeout()
        };
        let keep_alive = self.settings.keep_alive_timeout();
        let body_timeout = self.settings.body_read_timeout();
        let (router, peer, over_cap) = (self.router, self.peer, self.over_cap);
        let service_activity = activity.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let activity = service_activity.clone();
            let mut router = router.clone();
            async move {
                if over_cap && !matches!(request.uri().path(), "/_liveness" | "/_readiness") {
                    return Ok::<_, Infallible>(too_many_connections());
                }
                activity.in_flight.fetch_add(1, Ordering::SeqCst);
                let mut request = request.map(|body| Body::new(DeadlineBody::new(body, body_timeout)));
                request.extensions_mut().insert(ConnectInfo(peer));
                let response = router.call(request).await;
                activity.last_done_ms.store(opened.elapsed().as_millis() as u64, Ordering::SeqCst);
                activity.in_flight.fetch_sub(1, Ordering::SeqCst);
                response
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(header_timeout).keep_alive(!over_cap);
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let mut closing = false;
        let mut idle_check = tokio::time::interval(keep_alive.min(Duration::from_secs(1)).max(Duration::from_millis(100)));
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, %peer, "connection closed with an error");
                    }
                    return;
                }
                _ = stop.changed(), if !closing => {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
                _ = idle_check.tick(), if !closing => {
                    let idle_since = Duration::from_millis(activity.last_done_ms.load(Ordering::SeqCst));
                    if activity.in_flight.load(Ordering::SeqCst) == 0 && opened.elapsed().saturating_sub(idle_since) >= keep_alive {
                        // Closes at once when idle; a request whose header is arriving finishes first.
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

fn too_many_connections() -> Response<Body> {
    let mut response = Response::new(Body::from("too many connections; retry later"));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A request body that fails once its deadline passes: the whole body must arrive in time.
struct DeadlineBody {
    inner: Incoming,
    timeout: Duration,
    /// Set on the first poll, so requests without a body pay nothing.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl DeadlineBody {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        DeadlineBody { inner, timeout, deadline: None }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimeout(Duration);

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let timeout = self.timeout;
        let deadline = self.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
