//! The FastCGI front end to end inside one process: a web-server side made with the
//! protocol crate's client encoders, the bridge's connection task, and a stand-in worker
//! (a FastCGI responder written with the protocol crate's server side) behind a real unix
//! socket. The Python worker and real web servers are covered by integration/.
use super::context::ListenerCtx;
use super::{fastcgi, scgi, Sock};
use crate::backend::SlotConn;
use crate::config;
use crate::registry::Registry;
use crate::route::Router;
use crate::supervise::PoolRuntime;
use crate::worker_handle::WorkerHandle;
use bytes::BytesMut;
use fastcgi_server::client::{self, ClientConnection, ClientEvent};
use fastcgi_server::server::{self, ServerConnection, ServerEvent};
use fastcgi_server::{record::Padding, Limits, ProtocolStatus, Role};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

fn pool_config(threads: u32) -> config::Pool {
    config::Pool {
        name: "test".to_owned(),
        chdir: std::env::temp_dir(),
        threads,
        queue_size: 16,
        queue_timeout: Duration::from_millis(300),
        startup_timeout: Duration::from_secs(5),
        ..config::Pool::for_tests()
    }
}

/// A worker that answers every request with "hello <REQUEST_URI> <body length>"; the path
/// /slow waits for an ABORT_REQUEST and then ends the request.
async fn fake_worker(listener: UnixListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else { return };
        tokio::spawn(async move {
            let mut dec = ServerConnection::new(Limits::default());
            let mut uri = Vec::new();
            let mut body = 0usize;
            loop {
                while let Ok(Some(ev)) = dec.next_event() {
                    let mut out = BytesMut::new();
                    match ev {
                        ServerEvent::Params { params, .. } => uri = params.get(b"REQUEST_URI").unwrap_or(b"").to_vec(),
                        ServerEvent::Stdin { data, .. } => body += data.len(),
                        ServerEvent::StdinEnd { id } if uri != b"/slow" => {
                            let text = format!(
                                "Status: 200 OK\r\nX-Hop: 1\r\nTransfer-Encoding: chunked\r\n\r\nhello {} {body}",
                                String::from_utf8_lossy(&uri)
                            );
                            server::write_stdout(&mut out, id, text.as_bytes(), Padding::None);
                            server::write_end_request(&mut out, id, 0, ProtocolStatus::RequestComplete, Padding::None);
                            dec.end_request(id);
                            body = 0;
                        }
                        ServerEvent::Abort { id } => {
                            server::write_end_request(&mut out, id, 0, ProtocolStatus::RequestComplete, Padding::None);
                        }
                        _ => {}
                    }
                    if !out.is_empty() && s.write_all(&out).await.is_err() {
                        return;
                    }
                }
                let b = dec.buffer_mut();
                b.reserve(4096);
                match s.read_buf(b).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        });
    }
}

struct Front {
    stream: UnixStream,
    dec: ClientConnection,
}

impl Front {
    async fn send(&mut self, bytes: &[u8]) {
        assert!(self.stream.write_all(bytes).await.is_ok());
    }

    async fn next(&mut self) -> Option<ClientEvent> {
        loop {
            if let Ok(Some(ev)) = self.dec.next_event() {
                return Some(ev);
            }
            let b = self.dec.buffer_mut();
            b.reserve(4096);
            match tokio::time::timeout(Duration::from_secs(5), self.stream.read_buf(b)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    /// Whether the bridge closes (or resets) the connection within 10 s, sending nothing.
    async fn closed_unanswered(&mut self) -> bool {
        let mut buf = [0u8; 256];
        matches!(tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
    }

    /// STDOUT of request `id` until its END_REQUEST.
    async fn response(&mut self, id: u16) -> Option<(String, u32)> {
        let mut out = Vec::new();
        loop {
            match self.next().await? {
                ClientEvent::Stdout { id: i, data } if i == id => out.extend_from_slice(&data),
                ClientEvent::EndRequest { id: i, app_status, .. } if i == id => {
                    return Some((String::from_utf8_lossy(&out).into_owned(), app_status))
                }
                _ => {}
            }
        }
    }
}

fn request(out: &mut BytesMut, id: u16, uri: &str, body: &[u8], keep: bool) {
    client::write_begin_request(out, id, Role::Responder, keep);
    client::write_params(out, id, [(&b"REQUEST_URI"[..], uri.as_bytes()), (&b"REQUEST_METHOD"[..], &b"GET"[..])]);
    client::write_stdin(out, id, body);
    client::write_stdin_end(out, id);
}

/// A bridge connection task in front of a fake worker with `threads` slots.
async fn setup(threads: u32) -> Front {
    let (ctx, (ours, theirs)) = setup_ctx(threads).await;
    let sock = Sock { fd: std::os::fd::AsRawFd::as_raw_fd(&theirs), tcp: false };
    let (r, w) = theirs.into_split();
    tokio::spawn(fastcgi::serve_connection(r, w, ctx, "test-peer".to_owned(), sock));
    Front { stream: ours, dec: ClientConnection::new(Limits::default()) }
}

/// The listener context in front of a fake worker, and a connected socket pair (ours,
/// the bridge's).
async fn setup_ctx(threads: u32) -> (Arc<ListenerCtx>, (UnixStream, UnixStream)) {
    setup_ctx_with(threads, 64 << 20).await
}

/// A bridge connection task in front of a fake worker with `threads` slots, in a daemon
/// whose `header-memory` is `header_memory`; and the listener's context.
async fn setup_with(threads: u32, header_memory: u64) -> (Front, Arc<ListenerCtx>) {
    let (ctx, _) = setup_ctx_with(threads, header_memory).await;
    (attach(&ctx), ctx)
}

/// A new connection to the listener of `ctx`.
fn attach(ctx: &Arc<ListenerCtx>) -> Front {
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let sock = Sock { fd: std::os::fd::AsRawFd::as_raw_fd(&theirs), tcp: false };
    let (r, w) = theirs.into_split();
    tokio::spawn(fastcgi::serve_connection(r, w, ctx.clone(), "test-peer".to_owned(), sock));
    Front { stream: ours, dec: ClientConnection::new(Limits::default()) }
}

async fn setup_ctx_with(threads: u32, header_memory: u64) -> (Arc<ListenerCtx>, (UnixStream, UnixStream)) {
    let dir = crate::scratch::scratch_dir("front");
    let sock = dir.join("w.sock");
    let listener = UnixListener::bind(&sock).expect("bind fake worker");
    // The directory goes with the worker's task, when the test's runtime drops it.
    tokio::spawn(async move {
        let _dir = dir;
        fake_worker(listener).await
    });
    let pool = PoolRuntime::new(pool_config(threads));
    let handle = Arc::new(WorkerHandle::new(pool.name.clone(), 0, sock));
    for _ in 0..threads {
        let (slot, _) = SlotConn::connect(handle.clone()).await.expect("connect fake worker");
        pool.dispatcher.release(slot);
    }
    let ctx = Arc::new(ListenerCtx {
        name: "test".to_owned(),
        router: Router::new([(None, None, crate::supervise::instances::Target::Pool(pool.clone()))]),
        limits: Limits::default(),
        max_reqs: pool.capacity(),
        max_conns: 1024,
        header_timeout: std::time::Duration::from_secs(60),
        body_timeout: std::time::Duration::from_secs(60),
        body_min_rate: 500,
        send_timeout: std::time::Duration::from_secs(60),
        keepalive_timeout: std::time::Duration::from_secs(300),
        open_conns: Arc::new(AtomicUsize::new(0)),
        registry: Arc::new(Registry::new(None, header_memory, Vec::new(), Default::default())),
        status_path: None,
        ping_path: None,
        stopping: tokio::sync::watch::channel(false).1,
        dialect: Default::default(),
        max_redirects: 10,
        unrouted_redirect: Default::default(),
        redirect_pools: Default::default(),
        trusted_proxies: None,
        allowed_clients: None,
        files: None,
        mount: None,
        keep_path_info: false,
        protocol: config::Protocol::FastCgi,
        succession: Default::default(),
    });
    (ctx, UnixStream::pair().expect("socketpair"))
}

#[tokio::test]
async fn request_response_with_clean_headers() {
    let mut f = setup(1).await;
    let mut out = BytesMut::new();
    request(&mut out, 1, "/a", b"12345", true);
    f.send(&out).await;
    let (text, status) = f.response(1).await.expect("response");
    assert_eq!(status, 0);
    assert_eq!(text, "Status: 200 OK\r\nX-Hop: 1\r\n\r\nhello /a 5");
    // The kept connection serves the next request too.
    out.clear();
    request(&mut out, 1, "/b", b"", true);
    f.send(&out).await;
    assert_eq!(f.response(1).await.map(|r| r.0), Some("Status: 200 OK\r\nX-Hop: 1\r\n\r\nhello /b 0".to_owned()));
}

#[tokio::test]
async fn multiplexed_requests_share_one_slot() {
    let mut f = setup(1).await;
    let mut out = BytesMut::new();
    for id in 1..=3u16 {
        request(&mut out, id, &format!("/r{id}"), b"", true);
    }
    f.send(&out).await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match f.next().await {
            Some(ClientEvent::EndRequest { id, .. }) => seen.push(id),
            Some(_) => {}
            None => break,
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, vec![1, 2, 3]);
}

#[tokio::test]
async fn get_values_unknown_type_and_unknown_role() {
    let mut f = setup(2).await;
    let mut out = BytesMut::new();
    client::write_get_values(&mut out, [&b"FCGI_MPXS_CONNS"[..], &b"FCGI_MAX_REQS"[..], &b"NOPE"[..]]);
    fastcgi_server::record::write_record(&mut out, fastcgi_server::RecordType::Other(42), 0, &[], Padding::None);
    client::write_begin_request(&mut out, 7, Role::Filter, true);
    f.send(&out).await;
    match f.next().await {
        Some(ClientEvent::GetValuesResult { values }) => {
            assert_eq!(values.get(b"FCGI_MPXS_CONNS"), Some(&b"1"[..]));
            assert_eq!(values.get(b"FCGI_MAX_REQS"), Some(&b"18"[..]));
            assert_eq!(values.get(b"NOPE"), None);
        }
        other => panic!("expected GET_VALUES_RESULT, got {other:?}"),
    }
    assert_eq!(f.next().await, Some(ClientEvent::UnknownType { record_type: 42 }));
    let mut saw_end = false;
    while let Some(ev) = f.next().await {
        if let ClientEvent::EndRequest { id: 7, protocol_status, .. } = ev {
            assert_eq!(protocol_status, ProtocolStatus::UnknownRole);
            saw_end = true;
            break;
        }
    }
    assert!(saw_end);
}

/// Request `id` for /slow (it runs until aborted), returned once the connection has
/// handled it: a GET_VALUES sent after it is answered only then.
async fn start_slow(f: &mut Front, id: u16) {
    let mut out = BytesMut::new();
    request(&mut out, id, "/slow", b"", true);
    client::write_get_values(&mut out, [&b"FCGI_MPXS_CONNS"[..]]);
    f.send(&out).await;
    assert!(matches!(f.next().await, Some(ClientEvent::GetValuesResult { .. })));
}

#[tokio::test]
async fn abort_ends_the_request_and_frees_the_slot() {
    let mut f = setup(1).await;
    start_slow(&mut f, 1).await;
    let mut out = BytesMut::new();
    client::write_abort(&mut out, 1);
    f.send(&out).await;
    assert!(f.response(1).await.is_some(), "END_REQUEST after ABORT_REQUEST");
    // The only slot came back: the next request is served.
    out.clear();
    request(&mut out, 2, "/after", b"", true);
    f.send(&out).await;
    let (text, _) = f.response(2).await.expect("served after the abort");
    assert!(text.ends_with("hello /after 0"), "{text}");
}

#[tokio::test]
async fn queue_timeout_answers_503() {
    let mut f = setup(1).await;
    let mut out = BytesMut::new();
    // /slow holds the only slot; the second request waits out the 300 ms queue timeout.
    request(&mut out, 1, "/slow", b"", true);
    request(&mut out, 2, "/waits", b"", true);
    f.send(&out).await;
    let (text, _) = f.response(2).await.expect("503");
    assert!(text.starts_with("Status: 503 Service Unavailable\r\n"), "{text}");
    assert!(text.contains("Retry-After: "), "{text}");
}

#[tokio::test]
async fn scgi_request_gets_a_cgi_response_then_close() {
    let (ctx, (mut ours, theirs)) = setup_ctx(1).await;
    let sock = Sock { fd: std::os::fd::AsRawFd::as_raw_fd(&theirs), tcp: false };
    let (r, w) = theirs.into_split();
    tokio::spawn(scgi::serve_connection(r, w, ctx, "test-peer".to_owned(), sock));
    let mut out = BytesMut::new();
    fastcgi_server::scgi::write_request(
        &mut out,
        3,
        [(&b"REQUEST_URI"[..], &b"/s"[..]), (&b"REQUEST_METHOD"[..], &b"POST"[..])],
    );
    out.extend_from_slice(b"abc");
    assert!(ours.write_all(&out).await.is_ok());
    let mut resp = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), ours.read_to_end(&mut resp)).await;
    assert!(matches!(read, Ok(Ok(_))), "the bridge closes after the response");
    assert_eq!(String::from_utf8_lossy(&resp), "Status: 200 OK\r\nX-Hop: 1\r\n\r\nhello /s 3");
}

#[tokio::test]
async fn a_slot_whose_worker_is_gone_is_skipped_not_502() {
    let (ctx, (ours, theirs)) = setup_ctx(1).await;
    // A second slot whose worker has closed the connection (died while the slot was idle).
    let dir = crate::scratch::scratch_dir("front-dead");
    let path = dir.join("dead.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let Some(crate::supervise::instances::Target::Pool(pool)) = ctx.router.targets().next().cloned() else {
        panic!("pool")
    };
    let (dead, _) = SlotConn::connect(Arc::new(WorkerHandle::new(pool.name.clone(), 0, path))).await.expect("connect");
    drop(listener.accept().await);
    drop(listener);
    // Released last, so handed out first.
    pool.dispatcher.release(dead);

    let sock = Sock { fd: std::os::fd::AsRawFd::as_raw_fd(&theirs), tcp: false };
    let (r, w) = theirs.into_split();
    tokio::spawn(fastcgi::serve_connection(r, w, ctx, "test-peer".to_owned(), sock));
    let mut f = Front { stream: ours, dec: ClientConnection::new(Limits::default()) };
    let mut out = BytesMut::new();
    request(&mut out, 1, "/retried", b"xy", true);
    f.send(&out).await;
    let (text, _) = f.response(1).await.expect("response");
    assert!(text.ends_with("hello /retried 2"), "{text}");
}

/// A POST declaring a 10-byte body, with a `pad`-byte header, whose body has not come.
fn waiting(out: &mut BytesMut, id: u16, pad: usize) {
    client::write_begin_request(out, id, Role::Responder, true);
    let pad = vec![b'p'; pad];
    client::write_params(
        out,
        id,
        [
            (&b"REQUEST_URI"[..], &b"/waits"[..]),
            (&b"REQUEST_METHOD"[..], &b"POST"[..]),
            (&b"CONTENT_LENGTH"[..], &b"10"[..]),
            (&b"HTTP_X_PAD"[..], &pad[..]),
        ],
    );
}

/// Wait until `f` holds, for at most 10 s.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 10s: {what}");
}

#[tokio::test]
async fn a_waiting_request_holds_header_memory_until_a_worker_takes_it() {
    let (mut f, ctx) = setup_with(1, 1 << 20).await;
    let budget = ctx.registry.header_budget.clone();
    let mut out = BytesMut::new();
    // Complete headers, and 4 of its 10 body bytes read ahead before a worker is taken.
    waiting(&mut out, 1, 100_000);
    client::write_stdin(&mut out, 1, b"abcd");
    f.send(&out).await;
    let cost = 100_000 + crate::listen::limits::REQUEST_OVERHEAD;
    eventually("the waiting request charged", || budget.used() > cost).await;
    assert!(budget.used() < cost + 1000, "{} bytes charged", budget.used());
    // The rest of its body: a worker takes it, and the charge is given back.
    out.clear();
    client::write_stdin(&mut out, 1, b"efghij");
    client::write_stdin_end(&mut out, 1);
    f.send(&out).await;
    let (text, _) = f.response(1).await.expect("served");
    assert!(text.ends_with("hello /waits 10"), "{text}");
    assert_eq!(budget.used(), 0);
    // Given back as soon as a worker has the request, not only when it ends: /slow runs
    // until aborted.
    out.clear();
    client::write_begin_request(&mut out, 2, Role::Responder, true);
    let pad = vec![b'p'; 100_000];
    client::write_params(&mut out, 2, [(&b"REQUEST_URI"[..], &b"/slow"[..]), (&b"HTTP_X_PAD"[..], &pad[..])]);
    client::write_stdin_end(&mut out, 2);
    // Answered once the records before it are handled: the request has started by then.
    client::write_get_values(&mut out, [&b"FCGI_MPXS_CONNS"[..]]);
    f.send(&out).await;
    assert!(matches!(f.next().await, Some(ClientEvent::GetValuesResult { .. })));
    eventually("the running request's charge given back", || budget.used() == 0).await;
    out.clear();
    client::write_abort(&mut out, 2);
    f.send(&out).await;
    assert!(f.response(2).await.is_some(), "END_REQUEST after ABORT_REQUEST");
}

#[tokio::test]
async fn waiting_requests_past_header_memory_close_their_connection() {
    let (mut f, ctx) = setup_with(1, 1 << 20).await;
    let budget = ctx.registry.header_budget.clone();
    // Before the fix, finished headers were not counted: all ten (2 MB) were held.
    let mut out = BytesMut::new();
    for id in 1..=10 {
        waiting(&mut out, id, 200_000);
    }
    // The bridge may close while this is written.
    let _ = f.stream.write_all(&out).await;
    // Closed with no END_REQUEST for any of them, as for unfinished headers past the budget.
    assert!(f.closed_unanswered().await);
    eventually("every charge given back", || budget.used() == 0).await;
    // Other connections carry on.
    let mut g = attach(&ctx);
    out.clear();
    request(&mut out, 1, "/next", b"", true);
    g.send(&out).await;
    assert!(g.response(1).await.is_some_and(|(text, _)| text.ends_with("hello /next 0")));
}

#[tokio::test]
async fn an_scgi_request_waiting_for_its_body_holds_header_memory() {
    let (ctx, _) = setup_ctx_with(1, 1 << 20).await;
    let budget = ctx.registry.header_budget.clone();
    // Two complete 600 KB netstrings declaring 10 body bytes that do not come yet.
    let scgi = || {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let sock = Sock { fd: std::os::fd::AsRawFd::as_raw_fd(&theirs), tcp: false };
        let (r, w) = theirs.into_split();
        tokio::spawn(scgi::serve_connection(r, w, ctx.clone(), "test-peer".to_owned(), sock));
        ours
    };
    let mut head = BytesMut::new();
    let pad = vec![b'p'; 600_000];
    fastcgi_server::scgi::write_request(
        &mut head,
        10,
        [(&b"REQUEST_URI"[..], &b"/s"[..]), (&b"HTTP_X_PAD"[..], &pad[..])],
    );
    let mut first = scgi();
    assert!(first.write_all(&head).await.is_ok());
    eventually("the first request charged", || budget.used() > 600_000).await;
    // The second would pass the budget: closed unanswered, as for unfinished headers.
    let mut second = Front { stream: scgi(), dec: ClientConnection::new(Limits::default()) };
    let _ = second.stream.write_all(&head).await;
    assert!(second.closed_unanswered().await);
    // The first carries on once its body comes, and gives its charge back.
    assert!(first.write_all(b"0123456789").await.is_ok());
    let mut resp = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), first.read_to_end(&mut resp)).await;
    assert!(matches!(read, Ok(Ok(_))), "the bridge closes after the response");
    assert!(String::from_utf8_lossy(&resp).ends_with("hello /s 10"));
    assert_eq!(budget.used(), 0);
}

#[tokio::test]
async fn requests_past_fcgi_max_reqs_on_one_connection_are_overloaded() {
    let (mut f, ctx) = setup_with(1, 64 << 20).await;
    let max = ctx.max_reqs as u16;
    let mut out = BytesMut::new();
    for id in 1..=max + 1 {
        waiting(&mut out, id, 10);
    }
    f.send(&out).await;
    assert_eq!(f.next().await, Some(ClientEvent::StdoutEnd { id: max + 1 }));
    assert!(matches!(
        f.next().await,
        Some(ClientEvent::EndRequest { protocol_status: ProtocolStatus::Overloaded, id, .. }) if id == max + 1
    ));
    // Those within the bound carry on: the first one's body comes, it is answered.
    out.clear();
    client::write_stdin(&mut out, 1, b"0123456789");
    client::write_stdin_end(&mut out, 1);
    f.send(&out).await;
    assert!(f.response(1).await.is_some_and(|(text, _)| text.ends_with("hello /waits 10")));
}

#[tokio::test]
async fn a_begin_request_for_a_running_id_closes_the_connection() {
    let mut f = setup(1).await;
    // /slow runs until aborted; its id comes again before its END_REQUEST.
    start_slow(&mut f, 1).await;
    let mut out = BytesMut::new();
    request(&mut out, 1, "/again", b"", true);
    f.send(&out).await;
    // Before: the running request was dropped and the new one answered in its place (or
    // neither). Now a protocol error: closed, neither answered.
    assert!(f.closed_unanswered().await);
}

#[tokio::test]
async fn an_id_aborted_before_its_params_ended_may_begin_again() {
    let mut f = setup(1).await;
    let mut out = BytesMut::new();
    client::write_begin_request(&mut out, 1, Role::Responder, true);
    // One PARAMS record with a pair, its end never sent: the request is still starting.
    let mut params = BytesMut::new();
    client::write_params(&mut params, 1, [(&b"REQUEST_URI"[..], &b"/first"[..])]);
    out.extend_from_slice(&params[..params.len() - 8]);
    client::write_abort(&mut out, 1);
    f.send(&out).await;
    assert!(f.response(1).await.is_some(), "END_REQUEST after ABORT_REQUEST");
    // Ended: the id is the web server's to use again, on the same connection.
    out.clear();
    request(&mut out, 1, "/again", b"", true);
    f.send(&out).await;
    let (text, _) = f.response(1).await.expect("served");
    assert!(text.ends_with("hello /again 0"), "{text}");
}

/// A connection's task holds its future from accept to close, also while idle: no buffer
/// may sit in it (an 8 KiB one inline made a thousand idle connections cost 9 MB).
#[tokio::test]
async fn connection_futures_stay_small() {
    let (ctx, (_ours, theirs)) = setup_ctx(1).await;
    let sock = Sock { fd: std::os::fd::AsRawFd::as_raw_fd(&theirs), tcp: false };
    let (r, w) = theirs.into_split();
    let fcgi = fastcgi::serve_connection(r, w, ctx.clone(), "test-peer".to_owned(), sock);
    assert!(std::mem::size_of_val(&fcgi) <= 2048, "FastCGI connection future: {} bytes", std::mem::size_of_val(&fcgi));
    let (_ours, theirs) = UnixStream::pair().expect("socketpair");
    let (r, w) = theirs.into_split();
    let scgi = scgi::serve_connection(r, w, ctx, "test-peer".to_owned(), sock);
    assert!(std::mem::size_of_val(&scgi) <= 2048, "SCGI connection future: {} bytes", std::mem::size_of_val(&scgi));
}

#[tokio::test]
async fn an_scgi_request_answered_without_a_worker_gives_its_charge_back_before_the_lingering_close() {
    let (mut ctx, _) = setup_ctx_with(1, 64 << 20).await;
    // The pool is mounted at /app only: /elsewhere is answered 404, no worker taken.
    let Some(target) = ctx.router.targets().next().cloned() else { panic!("a pool") };
    let Some(c) = Arc::get_mut(&mut ctx) else { panic!("the only reference") };
    c.router = Router::new([(None, Some("/app".to_owned()), target)]);
    let budget = ctx.registry.header_budget.clone();
    let (mut ours, theirs) = UnixStream::pair().expect("socketpair");
    let sock = Sock { fd: std::os::fd::AsRawFd::as_raw_fd(&theirs), tcp: false };
    let (r, w) = theirs.into_split();
    tokio::spawn(scgi::serve_connection(r, w, ctx.clone(), "test-peer".to_owned(), sock));
    let mut head = BytesMut::new();
    let pad = vec![b'p'; 100_000];
    fastcgi_server::scgi::write_request(
        &mut head,
        0,
        [(&b"REQUEST_URI"[..], &b"/elsewhere"[..]), (&b"HTTP_X_PAD"[..], &pad[..])],
    );
    assert!(ours.write_all(&head).await.is_ok());
    let mut resp = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), ours.read(&mut resp)).await;
    let n = n.expect("answered within 10 s").expect("read");
    assert!(resp[..n].starts_with(b"Status: 404"), "{}", String::from_utf8_lossy(&resp[..n]));
    // The client keeps the connection open: the bridge reads what it sends for a while
    // before it closes, holding nothing of the request's.
    eventually("the SCGI request's charge given back while its connection lingers", || budget.used() == 0).await;
}
