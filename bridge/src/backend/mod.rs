//! The bridge's side of a worker: one kept-alive FastCGI connection per worker thread.
//!
//! A [`SlotConn`] is taken from the pool's dispatcher for one request and returned at
//! END_REQUEST. [`exchange`] runs that request over it.
pub mod exchange;

use crate::supervise::WorkerHandle;
use bytes::BytesMut;
use fastcgi_server::client::ClientConnection;
use fastcgi_server::Limits;
use crate::dispatch::{Canceller, SlotKey};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::UnixStream;

/// One FastCGI connection to one worker thread.
pub struct SlotConn {
    pub worker: Arc<WorkerHandle>,
    stream: UnixStream,
    decoder: ClientConnection,
    wbuf: BytesMut,
    /// Its place in the pool's dispatcher (set when it joins the pool).
    key: SlotKey,
    /// Set by request-timeout (through the dispatcher's [`Canceller`]) before it shuts the
    /// socket down: the exchange then answers 504 instead of 502.
    timed_out: Arc<AtomicBool>,
    /// A canceller for a fresh connection, handed to the dispatcher at the next release.
    new_canceller: Option<Canceller>,
}

impl SlotConn {
    /// Open a new connection to the worker's listening socket. The [`Canceller`] goes to
    /// the dispatcher with [`Dispatcher::add_conn`](crate::dispatch::Dispatcher::add_conn),
    /// whose key is then given to [`set_key`](Self::set_key).
    pub async fn connect(worker: Arc<WorkerHandle>) -> std::io::Result<(SlotConn, Canceller)> {
        let stream = UnixStream::connect(&worker.socket).await?;
        let (timed_out, canceller) = canceller_for(&stream)?;
        let slot = SlotConn {
            worker,
            stream,
            decoder: new_decoder(),
            wbuf: BytesMut::with_capacity(4096),
            key: SlotKey::NONE,
            timed_out,
            new_canceller: None,
        };
        Ok((slot, canceller))
    }

    pub fn set_key(&mut self, key: SlotKey) {
        self.key = key;
    }

    /// request-timeout interrupted this slot's request.
    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Acquire)
    }

    /// Replace a connection whose state is unknown (a request was cut short) with a fresh
    /// one to the same worker. False when the worker is gone (then discard the slot).
    pub async fn reconnect(&mut self) -> bool {
        // Close first: the worker thread serving the old connection sees EOF and goes
        // back to accept(), where it picks up the new one.
        shutdown(&self.stream);
        if !self.worker.is_alive() || self.timed_out() {
            return false;
        }
        let fresh = match UnixStream::connect(&self.worker.socket).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(pool = %self.worker.pool, pid = self.worker.pid, error = %e, "could not reconnect to worker");
                return false;
            }
        };
        let Ok((flag, canceller)) = canceller_for(&fresh) else { return false };
        self.stream = fresh;
        self.decoder = new_decoder();
        self.timed_out = flag;
        self.new_canceller = Some(canceller);
        true
    }
}

impl Drop for SlotConn {
    fn drop(&mut self) {
        // The dispatcher may still hold a duplicate of the descriptor (its canceller):
        // shut the socket down so the worker thread sees the end either way.
        shutdown(&self.stream);
    }
}

fn shutdown(stream: &UnixStream) {
    // SAFETY: a valid socket descriptor owned by `stream`.
    unsafe {
        libc::shutdown(stream.as_raw_fd(), libc::SHUT_RDWR);
    }
}

fn canceller_for(stream: &UnixStream) -> std::io::Result<(Arc<AtomicBool>, Canceller)> {
    let flag = Arc::new(AtomicBool::new(false));
    let fd = stream.as_fd().try_clone_to_owned()?;
    Ok((flag.clone(), Canceller { fd, flag }))
}

impl crate::dispatch::Slot for SlotConn {
    fn usable(&self) -> bool {
        self.worker.is_alive()
    }
    fn key(&self) -> SlotKey {
        self.key
    }
    fn take_canceller(&mut self) -> Option<Canceller> {
        self.new_canceller.take()
    }
}

fn new_decoder() -> ClientConnection {
    ClientConnection::new(Limits::default())
}
