//! The hot paths of the bridge: decoding a typical nginx request, encoding a response.
//!
//! Run: `cargo bench -p fastcgi-server --bench decode`
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fastcgi_server::cgi::parse_response_head;
use fastcgi_server::client;
use fastcgi_server::record::Padding;
use fastcgi_server::scgi::{self, ScgiDecoder};
use fastcgi_server::server::{self, ServerConnection};
use fastcgi_server::{Limits, ProtocolStatus, Role};

/// What nginx sends for a browser GET with `include fastcgi_params`: 31 params, about 1 KiB.
fn nginx_params() -> Vec<(&'static [u8], &'static [u8])> {
    vec![
        (b"QUERY_STRING", b"page=2&sort=name"),
        (b"REQUEST_METHOD", b"POST"),
        (b"CONTENT_TYPE", b"application/x-www-form-urlencoded"),
        (b"CONTENT_LENGTH", b"27"),
        (b"SCRIPT_NAME", b"/app/items"),
        (b"REQUEST_URI", b"/app/items?page=2&sort=name"),
        (b"DOCUMENT_URI", b"/app/items"),
        (b"DOCUMENT_ROOT", b"/srv/www/html"),
        (b"SERVER_PROTOCOL", b"HTTP/1.1"),
        (b"REQUEST_SCHEME", b"https"),
        (b"HTTPS", b"on"),
        (b"GATEWAY_INTERFACE", b"CGI/1.1"),
        (b"SERVER_SOFTWARE", b"nginx/1.22.1"),
        (b"REMOTE_ADDR", b"203.0.113.17"),
        (b"REMOTE_PORT", b"51544"),
        (b"SERVER_ADDR", b"192.0.2.10"),
        (b"SERVER_PORT", b"443"),
        (b"SERVER_NAME", b"www.example.com"),
        (b"REDIRECT_STATUS", b"200"),
        (b"HTTP_HOST", b"www.example.com"),
        (b"HTTP_USER_AGENT", b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
        (b"HTTP_ACCEPT", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
        (b"HTTP_ACCEPT_LANGUAGE", b"en-GB,en;q=0.5"),
        (b"HTTP_ACCEPT_ENCODING", b"gzip, deflate, br, zstd"),
        (b"HTTP_REFERER", b"https://www.example.com/app/items?page=1&sort=name"),
        (b"HTTP_CONTENT_TYPE", b"application/x-www-form-urlencoded"),
        (b"HTTP_CONTENT_LENGTH", b"27"),
        (b"HTTP_ORIGIN", b"https://www.example.com"),
        (b"HTTP_CONNECTION", b"keep-alive"),
        (
            b"HTTP_COOKIE",
            b"sessionid=9f8e7d6c5b4a39281706f5e4d3c2b1a0; csrftoken=Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4; theme=dark; _ga=GA1.2.123456789.1700000000",
        ),
        (b"HTTP_SEC_FETCH_MODE", b"navigate"),
    ]
}

const BODY: &[u8] = b"name=widget&colour=blue&q=1";

fn nginx_request() -> Vec<u8> {
    let mut wire = Vec::new();
    client::write_begin_request(&mut wire, 1, Role::Responder, true);
    client::write_params(&mut wire, 1, nginx_params());
    client::write_stdin(&mut wire, 1, BODY);
    client::write_stdin_end(&mut wire, 1);
    wire
}

fn bench_decode(c: &mut Criterion) {
    let wire = nginx_request();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    // A kept-alive connection: the buffer's allocation is reused from request to request.
    let mut conn = ServerConnection::new(Limits::default());
    g.bench_function("nginx_request_keepalive", |b| {
        b.iter(|| {
            conn.feed(black_box(&wire));
            let mut n = 0;
            while let Some(ev) = conn.next_event().expect("valid") {
                black_box(&ev);
                n += 1;
            }
            assert_eq!(n, 4);
        })
    });
    g.bench_function("nginx_request_new_connection", |b| {
        b.iter(|| {
            let mut conn = ServerConnection::new(Limits::default());
            conn.feed(black_box(&wire));
            while let Some(ev) = conn.next_event().expect("valid") {
                black_box(&ev);
            }
        })
    });

    let mut scgi_wire = Vec::new();
    scgi::write_request(&mut scgi_wire, BODY.len() as u64, nginx_params());
    scgi_wire.extend_from_slice(BODY);
    g.bench_function("scgi_request", |b| {
        b.iter(|| {
            let mut d = ScgiDecoder::new(Limits::default());
            d.feed(black_box(&scgi_wire));
            while let Some(ev) = d.next_event().expect("valid") {
                black_box(&ev);
            }
        })
    });

    let head = b"Status: 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: 5120\r\n\
Cache-Control: private, max-age=0\r\nSet-Cookie: sessionid=abc; HttpOnly; Path=/\r\nVary: Cookie\r\n\
X-Frame-Options: DENY\r\n\r\n";
    g.bench_function("cgi_response_head", |b| {
        b.iter(|| black_box(parse_response_head(black_box(head), 64 << 10).expect("valid")))
    });
    g.finish();
}

fn bench_encode(c: &mut Criterion) {
    let body = vec![b'x'; 64 << 10];
    let mut out = Vec::with_capacity(70 << 10);
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Bytes(body.len() as u64));
    for (name, padding) in [("response_64k", Padding::None), ("response_64k_align8", Padding::Align8)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                server::write_stdout(&mut out, 1, black_box(&body), padding);
                server::write_end_request(&mut out, 1, 0, ProtocolStatus::RequestComplete, padding);
                black_box(&out);
            })
        });
    }
    let params = nginx_params();
    let mut out = Vec::with_capacity(4096);
    g.throughput(Throughput::Elements(1));
    g.bench_function("nginx_request", |b| {
        b.iter(|| {
            out.clear();
            client::write_begin_request(&mut out, 1, Role::Responder, true);
            client::write_params(&mut out, 1, black_box(&params).iter().copied());
            client::write_stdin(&mut out, 1, BODY);
            client::write_stdin_end(&mut out, 1);
            black_box(&out);
        })
    });
    g.finish();
}

criterion_group!(benches, bench_decode, bench_encode);
criterion_main!(benches);
