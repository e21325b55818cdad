//! Property tests: what the encoders write, the decoders read back — whatever pieces the bytes
//! arrive in.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use fastcgi_server::cgi::parse_response_head;
use fastcgi_server::client::{self, ClientConnection, ClientEvent};
use fastcgi_server::record::{Padding, MAX_CONTENT_LEN};
use fastcgi_server::scgi::{self, ScgiDecoder, ScgiEvent};
use fastcgi_server::server::{self, ServerConnection, ServerEvent};
use fastcgi_server::{Limits, Params, ProtocolStatus, Role};
use proptest::collection::vec;
use proptest::prelude::*;

/// Bytes of mostly small sizes, now and then past the 1-byte length (127) or a record (65535).
fn blob(small: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        20 => vec(any::<u8>(), 0..small),
        3 => vec(any::<u8>(), 120..300),
        1 => (65_000usize..70_000).prop_map(|n| vec![b'z'; n]),
    ]
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // a small alphabet makes repeated names common
        8 => vec(prop::sample::select(b"ABC_".to_vec()), 1..4),
        2 => vec(any::<u8>(), 0..20),
        1 => vec(any::<u8>(), 128..200),
    ]
}

#[derive(Debug, Clone)]
struct Request {
    role: Role,
    keep_conn: bool,
    params: Vec<(Vec<u8>, Vec<u8>)>,
    stdin: Vec<Vec<u8>>,
    data: Vec<Vec<u8>>,
}

fn request() -> impl Strategy<Value = Request> {
    (
        prop::sample::select(vec![Role::Responder, Role::Authorizer, Role::Filter]),
        any::<bool>(),
        vec((name(), blob(40)), 0..12),
        vec(blob(100).prop_filter("non-empty", |b| !b.is_empty()), 0..4),
        vec(blob(100).prop_filter("non-empty", |b| !b.is_empty()), 0..3),
    )
        .prop_map(|(role, keep_conn, params, stdin, data)| Request { role, keep_conn, params, stdin, data })
}

/// One encoded step of a request and the events it must produce.
type Step = (Vec<u8>, Vec<ServerEvent>);

fn steps(id: u16, r: &Request) -> Vec<Step> {
    let mut out = Vec::new();
    let mut b = Vec::new();
    client::write_begin_request(&mut b, id, r.role, r.keep_conn);
    out.push((b, vec![ServerEvent::BeginRequest { id, role: r.role, keep_conn: r.keep_conn }]));
    let mut b = Vec::new();
    client::write_params(&mut b, id, r.params.iter().map(|(n, v)| (&n[..], &v[..])));
    let params = Params::from_pairs(
        r.params.iter().map(|(n, v)| (Bytes::copy_from_slice(n), Bytes::copy_from_slice(v))).collect(),
    );
    out.push((b, vec![ServerEvent::Params { id, params }]));
    if r.role == Role::Authorizer {
        return out; // its input is complete; anything more would be skipped
    }
    for s in &r.stdin {
        let mut b = Vec::new();
        client::write_stdin(&mut b, id, s);
        let ev =
            s.chunks(MAX_CONTENT_LEN).map(|c| ServerEvent::Stdin { id, data: Bytes::copy_from_slice(c) }).collect();
        out.push((b, ev));
    }
    let mut b = Vec::new();
    client::write_stdin_end(&mut b, id);
    out.push((b, vec![ServerEvent::StdinEnd { id }]));
    if r.role == Role::Filter {
        for s in &r.data {
            let mut b = Vec::new();
            client::write_data(&mut b, id, s);
            let ev =
                s.chunks(MAX_CONTENT_LEN).map(|c| ServerEvent::Data { id, data: Bytes::copy_from_slice(c) }).collect();
            out.push((b, ev));
        }
        let mut b = Vec::new();
        client::write_data_end(&mut b, id);
        out.push((b, vec![ServerEvent::DataEnd { id }]));
    }
    out
}

/// Interleave per-request step queues in the order `picks` chooses, keeping each queue's order.
fn interleave<T>(mut queues: Vec<std::collections::VecDeque<T>>, picks: &[usize]) -> Vec<T> {
    let mut out = Vec::new();
    let mut k = 0;
    loop {
        let live: Vec<usize> = (0..queues.len()).filter(|&i| !queues[i].is_empty()).collect();
        if live.is_empty() {
            return out;
        }
        let pick = picks.get(k).copied().unwrap_or(0);
        k += 1;
        let q = live[pick % live.len()];
        out.extend(queues[q].pop_front());
    }
}

/// Feed `wire` cut at `cuts` (sizes, repeated), collecting every event.
fn decode_server(wire: &[u8], cuts: &[usize]) -> Vec<ServerEvent> {
    let mut c = ServerConnection::new(Limits::default());
    let mut ev = Vec::new();
    let mut pos = 0;
    let mut k = 0;
    while pos < wire.len() {
        let n = if cuts.is_empty() { 1 } else { cuts[k % cuts.len()].max(1) };
        k += 1;
        let end = (pos + n).min(wire.len());
        c.feed(&wire[pos..end]);
        pos = end;
        while let Some(e) = c.next_event().unwrap() {
            ev.push(e);
        }
    }
    assert_eq!(c.buffered(), 0);
    ev
}

fn decode_client(wire: &[u8], cuts: &[usize]) -> Vec<ClientEvent> {
    let mut c = ClientConnection::new(Limits::default());
    let mut ev = Vec::new();
    let mut pos = 0;
    let mut k = 0;
    while pos < wire.len() {
        let n = if cuts.is_empty() { 1 } else { cuts[k % cuts.len()].max(1) };
        k += 1;
        let end = (pos + n).min(wire.len());
        c.buffer_mut().extend_from_slice(&wire[pos..end]);
        pos = end;
        while let Some(e) = c.next_event().unwrap() {
            ev.push(e);
        }
    }
    ev
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn requests_round_trip(
        reqs in vec(request(), 1..5),
        picks in vec(any::<usize>(), 0..64),
        cuts in vec(1usize..3000, 1..8),
    ) {
        let queues = reqs
            .iter()
            .enumerate()
            .map(|(i, r)| steps(i as u16 + 1, r).into_iter().collect())
            .collect();
        let order = interleave(queues, &picks);
        let mut wire = Vec::new();
        let mut want = Vec::new();
        for (b, ev) in order {
            wire.extend_from_slice(&b);
            want.extend(ev);
        }
        let whole = decode_server(&wire, &[wire.len()]);
        prop_assert_eq!(&whole, &want);
        prop_assert_eq!(&decode_server(&wire, &cuts), &want);
        if wire.len() < 20_000 {
            prop_assert_eq!(&decode_server(&wire, &[]), &want);
        }
    }

    #[test]
    fn responses_round_trip(
        resps in vec(
            (vec(blob(200).prop_filter("non-empty", |b| !b.is_empty()), 0..4),
             vec(blob(50).prop_filter("non-empty", |b| !b.is_empty()), 0..2),
             any::<u32>(), 0u8..5, any::<bool>()),
            1..4),
        picks in vec(any::<usize>(), 0..64),
        cuts in vec(1usize..3000, 1..8),
    ) {
        let mut queues = Vec::new();
        for (i, (out, err, app_status, ps, pad)) in resps.iter().enumerate() {
            let id = i as u16 + 1;
            let padding = if *pad { Padding::Align8 } else { Padding::None };
            let mut q: std::collections::VecDeque<(Vec<u8>, Vec<ClientEvent>)> = Default::default();
            for e in err {
                let mut b = Vec::new();
                server::write_stderr(&mut b, id, e, padding);
                q.push_back((b, e.chunks(MAX_CONTENT_LEN).map(|c| ClientEvent::Stderr { id, data: Bytes::copy_from_slice(c) }).collect()));
            }
            for o in out {
                let mut b = Vec::new();
                server::write_stdout(&mut b, id, o, padding);
                q.push_back((b, o.chunks(MAX_CONTENT_LEN).map(|c| ClientEvent::Stdout { id, data: Bytes::copy_from_slice(c) }).collect()));
            }
            let status = ProtocolStatus::from_u8(*ps);
            let mut b = Vec::new();
            server::write_end_request(&mut b, id, *app_status, status, padding);
            q.push_back((b, vec![
                ClientEvent::StdoutEnd { id },
                ClientEvent::EndRequest { id, app_status: *app_status, protocol_status: status },
            ]));
            queues.push(q);
        }
        let mut wire = Vec::new();
        let mut want = Vec::new();
        for (b, ev) in interleave(queues, &picks) {
            wire.extend_from_slice(&b);
            want.extend(ev);
        }
        prop_assert_eq!(&decode_client(&wire, &[wire.len()]), &want);
        prop_assert_eq!(&decode_client(&wire, &cuts), &want);
        if wire.len() < 20_000 {
            prop_assert_eq!(&decode_client(&wire, &[]), &want);
        }
    }

    #[test]
    fn management_round_trip(names in vec(vec(any::<u8>(), 0..40), 0..10), values in vec((name(), vec(any::<u8>(), 0..40)), 0..10)) {
        let mut b = Vec::new();
        client::write_get_values(&mut b, names.iter().map(|n| &n[..]));
        let mut s = ServerConnection::new(Limits::default());
        s.feed(&b);
        let mut want: Vec<Bytes> = Vec::new();
        for n in &names {
            if !want.iter().any(|w| w[..] == n[..]) {
                want.push(Bytes::copy_from_slice(n));
            }
        }
        prop_assert_eq!(s.next_event().unwrap(), Some(ServerEvent::GetValues { names: want }));

        let mut b = Vec::new();
        server::write_get_values_result(&mut b, values.iter().map(|(n, v)| (&n[..], &v[..])));
        let mut c = ClientConnection::new(Limits::default());
        c.feed(&b);
        let want: Params = values.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        prop_assert_eq!(c.next_event().unwrap(), Some(ClientEvent::GetValuesResult { values: want }));
    }

    /// Pairs that fit a record never straddle two: each PARAMS record decodes on its own.
    #[test]
    fn params_records_hold_whole_pairs(pairs in vec((name(), prop_oneof![
        5 => vec(any::<u8>(), 0..200),
        1 => (20_000usize..65_000).prop_map(|n| vec![b'p'; n]),
    ]), 0..12)) {
        let mut wire = Vec::new();
        client::write_params(&mut wire, 1, pairs.iter().map(|(n, v)| (&n[..], &v[..])));
        let mut pos = 0;
        let mut records = 0;
        while let Some(h) = fastcgi_server::record::Header::peek(&wire[pos..]) {
            let content = &wire[pos + 8..pos + 8 + h.content_length as usize];
            let one = fastcgi_server::params::decode_pairs(Bytes::copy_from_slice(content), &Limits::default(), 1, "FCGI_PARAMS");
            prop_assert!(one.is_ok(), "record {} does not hold whole pairs: {:?}", records, one);
            pos += h.record_len();
            records += 1;
        }
        prop_assert_eq!(pos, wire.len());
    }

    #[test]
    fn scgi_round_trip(
        pairs in vec((vec(1u8..=255, 1..20), vec(1u8..=255, 0..200)), 0..20),
        body in vec(any::<u8>(), 0..3000),
        cuts in vec(1usize..500, 1..6),
    ) {
        let mut wire = Vec::new();
        scgi::write_request(&mut wire, body.len() as u64, pairs.iter().map(|(n, v)| (&n[..], &v[..])));
        wire.extend_from_slice(&body);
        wire.extend_from_slice(b"trailing bytes never returned");
        for cuts in [&cuts[..], &[1][..]] {
            let mut d = ScgiDecoder::new(Limits::default());
            let mut head = None;
            let mut got = Vec::new();
            let mut ended = 0;
            let mut pos = 0;
            let mut k = 0;
            while pos < wire.len() {
                let end = (pos + cuts[k % cuts.len()]).min(wire.len());
                k += 1;
                d.feed(&wire[pos..end]);
                pos = end;
                while let Some(e) = d.next_event().unwrap() {
                    match e {
                        ScgiEvent::Headers { params, content_length } => {
                            prop_assert!(head.is_none());
                            prop_assert_eq!(content_length, body.len() as u64);
                            head = Some(params);
                        }
                        ScgiEvent::Body(b) => {
                            prop_assert!(!b.is_empty());
                            got.extend_from_slice(&b);
                        }
                        ScgiEvent::BodyEnd => ended += 1,
                    }
                }
            }
            prop_assert_eq!(&got, &body);
            prop_assert_eq!(ended, 1);
            let head = head.unwrap();
            prop_assert_eq!(head.get(b"SCGI"), Some(&b"1"[..]));
            for (n, _) in &pairs {
                if n[..] != b"CONTENT_LENGTH"[..] && n[..] != b"SCGI"[..] {
                    let last = pairs.iter().rev().find(|(m, _)| m == n).map(|(_, v)| &v[..]);
                    prop_assert_eq!(head.get(n), last);
                }
            }
        }
    }

    #[test]
    fn cgi_head_round_trip(
        status in prop::option::of(100u16..1000),
        headers in vec((vec(prop::sample::select(b"abcXYZ-_".to_vec()), 1..10), vec(0x20u8..0x7f, 0..50)), 0..10),
        crlf in any::<bool>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let eol: &[u8] = if crlf { b"\r\n" } else { b"\n" };
        let special = |n: &[u8]| ["status", "content-length", "location", "content-type"].iter().any(|s| n.eq_ignore_ascii_case(s.as_bytes()));
        let headers: Vec<_> = headers.into_iter().filter(|(n, _)| !special(n)).collect();
        let mut raw = Vec::new();
        if let Some(s) = status {
            raw.extend_from_slice(format!("Status: {s} Some Reason").as_bytes());
            raw.extend_from_slice(eol);
        }
        for (n, v) in &headers {
            raw.extend_from_slice(n);
            raw.extend_from_slice(b": ");
            raw.extend_from_slice(v);
            raw.extend_from_slice(eol);
        }
        raw.extend_from_slice(eol);
        let head_len = raw.len();
        raw.extend_from_slice(b"body\n\nmore");
        let (head, n) = parse_response_head(&raw, 1 << 16).unwrap().unwrap();
        prop_assert_eq!(n, head_len);
        prop_assert_eq!(head.status, status);
        prop_assert_eq!(head.headers.len(), headers.len());
        for ((n, v), (gn, gv)) in headers.iter().zip(&head.headers) {
            prop_assert_eq!(&n[..], &gn[..]);
            prop_assert_eq!(v.trim_ascii(), &gv[..]);
        }
        // any strict prefix of the block is incomplete
        let c = cut.index(head_len);
        prop_assert_eq!(parse_response_head(&raw[..c], 1 << 16).unwrap(), None);
    }
}
