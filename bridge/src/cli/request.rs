//! `fcgibridge request`: a one-shot FastCGI/SCGI client for newcomers and health checks.
//!
//! It sends what nginx sends with its stock `fastcgi_params` / `scgi_params`, and prints
//! the answer like `curl -i`: a status line, the headers, a blank line, the body. Records
//! on the application's stderr go to our stderr. Exit status: 0 when a response arrived
//! (whatever its HTTP status), 1 when the connection or the protocol failed, 2 for bad
//! arguments. Plain blocking sockets: one request needs no runtime.
use bytes::BytesMut;
use fastcgi_server::cgi::{self, ResponseHead};
use fastcgi_server::client::{self, ClientConnection, ClientEvent};
use fastcgi_server::{Limits, ProtocolStatus, Role};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The subcommand's arguments (defined with clap in main.rs).
pub struct Args {
    pub address: String,
    pub path: String,
    /// `None`: GET, or POST when a body is given (as curl does).
    pub method: Option<String>,
    pub headers: Vec<String>,
    /// `NAME=VALUE` CGI params set as given, after the ones a web server would send.
    pub params: Vec<String>,
    pub data: Option<String>,
    pub scgi: bool,
    /// Limit for connecting and for each read or write.
    pub timeout: Duration,
}

/// The only request on the connection.
const REQUEST_ID: u16 = 1;
/// Largest CGI header block accepted from the application.
const MAX_HEAD: usize = 64 << 10;

/// What went wrong, worded for someone at a terminal.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot read the request body from {path}: {source}")]
    Body { path: PathBuf, source: io::Error },
    #[error("cannot connect to {address}: {source}")]
    Connect { address: String, source: io::Error },
    #[error("connection to {address} failed: {source}")]
    Io { address: String, source: io::Error },
    /// A read waited longer than `--timeout`.
    #[error("timed out after {after} waiting for the response from {address} (--timeout)")]
    TimedOut { address: String, after: String },
    #[error("protocol error from {address}: {source}")]
    Protocol { address: String, source: fastcgi_server::Error },
    #[error("{address} closed the connection before the response was complete")]
    Truncated { address: String },
    #[error("{address} refused the request: {status}")]
    Refused { address: String, status: &'static str },
    #[error("{address} sent a malformed CGI response: {detail}")]
    BadResponse { address: String, detail: String },
    /// Standard output went away (`| head -1`): the reader has what it wanted.
    #[error("cannot write the response to standard output: {0}")]
    Output(io::Error),
}

/// Entry point of the subcommand.
pub fn main(args: Args) -> ExitCode {
    match run(&args, &mut io::stdout().lock(), &mut io::stderr().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(RequestError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fcgibridge request: {err}");
            ExitCode::from(if matches!(err, RequestError::Usage(_)) { 2 } else { 1 })
        }
    }
}

/// Send the request and copy the response to `out`, the application's stderr to `err`.
pub fn run(args: &Args, out: &mut impl Write, err: &mut impl Write) -> Result<(), RequestError> {
    let body = read_body(args.data.as_deref())?;
    let mut stream = connect(&args.address, args.timeout)?;
    let remote_port = stream.local_port().unwrap_or(0);
    let params = build_params(args, body.as_ref().map(Body::len), remote_port)?;
    let pairs = || params.iter().map(|(n, v)| (n.as_bytes(), v.as_slice()));

    let mut head = BytesMut::new();
    if args.scgi {
        let len = body.as_ref().map_or(0, Body::len);
        fastcgi_server::scgi::write_request(&mut head, len, pairs());
    } else {
        client::write_begin_request(&mut head, REQUEST_ID, Role::Responder, false);
        client::write_params(&mut head, REQUEST_ID, pairs());
    }

    let io_err = |source| RequestError::Io { address: args.address.clone(), source };
    // Write from a second thread: an application may answer (and fill our receive
    // buffer) before it has read the whole body, and neither side must wait on the other.
    let mut writer = stream.try_clone().map_err(io_err)?;
    let (scgi, address) = (args.scgi, args.address.clone());
    let sender = std::thread::spawn(move || send(&mut writer, &address, &head, body, scgi));

    let mut printer = Printer::new(&args.address, args.timeout);
    let result = if args.scgi {
        read_scgi(&mut stream, &mut printer, out)
    } else {
        read_fastcgi(&mut stream, &mut printer, out, err)
    };
    // The response is what matters; a body the application chose not to read is fine.
    stream.shutdown_both();
    let sent = sender.join();
    result?;
    if let Ok(Err(RequestError::Body { path, source })) = sent {
        // The response arrived, but not for the body that was meant to be sent.
        return Err(RequestError::Body { path, source });
    }
    // Standard output, not the connection: a closed pipe here is `| head`'s doing.
    out.flush().map_err(RequestError::Output)
}

/// The request body: in memory, or a file streamed from disk so a large upload
/// never has to fit in memory.
enum Body {
    Bytes(Vec<u8>),
    File { path: PathBuf, file: std::fs::File, len: u64 },
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Self::Bytes(b) => b.len() as u64,
            Self::File { len, .. } => *len,
        }
    }
}

/// Write the request head, then the body (as STDIN records for FastCGI).
fn send(stream: &mut Stream, address: &str, head: &[u8], body: Option<Body>, scgi: bool) -> Result<(), RequestError> {
    let io = |source| RequestError::Io { address: address.to_owned(), source };
    stream.write_all(head).map_err(io)?;
    let mut records = BytesMut::new();
    let mut chunk = |data: &[u8], stream: &mut Stream| -> io::Result<()> {
        if scgi {
            return stream.write_all(data);
        }
        records.clear();
        client::write_stdin(&mut records, REQUEST_ID, data);
        stream.write_all(&records)
    };
    match body {
        None => {}
        Some(Body::Bytes(bytes)) => {
            for piece in bytes.chunks(64 << 10) {
                chunk(piece, stream).map_err(io)?;
            }
        }
        Some(Body::File { path, mut file, len }) => {
            let mut buf = vec![0u8; 64 << 10];
            let mut left = len;
            while left > 0 {
                let n = file.read(&mut buf).map_err(|source| RequestError::Body { path: path.clone(), source })?;
                if n == 0 {
                    let source =
                        io::Error::new(io::ErrorKind::UnexpectedEof, "the file shrank while it was being sent");
                    return Err(RequestError::Body { path, source });
                }
                let n = n.min(usize::try_from(left).unwrap_or(usize::MAX));
                chunk(&buf[..n], stream).map_err(io)?;
                left -= n as u64;
            }
        }
    }
    if !scgi {
        records.clear();
        client::write_stdin_end(&mut records, REQUEST_ID);
        stream.write_all(&records).map_err(io)?;
    }
    stream.flush().map_err(io)
}

/// The request body from `-d`: the text itself, `@file`, or `@-` for stdin.
fn read_body(data: Option<&str>) -> Result<Option<Body>, RequestError> {
    let Some(data) = data else { return Ok(None) };
    match data.strip_prefix('@') {
        None => Ok(Some(Body::Bytes(data.as_bytes().to_vec()))),
        Some("-") => {
            let mut body = Vec::new();
            io::stdin().read_to_end(&mut body).map_err(|source| RequestError::Body { path: "stdin".into(), source })?;
            Ok(Some(Body::Bytes(body)))
        }
        Some(file) => {
            let fail = |source| RequestError::Body { path: file.into(), source };
            let opened = std::fs::File::open(file).map_err(fail)?;
            let len = opened.metadata().map_err(fail)?.len();
            Ok(Some(Body::File { path: file.into(), file: opened, len }))
        }
    }
}

/// The CGI parameters nginx's `fastcgi_params` would send for this request.
fn build_params(args: &Args, body_len: Option<u64>, remote_port: u16) -> Result<Vec<(String, Vec<u8>)>, RequestError> {
    if !args.path.starts_with('/') {
        return Err(RequestError::Usage(format!("the path must start with '/', e.g. /{}", args.path)));
    }
    let method = match &args.method {
        Some(m) if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') => {
            return Err(RequestError::Usage(format!("{m:?} is not an HTTP method")));
        }
        Some(m) => m.clone(),
        None if body_len.is_some() => "POST".to_owned(),
        None => "GET".to_owned(),
    };
    let (path, query) = args.path.split_once('?').unwrap_or((&args.path, ""));
    // `%XX` decoded as nginx does for `$uri` (a stray `%` is kept).
    let decoded_path = crate::route::percent_decode(path.as_bytes()).into_owned();

    let mut content_type: Option<String> = None;
    let mut http: Vec<(String, String)> = Vec::new();
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .filter(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
            .ok_or_else(|| RequestError::Usage(format!("header {header:?} is not \"Name: value\"")))?;
        let value = value.trim().to_owned();
        let key = name.to_ascii_uppercase().replace('-', "_");
        match key.as_str() {
            "CONTENT_TYPE" => content_type = Some(value),
            "CONTENT_LENGTH" => {
                return Err(RequestError::Usage("Content-Length is set from the body given with -d".into()));
            }
            _ => {
                let key = format!("HTTP_{key}");
                // Repeated headers arrive joined, as nginx and every HTTP proxy do.
                match http.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, existing)) => {
                        existing.push_str(if key == "HTTP_COOKIE" { "; " } else { ", " });
                        existing.push_str(&value);
                    }
                    None => http.push((key, value)),
                }
            }
        }
    }
    if body_len.is_some() && content_type.is_none() {
        content_type = Some("application/x-www-form-urlencoded".to_owned());
    }
    if !http.iter().any(|(k, _)| k == "HTTP_HOST") {
        http.insert(0, ("HTTP_HOST".to_owned(), "localhost".to_owned()));
    }

    let s = |v: &str| v.as_bytes().to_vec();
    let mut params: Vec<(String, Vec<u8>)> = vec![
        ("QUERY_STRING".into(), s(query)),
        ("REQUEST_METHOD".into(), s(&method)),
        ("CONTENT_TYPE".into(), s(content_type.as_deref().unwrap_or(""))),
        ("CONTENT_LENGTH".into(), body_len.map(|n| s(&n.to_string())).unwrap_or_default()),
        ("SCRIPT_NAME".into(), decoded_path.clone()),
        ("PATH_INFO".into(), Vec::new()),
        ("REQUEST_URI".into(), s(&args.path)),
        ("DOCUMENT_URI".into(), decoded_path),
        ("SERVER_PROTOCOL".into(), s("HTTP/1.1")),
        ("REQUEST_SCHEME".into(), s("http")),
        ("GATEWAY_INTERFACE".into(), s("CGI/1.1")),
        ("SERVER_SOFTWARE".into(), s(concat!("fcgibridge-request/", env!("CARGO_PKG_VERSION")))),
        ("REMOTE_ADDR".into(), s("127.0.0.1")),
        ("REMOTE_PORT".into(), s(&remote_port.to_string())),
        ("SERVER_ADDR".into(), s("127.0.0.1")),
        ("SERVER_PORT".into(), s("80")),
        ("SERVER_NAME".into(), s("localhost")),
    ];
    params.extend(http.into_iter().map(|(k, v)| (k, v.into_bytes())));
    for param in &args.params {
        let (name, value) = param
            .split_once('=')
            .filter(|(n, _)| !n.is_empty() && !n.bytes().any(|b| b.is_ascii_control() || b == b' '))
            .ok_or_else(|| RequestError::Usage(format!("param {param:?} is not NAME=VALUE")))?;
        if name == "CONTENT_LENGTH" {
            return Err(RequestError::Usage("CONTENT_LENGTH is set from the body given with -d".into()));
        }
        // What a web server's own fastcgi_param would do: one param of that name, this value.
        params.retain(|(k, _)| k != name);
        params.push((name.to_owned(), s(value)));
    }
    Ok(params)
}

/// A TCP or unix stream, blocking, with timeouts.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn try_clone(&self) -> io::Result<Self> {
        Ok(match self {
            Self::Tcp(s) => Self::Tcp(s.try_clone()?),
            Self::Unix(s) => Self::Unix(s.try_clone()?),
        })
    }
    fn local_port(&self) -> Option<u16> {
        match self {
            Self::Tcp(s) => s.local_addr().ok().map(|a| a.port()),
            Self::Unix(_) => None,
        }
    }
    fn shutdown_both(&self) {
        let _ = match self {
            Self::Tcp(s) => s.shutdown(Shutdown::Both),
            Self::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.read(buf),
            Self::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.write(buf),
            Self::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.flush(),
            Self::Unix(s) => s.flush(),
        }
    }
}

/// `host:port`, `[::1]:port`, `unix:/path`, or `/path`.
fn connect(address: &str, timeout: Duration) -> Result<Stream, RequestError> {
    let fail = |source| RequestError::Connect { address: address.to_owned(), source };
    let unix_path = address.strip_prefix("unix:").or(if address.starts_with('/') { Some(address) } else { None });
    let stream = if let Some(path) = unix_path {
        // Connecting to a unix socket does not block on the network; only I/O needs the limit.
        Stream::Unix(UnixStream::connect(path).map_err(fail)?)
    } else {
        use std::net::ToSocketAddrs;
        let addrs = address.to_socket_addrs().map_err(|_| {
            RequestError::Usage(format!(
                "{address:?} is not an address; write host:port, [::1]:port, unix:/path or /path"
            ))
        })?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address");
        let mut connected = None;
        for addr in addrs {
            let attempt =
                if timeout.is_zero() { TcpStream::connect(addr) } else { TcpStream::connect_timeout(&addr, timeout) };
            match attempt {
                Ok(s) => {
                    connected = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let tcp = connected.ok_or_else(|| fail(last))?;
        let _ = tcp.set_nodelay(true);
        Stream::Tcp(tcp)
    };
    let limit = Some(timeout).filter(|t| !t.is_zero());
    let set = match &stream {
        Stream::Tcp(s) => s.set_read_timeout(limit).and_then(|()| s.set_write_timeout(limit)),
        Stream::Unix(s) => s.set_read_timeout(limit).and_then(|()| s.set_write_timeout(limit)),
    };
    set.map_err(fail)?;
    Ok(stream)
}

/// Turns the application's CGI output into `curl -i` style output.
struct Printer {
    address: String,
    /// `--timeout`, for the error a read that waits longer gives.
    timeout: Duration,
    /// Output held until the header block is complete.
    head: Vec<u8>,
    head_done: bool,
}

impl Printer {
    fn new(address: &str, timeout: Duration) -> Self {
        Self { address: address.to_owned(), timeout, head: Vec::new(), head_done: false }
    }

    /// A read failed: a wait longer than `--timeout` (the socket's limit: EAGAIN) is said
    /// to be one; anything else is the connection failing. (The sender's own failures are
    /// not reported: the response, or its absence, says what happened.)
    fn io(&self, source: io::Error) -> RequestError {
        let address = self.address.clone();
        match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut if !self.timeout.is_zero() => {
                let after = crate::config::units::DurationDisplay(self.timeout).to_string();
                RequestError::TimedOut { address, after }
            }
            _ => RequestError::Io { address, source },
        }
    }

    fn stdout(&mut self, data: &[u8], out: &mut impl Write) -> Result<(), RequestError> {
        if self.head_done {
            return out.write_all(data).map_err(RequestError::Output);
        }
        self.head.extend_from_slice(data);
        let parsed = cgi::parse_response_head(&self.head, MAX_HEAD)
            .map_err(|e| RequestError::BadResponse { address: self.address.clone(), detail: e.to_string() })?;
        if let Some((head, used)) = parsed {
            self.head_done = true;
            let rest = self.head.split_off(used);
            out.write_all(&status_and_headers(&head)).map_err(RequestError::Output)?;
            out.write_all(&rest).map_err(RequestError::Output)?;
            self.head = Vec::new();
        }
        Ok(())
    }

    /// The output ended: it must have contained a whole header block.
    fn finish(&self) -> Result<(), RequestError> {
        if self.head_done {
            return Ok(());
        }
        let detail = if self.head.is_empty() {
            "nothing came back (the application sent no output, or the listener speaks the other protocol: FastCGI by default, SCGI with --scgi)".to_owned()
        } else {
            format!("the output ended inside the header block ({} bytes, no blank line)", self.head.len())
        };
        Err(RequestError::BadResponse { address: self.address.clone(), detail })
    }
}

/// `HTTP/1.1 200 OK` and the headers, as an HTTP server would turn the CGI head into them.
fn status_and_headers(head: &ResponseHead) -> Vec<u8> {
    let status = head.status.unwrap_or(if head.location.is_some() { 302 } else { 200 });
    let reason = match &head.reason {
        Some(r) if !r.is_empty() => String::from_utf8_lossy(r).into_owned(),
        _ => fastcgi_server::cgi::reason_phrase(status).unwrap_or("").to_owned(),
    };
    let mut text = format!("HTTP/1.1 {status} {reason}\r\n").into_bytes();
    for (name, value) in &head.headers {
        text.extend_from_slice(name);
        text.extend_from_slice(b": ");
        text.extend_from_slice(value);
        text.extend_from_slice(b"\r\n");
    }
    text.extend_from_slice(b"\r\n");
    text
}

fn read_fastcgi(
    stream: &mut Stream,
    printer: &mut Printer,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<(), RequestError> {
    let mut conn = ClientConnection::new(Limits::default());
    let mut buf = vec![0u8; 64 << 10];
    loop {
        while let Some(event) =
            conn.next_event().map_err(|source| RequestError::Protocol { address: printer.address.clone(), source })?
        {
            match event {
                ClientEvent::Stdout { data, .. } => printer.stdout(&data, out)?,
                ClientEvent::Stderr { data, .. } => {
                    // Our own stderr failing must not lose the response.
                    let _ = err.write_all(&data);
                }
                ClientEvent::EndRequest { protocol_status, app_status, .. } => {
                    let refused = match protocol_status {
                        ProtocolStatus::RequestComplete => None,
                        ProtocolStatus::CantMpxConn => Some("FCGI_CANT_MPX_CONN"),
                        ProtocolStatus::Overloaded => Some("FCGI_OVERLOADED"),
                        ProtocolStatus::UnknownRole => Some("FCGI_UNKNOWN_ROLE"),
                        ProtocolStatus::Other(_) => Some("an unknown protocol status"),
                    };
                    if let Some(status) = refused {
                        return Err(RequestError::Refused { address: printer.address.clone(), status });
                    }
                    printer.finish()?;
                    if app_status != 0 {
                        let _ = writeln!(err, "fcgibridge request: application exit status {app_status}");
                    }
                    return Ok(());
                }
                ClientEvent::StdoutEnd { .. }
                | ClientEvent::StderrEnd { .. }
                | ClientEvent::GetValuesResult { .. }
                | ClientEvent::UnknownType { .. } => {}
            }
        }
        let n = stream.read(&mut buf).map_err(|e| printer.io(e))?;
        if n == 0 {
            return Err(RequestError::Truncated { address: printer.address.clone() });
        }
        conn.feed(&buf[..n]);
    }
}

fn read_scgi(stream: &mut Stream, printer: &mut Printer, out: &mut impl Write) -> Result<(), RequestError> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = stream.read(&mut buf).map_err(|e| printer.io(e))?;
        if n == 0 {
            // SCGI has no end record: the application closing the connection ends the response.
            return printer.finish();
        }
        printer.stdout(&buf[..n], out)?;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::net::UnixListener;

    fn args(path: &str) -> Args {
        Args {
            address: String::new(),
            path: path.into(),
            method: None,
            headers: Vec::new(),
            params: Vec::new(),
            data: None,
            scgi: false,
            timeout: Duration::from_secs(5),
        }
    }

    fn params_of(args: &Args, body: Option<u64>) -> HashMap<String, String> {
        build_params(args, body, 4242).unwrap().into_iter().map(|(k, v)| (k, String::from_utf8(v).unwrap())).collect()
    }

    #[test]
    fn a_param_given_is_sent_as_given() {
        let mut a = args("/x");
        a.params = vec!["REMOTE_USER=alice".into(), "REMOTE_ADDR=10.0.0.5".into(), "EMPTY=".into(), "A==b".into()];
        let p = params_of(&a, None);
        assert_eq!(p["REMOTE_USER"], "alice");
        assert_eq!(p["REMOTE_ADDR"], "10.0.0.5", "replaces the default, once");
        assert_eq!((p["EMPTY"].as_str(), p["A"].as_str()), ("", "=b"));
        let sent = build_params(&a, None, 1).unwrap();
        assert_eq!(sent.iter().filter(|(k, _)| k == "REMOTE_ADDR").count(), 1);
        for bad in ["NOEQUALS", "=v", "A B=1", "CONTENT_LENGTH=5"] {
            a.params = vec![bad.into()];
            assert!(matches!(build_params(&a, None, 1), Err(RequestError::Usage(_))), "{bad}");
        }
    }

    #[test]
    fn params_follow_nginx() {
        let mut a = args("/caf%C3%A9/x?q=1&r=%20");
        a.headers = vec!["X-Thing: one".into(), "x-thing: two".into(), "Cookie: a=1".into(), "Cookie: b=2".into()];
        let p = params_of(&a, None);
        assert_eq!(p["REQUEST_METHOD"], "GET");
        assert_eq!(p["REQUEST_URI"], "/caf%C3%A9/x?q=1&r=%20");
        assert_eq!(p["SCRIPT_NAME"], "/café/x");
        assert_eq!(p["DOCUMENT_URI"], "/café/x");
        assert_eq!(p["PATH_INFO"], "");
        assert_eq!(p["QUERY_STRING"], "q=1&r=%20");
        assert_eq!(p["SERVER_PROTOCOL"], "HTTP/1.1");
        assert_eq!((p["SERVER_NAME"].as_str(), p["SERVER_PORT"].as_str()), ("localhost", "80"));
        assert_eq!((p["REMOTE_ADDR"].as_str(), p["REMOTE_PORT"].as_str()), ("127.0.0.1", "4242"));
        assert_eq!(p["GATEWAY_INTERFACE"], "CGI/1.1");
        assert!(p["SERVER_SOFTWARE"].starts_with("fcgibridge-request/"));
        assert_eq!((p["CONTENT_LENGTH"].as_str(), p["CONTENT_TYPE"].as_str()), ("", ""));
        assert_eq!(p["HTTP_HOST"], "localhost");
        assert_eq!(p["HTTP_X_THING"], "one, two");
        assert_eq!(p["HTTP_COOKIE"], "a=1; b=2");
    }

    #[test]
    fn a_body_makes_a_form_post() {
        let mut a = args("/submit");
        a.headers = vec!["Host: example.com:8080".into()];
        let p = params_of(&a, Some(11));
        assert_eq!(p["REQUEST_METHOD"], "POST");
        assert_eq!(p["CONTENT_LENGTH"], "11");
        assert_eq!(p["CONTENT_TYPE"], "application/x-www-form-urlencoded");
        assert_eq!(p["HTTP_HOST"], "example.com:8080");

        a.method = Some("PUT".into());
        a.headers.push("Content-Type: application/json".into());
        let p = params_of(&a, Some(2));
        assert_eq!((p["REQUEST_METHOD"].as_str(), p["CONTENT_TYPE"].as_str()), ("PUT", "application/json"));
        assert!(!p.contains_key("HTTP_CONTENT_TYPE"));
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        assert!(matches!(build_params(&args("no-slash"), None, 0), Err(RequestError::Usage(_))));
        let mut a = args("/");
        a.headers = vec!["no colon".into()];
        assert!(matches!(build_params(&a, None, 0), Err(RequestError::Usage(_))));
        a.headers = vec!["Content-Length: 5".into()];
        assert!(matches!(build_params(&a, None, 0), Err(RequestError::Usage(_))));
        a.headers = vec![];
        a.method = Some("GET /".into());
        assert!(matches!(build_params(&a, None, 0), Err(RequestError::Usage(_))));
    }

    #[test]
    fn percent_decoding_keeps_stray_percents() {
        assert_eq!(&*crate::route::percent_decode(b"/a%2Fb"), b"/a/b");
        assert_eq!(&*crate::route::percent_decode(b"/100%"), b"/100%");
        assert_eq!(&*crate::route::percent_decode(b"/%zz%4"), b"/%zz%4");
        assert_eq!(&*crate::route::percent_decode(b"%41"), b"A");
    }

    #[test]
    fn status_lines() {
        let head = |text: &[u8]| cgi::parse_response_head(text, MAX_HEAD).unwrap().unwrap().0;
        let line = |h: &ResponseHead| String::from_utf8(status_and_headers(h)).unwrap();
        assert_eq!(
            line(&head(b"Content-Type: text/plain\r\n\r\n")),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
        );
        assert!(line(&head(b"Location: /x\r\n\r\n")).starts_with("HTTP/1.1 302 Found\r\n"));
        assert!(line(&head(b"Status: 404\r\n\r\n")).starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(line(&head(b"Status: 599 Custom\r\n\r\n")).starts_with("HTTP/1.1 599 Custom\r\n"));
    }

    /// A tiny FastCGI application on a unix socket: checks what arrives, answers.
    #[test]
    fn a_fastcgi_round_trip() {
        use fastcgi_server::server::{ServerConnection, ServerEvent};
        let dir = crate::scratch::scratch_dir("request-fastcgi");
        let sock = dir.join("app.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let app = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut conn = ServerConnection::new(Limits::default());
            let mut body = Vec::new();
            let mut method = Vec::new();
            let mut buf = [0u8; 4096];
            'read: loop {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "client closed early");
                conn.feed(&buf[..n]);
                while let Some(event) = conn.next_event().unwrap() {
                    match event {
                        ServerEvent::Params { params, .. } => {
                            method = params.get(b"REQUEST_METHOD").unwrap().to_vec();
                        }
                        ServerEvent::Stdin { data, .. } => body.extend_from_slice(&data),
                        ServerEvent::StdinEnd { .. } => break 'read,
                        _ => {}
                    }
                }
            }
            let mut out = BytesMut::new();
            let reply =
                format!("Status: 201\r\nX-Method: {}\r\n\r\ngot {}", String::from_utf8_lossy(&method), body.len());
            let pad = fastcgi_server::record::Padding::Align8;
            fastcgi_server::server::write_stdout(&mut out, REQUEST_ID, reply.as_bytes(), pad);
            fastcgi_server::server::write_stderr(&mut out, REQUEST_ID, b"a warning\n", pad);
            fastcgi_server::server::write_end_request(&mut out, REQUEST_ID, 0, ProtocolStatus::RequestComplete, pad);
            s.write_all(&out).unwrap();
        });
        let mut a = args("/upload");
        a.address = format!("unix:{}", sock.display());
        let upload = dir.join("upload.bin");
        std::fs::write(&upload, vec![b'x'; 300_000]).unwrap();
        a.data = Some(format!("@{}", upload.display()));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        run(&a, &mut out, &mut err).unwrap();
        app.join().unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "HTTP/1.1 201 Created\r\nX-Method: POST\r\n\r\ngot 300000");
        assert_eq!(err, b"a warning\n");
    }

    /// SCGI: the response is everything until the application closes.
    #[test]
    fn an_scgi_round_trip() {
        let dir = crate::scratch::scratch_dir("request-scgi");
        let sock = dir.join("app.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let app = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut decoder = fastcgi_server::scgi::ScgiDecoder::new(Limits::default());
            let mut buf = [0u8; 4096];
            let uri = loop {
                let n = s.read(&mut buf).unwrap();
                decoder.feed(&buf[..n]);
                if let Some(fastcgi_server::scgi::ScgiEvent::Headers { params, .. }) = decoder.next_event().unwrap() {
                    break params.get(b"REQUEST_URI").unwrap().to_vec();
                }
            };
            let reply = format!("Location: /elsewhere\r\n\r\nfrom {}", String::from_utf8_lossy(&uri));
            s.write_all(reply.as_bytes()).unwrap();
        });
        let mut a = args("/old?x=1");
        a.address = sock.display().to_string();
        a.scgi = true;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        run(&a, &mut out, &mut err).unwrap();
        app.join().unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\n\r\nfrom /old?x=1");
    }

    /// A closed standard output is the reader's choice, not a failed connection.
    #[test]
    fn a_closed_stdout_is_told_apart_from_the_connection() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let e = scgi_answer_into("request-closed-stdout", b"Status: 200 OK\r\n\r\nhello", &mut Closed);
        assert!(matches!(&e, Err(RequestError::Output(io)) if io.kind() == io::ErrorKind::BrokenPipe), "{e:?}");
    }

    /// `run` of one SCGI request to an app that answers `reply`, written to `out`.
    fn scgi_answer_into(name: &str, reply: &'static [u8], out: &mut impl Write) -> Result<(), RequestError> {
        let dir = crate::scratch::scratch_dir(name);
        let sock = dir.join("app.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let app = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).unwrap();
            s.write_all(reply).unwrap();
        });
        let mut a = args("/");
        a.address = sock.display().to_string();
        a.scgi = true;
        let result = run(&a, out, &mut Vec::new());
        app.join().unwrap();
        result
    }

    /// Standard output is line-buffered: a body without a final newline reaches a closed
    /// pipe (`| head -1`) only at the last flush, which is still not the connection.
    #[test]
    fn a_stdout_closed_at_the_last_flush_is_not_the_connection() {
        struct ClosedAtFlush;
        impl Write for ClosedAtFlush {
            fn write(&mut self, data: &[u8]) -> io::Result<usize> {
                Ok(data.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
        }
        let e = scgi_answer_into("request-closed-at-flush", b"Status: 200 OK\r\n\r\nno newline", &mut ClosedAtFlush);
        assert!(matches!(&e, Err(RequestError::Output(io)) if io.kind() == io::ErrorKind::BrokenPipe), "{e:?}");
    }

    /// An application that takes longer than --timeout to answer: said so, not
    /// "Resource temporarily unavailable".
    #[test]
    fn a_slow_answer_is_a_timeout() {
        let dir = crate::scratch::scratch_dir("request-slow");
        let sock = dir.join("app.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let app = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            // Reads nothing, answers nothing, until the client gave up.
            let _ = done_rx.recv_timeout(Duration::from_secs(60));
            drop(s);
        });
        for scgi in [false, true] {
            let mut a = args("/sleep");
            a.address = format!("unix:{}", sock.display());
            a.scgi = scgi;
            a.timeout = Duration::from_millis(300);
            let e = run(&a, &mut Vec::new(), &mut Vec::new()).unwrap_err().to_string();
            // (The second connection waits in the listen queue: connected, never answered.)
            assert_eq!(
                e,
                format!("timed out after 300ms waiting for the response from unix:{} (--timeout)", sock.display())
            );
        }
        let _ = done_tx.send(());
        app.join().unwrap();
    }

    #[test]
    fn connection_failures_are_reported() {
        let mut a = args("/");
        a.address = "unix:/nonexistent/fcgibridge.sock".into();
        let e = run(&a, &mut Vec::new(), &mut Vec::new()).unwrap_err();
        assert!(e.to_string().starts_with("cannot connect to unix:/nonexistent/fcgibridge.sock"), "{e}");

        // An application that hangs up without answering.
        let dir = crate::scratch::scratch_dir("request-hangup");
        let sock = dir.join("app.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let app = std::thread::spawn(move || drop(listener.accept().unwrap()));
        a.address = sock.display().to_string();
        let e = run(&a, &mut Vec::new(), &mut Vec::new()).unwrap_err();
        app.join().unwrap();
        assert!(matches!(e, RequestError::Truncated { .. } | RequestError::Io { .. }), "{e}");
    }
}
