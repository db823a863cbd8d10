//! Writes rows off the request path: callers queue rows without waiting, a task inserts them
//! in batches (every 200 ms or per 500 rows), `flush()` waits until all queued rows are stored
//! (tests, shutdown, end of a job step).

use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

enum Msg<T> {
    Row(T),
    Flush(oneshot::Sender<()>),
}

/// Rows per insert statement.
pub const BATCH: usize = 500;

/// A queue in front of a batched insert. Cheap to clone.
#[derive(Debug)]
pub struct BatchWriter<T> {
    tx: Option<mpsc::UnboundedSender<Msg<T>>>,
}

impl<T> Clone for BatchWriter<T> {
    fn clone(&self) -> Self {
        BatchWriter {
            tx: self.tx.clone(),
        }
    }
}

impl<T: Send + 'static> BatchWriter<T> {
    /// A writer that drops everything (no database).
    pub fn discard() -> Self {
        BatchWriter { tx: None }
    }

    /// Starts the writer task; `write` inserts one batch. Failures are logged (the rows are
    /// lost: these are logs and accounting, never the data a caller was promised).
    pub fn start<F, Fut>(what: &'static str, write: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), sqlx::Error>> + Send,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg<T>>();
        tokio::spawn(async move {
            let mut buf: Vec<T> = Vec::new();
            let mut acks: Vec<oneshot::Sender<()>> = Vec::new();
            let flush = |rows: Vec<T>| {
                let n = rows.len();
                let fut = write(rows);
                async move {
                    if let Err(e) = fut.await {
                        tracing::warn!(error = %e, lost = n, "could not store {what} rows");
                    }
                }
            };
            loop {
                let msg = if buf.is_empty() {
                    rx.recv().await
                } else {
                    match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
                        Ok(m) => m,
                        Err(_) => {
                            flush(std::mem::take(&mut buf)).await;
                            continue;
                        }
                    }
                };
                match msg {
                    Some(Msg::Row(r)) => {
                        buf.push(r);
                        if buf.len() >= BATCH {
                            flush(std::mem::take(&mut buf)).await;
                        }
                    }
                    Some(Msg::Flush(ack)) => {
                        acks.push(ack);
                        while let Ok(m) = rx.try_recv() {
                            match m {
                                Msg::Row(r) => buf.push(r),
                                Msg::Flush(a) => acks.push(a),
                            }
                        }
                        while !buf.is_empty() {
                            let rest = buf.split_off(buf.len().min(BATCH));
                            flush(std::mem::replace(&mut buf, rest)).await;
                        }
                        for a in acks.drain(..) {
                            let _ = a.send(());
                        }
                    }
                    None => {
                        if !buf.is_empty() {
                            flush(std::mem::take(&mut buf)).await;
                        }
                        return;
                    }
                }
            }
        });
        BatchWriter { tx: Some(tx) }
    }

    /// Queues a row (never blocks).
    pub fn send(&self, row: T) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Row(row));
        }
    }

    /// Waits until every row queued so far is stored.
    pub async fn flush(&self) {
        if let Some(tx) = &self.tx {
            let (ack, done) = oneshot::channel();
            if tx.send(Msg::Flush(ack)).is_ok() {
                let _ = done.await;
            }
        }
    }
}
