//! Golden tests: bytes real web servers sent, captured by `scripts/capture-fastcgi` (see
//! `tests/golden/CAPTURES.txt` for the server versions). Each capture is decoded whole and one
//! byte at a time; both must give the same events, and the events what the server meant.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use bytes::Bytes;
use fastcgi_server::record::{Header, RecordType, HEADER_LEN};
use fastcgi_server::scgi::{ScgiDecoder, ScgiEvent};
use fastcgi_server::server::{ServerConnection, ServerEvent};
use fastcgi_server::{Limits, Params, Role};

const BODY: &[u8] = b"name=widget&colour=blue&q=1";

fn capture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run scripts/capture-fastcgi)", path.display()))
}

fn events(wire: &[u8], piece: usize) -> Vec<ServerEvent> {
    let mut c = ServerConnection::new(Limits::default());
    let mut ev = Vec::new();
    for p in wire.chunks(piece) {
        c.feed(p);
        while let Some(e) = c.next_event().unwrap() {
            ev.push(e);
        }
    }
    assert_eq!(c.buffered(), 0, "a capture ends on a record boundary");
    ev
}

/// One request as the application sees it.
#[derive(Debug, Default)]
struct Request {
    id: u16,
    role: Option<Role>,
    keep_conn: bool,
    params: Params,
    stdin: Vec<u8>,
    stdin_records: usize,
    stdin_end: bool,
}

/// Decode a FastCGI capture (whole and byte by byte) into its requests and GET_VALUES names.
fn decode(name: &str) -> (Vec<Request>, Vec<Vec<Bytes>>) {
    let wire = capture(name);
    let whole = events(&wire, wire.len());
    assert_eq!(whole, events(&wire, 1), "{name}: byte-at-a-time decoding differs");
    assert_eq!(whole, events(&wire, 7), "{name}: 7-byte pieces decode differently");
    let mut reqs: Vec<Request> = Vec::new();
    let mut get_values = Vec::new();
    for e in whole {
        match e {
            ServerEvent::BeginRequest { id, role, keep_conn } => {
                reqs.push(Request { id, role: Some(role), keep_conn, ..Request::default() })
            }
            ServerEvent::Params { id, params } => {
                let r = reqs.iter_mut().rev().find(|r| r.id == id).unwrap();
                r.params = params;
            }
            ServerEvent::Stdin { id, data } => {
                let r = reqs.iter_mut().rev().find(|r| r.id == id).unwrap();
                r.stdin.extend_from_slice(&data);
                r.stdin_records += 1;
            }
            ServerEvent::StdinEnd { id } => reqs.iter_mut().rev().find(|r| r.id == id).unwrap().stdin_end = true,
            ServerEvent::GetValues { names } => get_values.push(names),
            e => panic!("{name}: unexpected {e:?}"),
        }
    }
    for r in &reqs {
        match r.role {
            Some(Role::Responder) => {
                assert!(r.stdin_end, "{name}: request {} has no end of STDIN", r.id)
            }
            // mod_authnz_fcgi sends no STDIN at all to an authorizer
            Some(Role::Authorizer) => assert!(!r.stdin_end && r.stdin.is_empty(), "{name}"),
            role => panic!("{name}: role {role:?}"),
        }
    }
    (reqs, get_values)
}

/// The non-empty PARAMS record lengths in a capture.
fn params_records(name: &str) -> Vec<usize> {
    let wire = capture(name);
    let mut pos = 0;
    let mut v = Vec::new();
    while let Some(h) = Header::peek(&wire[pos..]) {
        if h.record_type == RecordType::Params && h.content_length > 0 {
            v.push(h.content_length as usize);
        }
        pos += h.record_len();
    }
    v
}

fn param<'a>(r: &'a Request, name: &str) -> Option<&'a str> {
    r.params.get(name.as_bytes()).map(|v| std::str::from_utf8(v).unwrap())
}

fn one(name: &str) -> Request {
    let (mut reqs, _) = decode(name);
    assert_eq!(reqs.len(), 1, "{name}");
    reqs.remove(0)
}

/// What every server sends for `GET <prefix>/hello/world?x=1&y=two`.
fn check_get(r: &Request, prefix: &str) {
    assert_eq!(param(r, "REQUEST_METHOD"), Some("GET"));
    assert_eq!(param(r, "QUERY_STRING"), Some("x=1&y=two"));
    assert_eq!(param(r, "REQUEST_URI"), Some(&*format!("{prefix}/hello/world?x=1&y=two")));
    assert_eq!(param(r, "HTTP_COOKIE"), Some("a=1; b=2"));
    assert_eq!(param(r, "HTTP_ACCEPT_LANGUAGE"), Some("en-GB,en;q=0.5"));
    assert_eq!(param(r, "HTTP_X_DUP"), Some("one"));
    assert!(r.stdin.is_empty());
}

fn check_post(r: &Request) {
    assert_eq!(param(r, "REQUEST_METHOD"), Some("POST"));
    assert_eq!(param(r, "CONTENT_LENGTH"), Some("27"));
    assert_eq!(param(r, "CONTENT_TYPE"), Some("application/x-www-form-urlencoded"));
    assert_eq!(r.stdin, BODY);
}

fn check_big(r: &Request, count: usize) {
    for i in 0..count {
        let want = vec![b'a' + i as u8; 6000];
        assert_eq!(r.params.get(format!("HTTP_X_BIG_{i}").as_bytes()), Some(&want[..]), "X-Big-{i}");
    }
}

// ---- nginx ----

#[test]
fn nginx_get() {
    let r = one("nginx-get.bin");
    check_get(&r, "/app");
    assert!(!r.keep_conn);
    assert_eq!(r.id, 1);
    // fastcgi_params sends these even when empty
    assert_eq!(param(&r, "CONTENT_LENGTH"), Some(""));
    assert_eq!(param(&r, "SCRIPT_NAME"), Some("/app/hello/world"));
    assert_eq!(param(&r, "PATH_INFO"), None);
}

#[test]
fn nginx_post() {
    check_post(&one("nginx-post.bin"));
}

#[test]
fn nginx_big_headers_fit_one_record() {
    check_big(&one("nginx-big-headers.bin"), 3);
    assert_eq!(params_records("nginx-big-headers.bin").len(), 1);
}

#[test]
fn nginx_keepalive_reuses_id_1() {
    let (reqs, _) = decode("nginx-keepalive.bin");
    assert_eq!(reqs.len(), 2);
    assert!(reqs.iter().all(|r| r.keep_conn && r.id == 1));
    assert_eq!(param(&reqs[0], "REQUEST_URI"), Some("/keep/first?n=1"));
    assert_eq!(param(&reqs[1], "REQUEST_METHOD"), Some("POST"));
    assert_eq!(reqs[1].stdin, b"second body");
}

#[test]
fn nginx_unbuffered_chunked_body_has_empty_content_length() {
    let r = one("nginx-chunked-unbuffered.bin");
    assert_eq!(param(&r, "CONTENT_LENGTH"), Some(""));
    assert_eq!(param(&r, "HTTP_TRANSFER_ENCODING"), Some("chunked"));
    assert_eq!(r.stdin, BODY.repeat(3), "de-chunked by nginx");
}

#[test]
fn nginx_overridden_param_last_wins() {
    let r = one("nginx-override-param.bin");
    assert_eq!(param(&r, "SCRIPT_NAME"), Some("/overridden"));
    assert_eq!(r.params.iter().filter(|(n, _)| *n == b"SCRIPT_NAME").count(), 1);
    // the raw stream really carries the name twice
    let wire = capture("nginx-override-param.bin");
    assert_eq!(wire.windows(11).filter(|w| w == b"SCRIPT_NAME").count(), 2);
}

// ---- Apache httpd mod_proxy_fcgi ----

#[test]
fn apache_get() {
    let r = one("apache-get.bin");
    check_get(&r, "/app");
    assert!(!r.keep_conn);
    assert!(param(&r, "SCRIPT_FILENAME").unwrap().starts_with("proxy:fcgi://"));
}

#[test]
fn apache_post() {
    check_post(&one("apache-post.bin"));
}

#[test]
fn apache_splits_params_on_pair_boundaries() {
    let r = one("apache-big-headers.bin");
    check_big(&r, 4);
    let recs = params_records("apache-big-headers.bin");
    assert!(recs.len() >= 2, "{recs:?}");
    assert!(recs.iter().all(|&n| n <= 16 << 10), "{recs:?}");
}

#[test]
fn apache_streams_chunked_body_without_content_length() {
    let r = one("apache-chunked.bin");
    assert_eq!(param(&r, "CONTENT_LENGTH"), None);
    assert_eq!(r.stdin, BODY.repeat(3));
    assert!(r.stdin_records > 1, "one STDIN record per HTTP chunk");
}

#[test]
fn apache_enablereuse_keeps_conn() {
    let (reqs, _) = decode("apache-keepalive.bin");
    assert_eq!(reqs.len(), 2);
    assert!(reqs.iter().all(|r| r.keep_conn && r.id == 1));
    assert_eq!(reqs[1].stdin, b"second body");
}

#[test]
fn apache_authnz_fcgi_authorizer_gets_no_stdin() {
    let r = one("apache-authorizer.bin");
    assert_eq!(r.role, Some(Role::Authorizer));
    assert!(!r.keep_conn);
    assert_eq!(param(&r, "FCGI_ROLE"), Some("AUTHORIZER"));
    assert_eq!(param(&r, "REMOTE_USER"), Some("alice"));
    assert_eq!(param(&r, "REMOTE_PASSWD"), Some("secret"));
    assert_eq!(param(&r, "AUTH_TYPE"), Some("Basic"));
    // The decoder releases an authorizer's id once PARAMS end: nothing else will come.
    let mut c = ServerConnection::new(Limits::default());
    c.feed(&capture("apache-authorizer.bin"));
    while c.next_event().unwrap().is_some() {}
    assert_eq!(c.active_requests(), 0);
    // After authorizing, Apache sends the request on to the responder.
    let r = one("apache-authorizer.2.bin");
    assert_eq!(r.role, Some(Role::Responder));
    check_get(&r, "/auth");
    assert_eq!(param(&r, "REMOTE_USER"), Some("alice"));
}

// ---- lighttpd ----

#[test]
fn lighttpd_get_splits_path_info() {
    let r = one("lighttpd-get.bin");
    check_get(&r, "/app");
    assert_eq!(param(&r, "SCRIPT_NAME"), Some("/app"));
    assert_eq!(param(&r, "PATH_INFO"), Some("/hello/world"));
    assert_eq!(param(&r, "CONTENT_LENGTH"), Some("0"));
    assert!(!r.keep_conn);
}

#[test]
fn lighttpd_post() {
    check_post(&one("lighttpd-post.bin"));
}

#[test]
fn lighttpd_big_headers() {
    check_big(&one("lighttpd-big-headers.bin"), 3);
}

#[test]
fn lighttpd_buffers_chunked_body() {
    let r = one("lighttpd-chunked.bin");
    assert_eq!(param(&r, "CONTENT_LENGTH"), Some("81"));
    assert_eq!(r.stdin, BODY.repeat(3));
}

// ---- HAProxy fcgi-app ----

#[test]
fn haproxy_get_values_then_request() {
    let (reqs, gv) = decode("haproxy-get.bin");
    assert_eq!(gv.len(), 1);
    let names: Vec<&[u8]> = gv[0].iter().map(|b| &b[..]).collect();
    assert!(names.contains(&&b"FCGI_MPXS_CONNS"[..]), "{names:?}");
    assert!(names.contains(&&b"FCGI_MAX_REQS"[..]), "{names:?}");
    assert_eq!(reqs.len(), 1);
    check_get(&reqs[0], "/app");
    assert!(reqs[0].keep_conn);
}

#[test]
fn haproxy_post() {
    check_post(&one("haproxy-post.bin"));
}

#[test]
fn haproxy_big_headers() {
    check_big(&one("haproxy-big-headers.bin"), 3);
}

#[test]
fn haproxy_multiplexes_request_ids() {
    let (reqs, _) = decode("haproxy-multiplexed.bin");
    assert!(reqs.len() >= 2, "several requests on one connection");
    let mut ids: Vec<u16> = reqs.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), reqs.len(), "distinct request ids");
    assert!(reqs.iter().all(|r| r.keep_conn && param(r, "REQUEST_URI").unwrap().starts_with("/app/par?i=")));
}

// ---- h2o ----

#[test]
fn h2o_get_has_empty_script_name() {
    let r = one("h2o-get.bin");
    check_get(&r, "/app");
    assert_eq!(param(&r, "SCRIPT_NAME"), Some(""));
    assert_eq!(param(&r, "PATH_INFO"), Some("/app/hello/world"));
    assert_eq!(param(&r, "CONTENT_LENGTH"), None, "no body, no CONTENT_LENGTH");
}

#[test]
fn h2o_post() {
    check_post(&one("h2o-post.bin"));
}

#[test]
fn h2o_splits_params_inside_a_pair() {
    check_big(&one("h2o-big-headers.bin"), 12);
    let recs = params_records("h2o-big-headers.bin");
    assert_eq!(recs[0], 65535, "{recs:?}");
    // Walk the pairs of the joined stream: the record boundary falls inside one.
    let wire = capture("h2o-big-headers.bin");
    let mut stream = Vec::new();
    let mut pos = 0;
    while let Some(h) = Header::peek(&wire[pos..]) {
        if h.record_type == RecordType::Params {
            stream.extend_from_slice(&wire[pos + HEADER_LEN..pos + HEADER_LEN + h.content_length as usize]);
        }
        pos += h.record_len();
    }
    let mut boundaries = vec![0usize];
    let mut i = 0;
    while i < stream.len() {
        let mut lens = [0usize; 2];
        for l in &mut lens {
            if stream[i] & 0x80 != 0 {
                *l = (u32::from_be_bytes([stream[i] & 0x7f, stream[i + 1], stream[i + 2], stream[i + 3]])) as usize;
                i += 4;
            } else {
                *l = stream[i] as usize;
                i += 1;
            }
        }
        i += lens[0] + lens[1];
        boundaries.push(i);
    }
    assert!(!boundaries.contains(&65535), "the 65535-byte record ends inside a pair");
}

#[test]
fn h2o_keepalive() {
    let (reqs, _) = decode("h2o-keepalive.bin");
    assert_eq!(reqs.len(), 2);
    assert!(reqs.iter().all(|r| r.keep_conn));
    assert_eq!(reqs[1].stdin, b"second body");
}

#[test]
fn h2o_buffers_chunked_body() {
    let r = one("h2o-chunked.bin");
    assert_eq!(param(&r, "CONTENT_LENGTH"), Some("81"));
    assert_eq!(r.stdin, BODY.repeat(3));
}

// ---- Caddy ----

#[test]
fn caddy_get() {
    let r = one("caddy-get.bin");
    check_get(&r, "/app");
    assert!(!r.keep_conn);
    assert_eq!(param(&r, "SCRIPT_NAME"), Some(""));
    assert_eq!(param(&r, "PATH_INFO"), Some("/app/hello/world"));
    assert_eq!(param(&r, "HTTP_X_FORWARDED_FOR"), Some("127.0.0.1"));
}

#[test]
fn caddy_post() {
    check_post(&one("caddy-post.bin"));
}

#[test]
fn caddy_splits_params_on_pair_boundaries() {
    check_big(&one("caddy-big-headers.bin"), 12);
    let wire = capture("caddy-big-headers.bin");
    let mut pos = 0;
    let mut records = 0;
    while let Some(h) = Header::peek(&wire[pos..]) {
        if h.record_type == RecordType::Params && h.content_length > 0 {
            let content = Bytes::copy_from_slice(&wire[pos + HEADER_LEN..pos + HEADER_LEN + h.content_length as usize]);
            fastcgi_server::params::decode_pairs(content, &Limits::default(), 1, "FCGI_PARAMS").unwrap();
            records += 1;
        }
        pos += h.record_len();
    }
    assert!(records >= 2);
}

#[test]
fn caddy_chunked_body_has_content_length_minus_one() {
    // Caddy 2.6 passes Go's "unknown length" through: CONTENT_LENGTH is "-1".
    let r = one("caddy-chunked.bin");
    assert_eq!(param(&r, "CONTENT_LENGTH"), Some("-1"));
    assert_eq!(r.stdin, BODY.repeat(3));
}

// ---- SCGI ----

fn scgi(name: &str) -> (Params, u64, Vec<u8>) {
    let wire = capture(name);
    let mut results = Vec::new();
    for piece in [wire.len(), 1, 5] {
        let mut d = ScgiDecoder::new(Limits::default());
        let mut head = None;
        let mut body = Vec::new();
        for p in wire.chunks(piece) {
            d.feed(p);
            while let Some(e) = d.next_event().unwrap() {
                match e {
                    ScgiEvent::Headers { params, content_length } => head = Some((params, content_length)),
                    ScgiEvent::Body(b) => body.extend_from_slice(&b),
                    ScgiEvent::BodyEnd => {}
                }
            }
        }
        assert!(d.is_done(), "{name}");
        let (params, len) = head.unwrap();
        results.push((params, len, body));
    }
    assert!(results.windows(2).all(|w| w[0] == w[1]), "{name}: piece size changed the result");
    results.remove(0)
}

#[test]
fn scgi_captures() {
    for (name, prefix, scgi_1) in [
        ("nginx-scgi-get.bin", "/scgi", true),
        ("nginx-scgi-bare-get.bin", "/scgi-bare", false),
        ("apache-scgi-get.bin", "/scgi", true),
        ("lighttpd-scgi-get.bin", "/scgi", true),
    ] {
        let (p, len, body) = scgi(name);
        assert_eq!(len, 0, "{name}");
        assert!(body.is_empty());
        assert_eq!(p.get(b"SCGI").is_some(), scgi_1, "{name}: nginx sends SCGI=1 only with scgi_params");
        assert_eq!(p.get(b"REQUEST_URI"), Some(format!("{prefix}/hello/world?x=1&y=two").as_bytes()), "{name}");
        assert_eq!(p.get(b"HTTP_COOKIE"), Some(&b"a=1; b=2"[..]), "{name}");
    }
    for name in ["nginx-scgi-post.bin", "apache-scgi-post.bin", "lighttpd-scgi-post.bin"] {
        let (p, len, body) = scgi(name);
        assert_eq!(len, 27, "{name}");
        assert_eq!(body, BODY, "{name}");
        assert_eq!(p.get(b"REQUEST_METHOD"), Some(&b"POST"[..]), "{name}");
    }
}

/// Every capture in the directory decodes without error (catches a new capture without a test).
#[test]
fn every_capture_decodes() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !name.ends_with(".bin") {
            continue;
        }
        n += 1;
        if name.contains("-scgi-") {
            scgi(&name);
        } else {
            decode(&name);
        }
    }
    assert!(n >= 30, "only {n} captures");
}
