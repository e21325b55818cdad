//! The bridge's side of a worker: one kept-alive FastCGI connection per worker thread.
//!
//! A [`SlotConn`] is taken from the pool's dispatcher for one request and returned at
//! END_REQUEST. [`exchange`] runs that request over it.
pub(crate) mod exchange;

use crate::dispatch::{Canceller, SlotKey};
use crate::worker_handle::WorkerHandle;
use bytes::BytesMut;
use fastcgi_server::client::ClientConnection;
use fastcgi_server::Limits;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// One FastCGI connection to one worker thread.
pub(crate) struct SlotConn {
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
    /// The FastCGI request id of the connection's current request (1 or 2: a request
    /// piped behind it takes the other, exchange.rs).
    req_id: u16,
    /// The id the request piped behind the current one was written with.
    piped_id: u16,
    /// The request the worker was told to abort, whose END_REQUEST is still to come
    /// ([`exchange::SlotFate::Aborted`]).
    aborting: Option<exchange::Aborting>,
}

impl SlotConn {
    /// Open a new connection to the worker's listening socket. The [`Canceller`] goes to
    /// the dispatcher with [`Dispatcher::add_conn`](crate::dispatch::Dispatcher::add_conn),
    /// whose key is then given to [`set_key`](Self::set_key).
    pub(crate) async fn connect(worker: Arc<WorkerHandle>) -> std::io::Result<(Self, Canceller)> {
        let stream = UnixStream::connect(&worker.socket).await?;
        let (timed_out, canceller) = canceller_for(&stream)?;
        let slot = Self {
            worker,
            stream,
            decoder: new_decoder(),
            wbuf: BytesMut::with_capacity(4096),
            key: SlotKey::NONE,
            timed_out,
            new_canceller: None,
            req_id: 1,
            piped_id: 2,
            aborting: None,
        };
        Ok((slot, canceller))
    }

    pub(crate) fn set_key(&mut self, key: SlotKey) {
        self.key = key;
    }

    /// request-timeout interrupted this slot's request.
    pub(crate) fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Acquire)
    }

    /// Bytes the worker sent on this connection while it had no request (a worker that
    /// answered twice, or after END_REQUEST): they would be taken for the next request's
    /// response, and every response after it would be one late. `None`: nothing (the
    /// usual case, decided without a system call when the socket is known to be empty).
    pub(crate) fn unsolicited(&mut self) -> Option<usize> {
        // An end of file or an error is not this: the write that follows fails, and the
        // request is sent to another worker (exchange.rs).
        let _ = self.stream.try_read_buf(self.decoder.buffer_mut());
        Some(self.decoder.buffered()).filter(|&n| n > 0)
    }

    /// Replace a connection whose state is unknown (a request was cut short) with a fresh
    /// one to the same worker. False when the worker is gone (then discard the slot).
    pub(crate) async fn reconnect(&mut self) -> bool {
        // Close first: the worker thread serving the old connection sees EOF and goes
        // back to accept(), where it picks up the new one.
        shutdown(&self.stream);
        if !self.worker.is_alive() || self.timed_out() {
            return false;
        }
        let fresh = match UnixStream::connect(&self.worker.socket).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(pool = &*self.worker.pool, pid = self.worker.pid, error = %e, "could not reconnect to worker");
                return false;
            }
        };
        let Ok((flag, canceller)) = canceller_for(&fresh) else { return false };
        self.stream = fresh;
        self.decoder = new_decoder();
        self.req_id = 1;
        self.aborting = None;
        self.timed_out = flag;
        self.new_canceller = Some(canceller);
        true
    }

    /// [`reconnect`](Self::reconnect), then ask the worker for FCGI_MPXS_CONNS and wait
    /// for the answer: after a worker broke a connection it is usually dying, and a dying
    /// worker's listening socket can still take a connection that nobody will ever accept
    /// (the next request on it would fail). False: discard the slot.
    pub(crate) async fn reconnect_verified(&mut self) -> bool {
        if !self.reconnect().await {
            return false;
        }
        let probe = async {
            let mut out = BytesMut::new();
            fastcgi_server::client::write_get_values(&mut out, [&b"FCGI_MPXS_CONNS"[..]]);
            self.stream.write_all(&out).await?;
            loop {
                match self.decoder.next_event() {
                    Ok(Some(fastcgi_server::client::ClientEvent::GetValuesResult { .. })) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(std::io::Error::other(e.to_string())),
                }
                if self.stream.read_buf(self.decoder.buffer_mut()).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
        };
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::debug!(pool = &*self.worker.pool, pid = self.worker.pid, error = %e, "worker did not answer on a fresh connection; dropping the slot");
                false
            }
            Err(_) => {
                tracing::warn!(pool = &*self.worker.pool, pid = self.worker.pid, "worker did not answer FCGI_GET_VALUES within {PROBE_TIMEOUT:?} on a fresh connection; dropping the slot");
                false
            }
        }
    }
}

/// How long a worker may take to answer the liveness probe of [`SlotConn::reconnect_verified`].
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl Drop for SlotConn {
    fn drop(&mut self) {
        // The dispatcher may still hold a duplicate of the descriptor (its canceller):
        // shut the socket down so the worker thread sees the end either way.
        shutdown(&self.stream);
    }
}

fn shutdown(stream: &UnixStream) {
    let _ = nix::sys::socket::shutdown(stream.as_raw_fd(), nix::sys::socket::Shutdown::Both);
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

#[cfg(test)]
mod tests {
    use super::*;
    use fastcgi_server::server::{ServerConnection, ServerEvent};

    /// A scratch directory (keep it) and a socket path in it.
    fn socket_path(name: &str) -> (crate::scratch::ScratchDir, std::path::PathBuf) {
        let dir = crate::scratch::scratch_dir(name);
        let path = dir.join("w.sock");
        (dir, path)
    }

    /// Answers GET_VALUES on every connection, as a live worker does.
    async fn answering(listener: tokio::net::UnixListener) {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut dec = ServerConnection::new(Limits::default());
                loop {
                    while let Ok(Some(ev)) = dec.next_event() {
                        if let ServerEvent::GetValues { .. } = ev {
                            let mut out = BytesMut::new();
                            fastcgi_server::server::write_get_values_result(
                                &mut out,
                                [(&b"FCGI_MPXS_CONNS"[..], &b"0"[..])],
                            );
                            let _ = s.write_all(&out).await;
                        }
                    }
                    if !matches!(s.read_buf(dec.buffer_mut()).await, Ok(1..)) {
                        return;
                    }
                }
            });
        }
    }

    #[tokio::test]
    async fn a_worker_that_answers_keeps_its_slot() {
        let (_dir, path) = socket_path("live");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        tokio::spawn(answering(listener));
        let (mut slot, _) =
            SlotConn::connect(Arc::new(WorkerHandle::new("p".into(), 0, path.clone()))).await.expect("connect");
        assert!(slot.reconnect_verified().await);
    }

    #[tokio::test]
    async fn a_socket_nobody_accepts_on_loses_its_slot() {
        // A dying worker: its listening socket still takes connections into the backlog,
        // but no thread will accept them.
        let (_dir, path) = socket_path("dying");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let (mut slot, _) =
            SlotConn::connect(Arc::new(WorkerHandle::new("p".into(), 0, path.clone()))).await.expect("connect");
        let started = std::time::Instant::now();
        assert!(!slot.reconnect_verified().await);
        assert!(started.elapsed() >= PROBE_TIMEOUT);
        drop(listener);
    }
}
