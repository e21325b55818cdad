//! The bridge's side of a worker: one kept-alive FastCGI connection per worker thread.
//!
//! A [`SlotConn`] is taken from the pool's dispatcher for one request and returned at
//! END_REQUEST. [`exchange`] runs that request over it.
pub mod exchange;

use crate::supervise::WorkerHandle;
use bytes::BytesMut;
use fastcgi_server::client::ClientConnection;
use fastcgi_server::Limits;
use std::sync::Arc;
use tokio::net::UnixStream;

/// One FastCGI connection to one worker thread.
pub struct SlotConn {
    pub worker: Arc<WorkerHandle>,
    stream: UnixStream,
    decoder: ClientConnection,
    wbuf: BytesMut,
}

impl SlotConn {
    /// Open a new connection to the worker's listening socket.
    pub async fn connect(worker: Arc<WorkerHandle>) -> std::io::Result<SlotConn> {
        let stream = UnixStream::connect(&worker.socket).await?;
        Ok(SlotConn { worker, stream, decoder: new_decoder(), wbuf: BytesMut::with_capacity(4096) })
    }

    /// Replace a connection whose state is unknown (a request was cut short) with a fresh
    /// one to the same worker. `None` when the worker is gone.
    pub async fn reconnect(self) -> Option<SlotConn> {
        let worker = self.worker.clone();
        // Close first: the worker thread serving the old connection sees EOF and goes
        // back to accept(), where it picks up the new one.
        drop(self);
        if !worker.is_alive() {
            return None;
        }
        match SlotConn::connect(worker.clone()).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(pool = %worker.pool, pid = worker.pid, error = %e, "could not reconnect to worker");
                None
            }
        }
    }
}

impl crate::dispatch::Slot for SlotConn {
    fn usable(&self) -> bool {
        self.worker.is_alive()
    }
}

fn new_decoder() -> ClientConnection {
    ClientConnection::new(Limits::default())
}
