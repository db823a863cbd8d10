//! The HTTP/1.1 server loop: hyper's connection driver under limits that keep slow or
//! idle clients from starving everyone else.
//!
//! - A client has `header_read_timeout` to send a request's headers, counted from the
//!   connection's start or from the first byte of a later request; then it is closed.
//! - An idle keep-alive connection is closed after `keep_alive_timeout`.
//! - At most `max_connections` are open. When full, the connection idle the longest (no
//!   request in progress: waiting for headers or between requests) is closed to make room,
//!   so a flood of half-open sockets cannot lock out real clients; a connection with a
//!   request in progress is never closed.
//! - Request heads larger than `max_header_bytes` are refused (431).
//! - On shutdown the listener closes, idle connections close, in-flight requests finish.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::body::Bytes;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tower::ServiceExt;

pub use crate::config::ServerLimits;

/// Raises the soft open-file limit to the hard one and returns the connection cap that fits
/// under it (a few hundred descriptors stay free for the database pool, the LLM client and
/// files).
pub fn fit_connection_cap(wanted: usize) -> usize {
    const RESERVED: u64 = 256;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return wanted;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        lim.rlim_cur
    };
    let fits = soft.saturating_sub(RESERVED).max(16);
    let cap = (wanted as u64).min(fits) as usize;
    if cap < wanted {
        tracing::warn!(
            wanted,
            cap,
            open_file_limit = soft,
            "AGP_MAX_CONNECTIONS lowered to fit the open-file limit"
        );
    }
    cap
}

/// What the server knows about one connection.
#[derive(Debug)]
struct Conn {
    /// Requests whose response has not been fully sent.
    in_flight: AtomicU32,
    /// Responses fully sent on this connection.
    served: AtomicU64,
    /// Clock reading (ms, +1) when the head of the next request started to arrive; 0 if not.
    reading_since: AtomicU64,
    /// Clock reading (ms) when the connection last became idle (accepted, or a response ended).
    idle_since: AtomicU64,
    /// Asked to close to make room for a new connection.
    evict: AtomicBool,
    /// Wakes the connection's watchdog when any of the above changes.
    changed: Notify,
}

/// Shared by the accept loop and every connection.
struct Shared {
    limits: ServerLimits,
    started: Instant,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn instant(&self, ms: u64) -> Instant {
        self.started + Duration::from_millis(ms)
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the connection idle the longest to close. False when every connection is busy.
    fn evict_one(&self) -> bool {
        let victim = self
            .registry()
            .values()
            .filter(|c| {
                c.in_flight.load(Ordering::Acquire) == 0 && !c.evict.load(Ordering::Relaxed)
            })
            .min_by_key(|c| c.idle_since.load(Ordering::Relaxed))
            .cloned();
        match victim {
            Some(c) => {
                c.evict.store(true, Ordering::Release);
                c.changed.notify_one();
                true
            }
            None => false,
        }
    }

    /// When the connection's current wait ends, if it is waiting at all.
    fn deadline(&self, c: &Conn) -> Option<Instant> {
        if c.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let reading = c.reading_since.load(Ordering::Acquire);
        let idle = c.idle_since.load(Ordering::Relaxed);
        let (since, limit) = if reading > 0 {
            (reading - 1, self.limits.header_read_timeout)
        } else if c.served.load(Ordering::Relaxed) == 0 {
            (idle, self.limits.header_read_timeout)
        } else {
            (idle, self.limits.keep_alive_timeout)
        };
        Some(self.instant(since) + limit)
    }
}

/// Why a connection ended (a label of `agp_http_connections_closed_total`).
fn closed(reason: &'static str) {
    metrics::counter!("agp_http_connections_closed_total", "reason" => reason).increment(1);
}

/// Serves `app` on `listener` under `limits` until `shutdown` resolves, then stops accepting,
/// closes idle connections and waits for in-flight requests to finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let shared = Arc::new(Shared {
        limits,
        started: Instant::now(),
        conns: Mutex::new(HashMap::new()),
    });
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (drain_tx, mut drain_rx) = mpsc::channel::<()>(1);
    let mut next_id = 0u64;
    tokio::pin!(shutdown);
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                shared.evict_one();
                tokio::select! {
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    _ = &mut shutdown => break,
                }
            }
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE and friends: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let conn = Arc::new(Conn {
            in_flight: AtomicU32::new(0),
            served: AtomicU64::new(0),
            reading_since: AtomicU64::new(0),
            idle_since: AtomicU64::new(shared.now_ms()),
            evict: AtomicBool::new(false),
            changed: Notify::new(),
        });
        shared.registry().insert(next_id, conn.clone());
        metrics::gauge!("agp_http_connections_open").increment(1.0);
        let (shared, app, stop, drain) = (
            shared.clone(),
            app.clone(),
            stop_rx.clone(),
            drain_tx.clone(),
        );
        let id = next_id;
        tokio::spawn(async move {
            run_connection(stream, conn, &shared, app, stop).await;
            shared.registry().remove(&id);
            metrics::gauge!("agp_http_connections_open").decrement(1.0);
            drop(permit);
            drop(drain);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(drain_tx);
    let _ = drain_rx.recv().await;
    Ok(())
}

async fn run_connection(
    stream: TcpStream,
    conn: Arc<Conn>,
    shared: &Arc<Shared>,
    app: Router,
    mut stop: watch::Receiver<bool>,
) {
    let io = TokioIo::new(Tracked {
        inner: stream,
        conn: conn.clone(),
        shared: shared.clone(),
    });
    let service = {
        let (conn, shared) = (conn.clone(), shared.clone());
        tower::service_fn(move |req: Request<Incoming>| {
            conn.in_flight.fetch_add(1, Ordering::AcqRel);
            conn.reading_since.store(0, Ordering::Release);
            let guard = RequestGuard {
                conn: conn.clone(),
                shared: shared.clone(),
            };
            // hyper's own bound is on its read buffer, which lets heads well past the limit
            // through: the head is measured here, exactly.
            let limit = shared.limits.max_header_bytes;
            let too_large = head_bytes(&req) > limit;
            let fut = app.clone().oneshot(req.map(Body::new));
            async move {
                let resp = if too_large {
                    head_too_large(limit)
                } else {
                    fut.await?
                };
                Ok::<_, std::convert::Infallible>(resp.map(|b| {
                    Body::new(Guarded {
                        inner: b,
                        _guard: guard,
                    })
                }))
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // A backstop on memory; the exact limit is checked per request (`head_bytes`).
    builder
        .max_buf_size(shared.limits.max_header_bytes.max(8192))
        .keep_alive(true);
    let http = builder.serve_connection(io, TowerToHyperService::new(service));
    tokio::pin!(http);
    let mut draining = false;
    loop {
        if conn.evict.swap(false, Ordering::AcqRel) && conn.in_flight.load(Ordering::Acquire) == 0 {
            closed("evicted");
            return;
        }
        let deadline = shared.deadline(&conn);
        tokio::select! {
            r = http.as_mut() => {
                closed(if r.is_ok() { "done" } else { "error" }); // not a state: a metrics label
                return;
            }
            _ = conn.changed.notified() => {}
            _ = sleep_until(deadline) => {
                // Recheck: a request may have started since the deadline was computed.
                if shared.deadline(&conn).is_some_and(|d| d <= Instant::now()) {
                    let header = conn.reading_since.load(Ordering::Acquire) > 0
                        || conn.served.load(Ordering::Relaxed) == 0;
                    closed(if header { "header_timeout" } else { "idle_timeout" });
                    return;
                }
            }
            _ = stop.changed(), if !draining => {
                draining = true;
                http.as_mut().graceful_shutdown();
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Marks a request as finished when its response body has been sent (or dropped).
struct RequestGuard {
    conn: Arc<Conn>,
    shared: Arc<Shared>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.conn
            .idle_since
            .store(self.shared.now_ms(), Ordering::Relaxed);
        self.conn.served.fetch_add(1, Ordering::Relaxed);
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.conn.changed.notify_one();
    }
}

/// A response body that holds its request's guard until it is done.
struct Guarded {
    inner: Body,
    _guard: RequestGuard,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, noting when the first bytes of a new request arrive (starts its header clock).
struct Tracked {
    inner: TcpStream,
    conn: Arc<Conn>,
    shared: Arc<Shared>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(())))
            && buf.filled().len() > before
            && this.conn.in_flight.load(Ordering::Acquire) == 0
            && this.conn.reading_since.load(Ordering::Acquire) == 0
        {
            this.conn
                .reading_since
                .store(this.shared.now_ms() + 1, Ordering::Release);
            this.conn.changed.notify_one();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The size of a request's head as sent: request line, headers, blank line.
pub fn head_bytes<B>(req: &axum::http::Request<B>) -> usize {
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    let line = req.method().as_str().len() + 1 + target + 1 + "HTTP/1.1".len() + 2;
    let headers: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    line + headers + 2
}

/// 431 with the contract's error body.
fn head_too_large(limit: usize) -> axum::response::Response {
    let body = serde_json::json!({"error": {
        "message": format!("the request line and headers exceed {limit} bytes"),
        "type": "validation_error",
    }});
    axum::response::Response::builder()
        .status(axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_is_measured_as_sent() {
        let req = axum::http::Request::builder()
            .method("GET")
            .uri("/healthz?x=1")
            .header("host", "a")
            .header("x-padding", "b".repeat(10))
            .body(())
            .unwrap();
        // "GET /healthz?x=1 HTTP/1.1\r\n" 27, "host: a\r\n" 9, "x-padding: " 11 + 10 + 2, 2.
        assert_eq!(head_bytes(&req), 27 + 9 + 11 + 10 + 2 + 2);
    }
}
