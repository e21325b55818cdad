//! What an app's file hand-off header becomes, decided without I/O except for the
//! fallback checks of a file the bridge serves instead: `X-Sendfile`, `X-Sendfile2`
//! (lighttpd) and `X-Accel-Redirect` (nginx) are passed to the web server, rewritten for it
//! (`translate`), or served by the bridge (respond/sendfile.rs streams them). A hand-off
//! header never reaches the web server unless that server understands it: otherwise a
//! filesystem path would reach the client. One into a `file-map` directory reaches nginx
//! only through respond/sendfile.rs, once the file passes the checks of a file the bridge
//! sends itself: nginx would follow a tenant's symlink anywhere its own user may read.
use super::sendfile::Checked;
use crate::config::{Dialect, Protocol};
use crate::supervise::access::Reader;
use bytes::Bytes;
use fastcgi_server::cgi::ResponseHead;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

pub(crate) use fastcgi_server::sendfile2::Piece;

/// The hand-off headers an app may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Sendfile,
    Sendfile2,
    AccelRedirect,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Sendfile => "X-Sendfile",
            Self::Sendfile2 => "X-Sendfile2",
            Self::AccelRedirect => "X-Accel-Redirect",
        }
    }

    fn of(name: &[u8]) -> Option<Self> {
        if name.eq_ignore_ascii_case(LIGHTTPD_SENDFILE) {
            return Some(Self::Sendfile);
        }
        [Self::Sendfile, Self::Sendfile2, Self::AccelRedirect]
            .into_iter()
            .find(|k| name.eq_ignore_ascii_case(k.name().as_bytes()))
    }
}

/// The index of the response's hand-off header, left the only one in `head` (lighttpd's
/// older name written as `X-Sendfile`); `Ok(None)`: there is none; `Err`: the answer to a
/// response whose hand-off may not go on (`X-Sendfile-Temporary`).
fn only_hand_off(head: &mut ResponseHead) -> Result<Option<usize>, Decision> {
    if let Some((_, v)) = head.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(SENDFILE_TEMPORARY)) {
        return Err(Decision::Refuse {
            header: format!("X-Sendfile-Temporary: {}", String::from_utf8_lossy(v)),
            why: "mod_xsendfile would send the file and delete it, and the bridge checks no such header: \
                  send X-Sendfile and remove the file in the app"
                .to_owned(),
        });
    }
    let Some(i) = head.headers.iter().position(|(n, _)| Kind::of(n).is_some()) else { return Ok(None) };
    // Only this header is checked, so it is the only one that may go on: a second one
    // (another path, or X-Sendfile2, which lighttpd prefers to X-Sendfile whatever the
    // order) would reach the web server unchecked.
    let mut j = 0;
    head.headers.retain(|(n, _)| {
        j += 1;
        j - 1 == i || Kind::of(n).is_none()
    });
    // One name from here on: the older lighttpd one is checked and passed as X-Sendfile.
    if head.headers[i].0.eq_ignore_ascii_case(LIGHTTPD_SENDFILE) {
        head.headers[i].0 = Bytes::from_static(b"X-Sendfile");
    }
    Ok(Some(i))
}

/// lighttpd's older name of `X-Sendfile`, which it still follows: taken as `X-Sendfile`.
const LIGHTTPD_SENDFILE: &[u8] = b"x-lighttpd-send-file";
/// mod_xsendfile's header for a file it deletes once sent (with `AllowFileDelete`): never
/// passed on where the bridge checks hand-offs.
const SENDFILE_TEMPORARY: &[u8] = b"x-sendfile-temporary";

/// What the bridge sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FileSpec {
    /// One whole file (X-Sendfile, a mapped X-Accel-Redirect): the client's ranges and
    /// conditional requests apply.
    Whole(Vec<u8>),
    /// X-Sendfile2: these ranges, one after another, as the body.
    Pieces(Vec<Piece>),
}

impl FileSpec {
    pub(crate) fn paths(&self) -> Vec<&[u8]> {
        match self {
            Self::Whole(p) => vec![p],
            Self::Pieces(ps) => ps.iter().map(|p| &p.path[..]).collect(),
        }
    }
}

/// A hand-off the bridge serves itself.
#[derive(Debug)]
pub(crate) struct FileHandoff {
    pub kind: Kind,
    pub spec: FileSpec,
    /// The app's status.
    pub status: u16,
    /// The app's headers that do not describe the body (Content-Disposition,
    /// Cache-Control, Set-Cookie, X-* …); Content-Type is in `content_type`.
    pub headers: Headers,
    pub content_type: Option<Bytes>,
    /// The worker that answered, for log lines.
    pub pid: u32,
    /// In `translate` mode: the app's head with its hand-off header, which goes to the web
    /// server (which sends the file) once every file named passes the checks a file the
    /// bridge sends passes (respond/sendfile.rs).
    pub to_front: Option<Bytes>,
    /// The files already looked up to decide (a hand-off the web server cannot follow, in
    /// `translate` mode): sent as they are, not looked up again.
    pub checked: Checked,
}

impl FileHandoff {
    /// `kept`: the app's headers kept and its Content-Type ([`kept_headers`]); no file
    /// looked up yet.
    fn new(
        kind: Kind,
        spec: FileSpec,
        status: u16,
        pid: u32,
        kept: (Headers, Option<Bytes>),
        to_front: Option<Bytes>,
    ) -> Self {
        let (headers, content_type) = kept;
        Self { kind, spec, status, headers, content_type, pid, to_front, checked: Checked::default() }
    }
}

/// `file-handoff:` of a listener (`pass` has no [`Files`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Serve,
    Translate,
}

/// The web server in front of a listener, as far as hand-off headers go: its `dialect` and,
/// for lighttpd, the protocol (mod_scgi follows X-Sendfile but not X-Sendfile2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Front {
    pub dialect: Dialect,
    pub protocol: Protocol,
}

impl Front {
    fn is_nginx(self) -> bool {
        self.dialect == Dialect::Nginx
    }

    /// Serves `X-Sendfile` itself when asked to (`translate` leaves it).
    fn follows_sendfile(self) -> bool {
        matches!(self.dialect, Dialect::Lighttpd | Dialect::Apache | Dialect::Generic)
    }

    /// lighttpd reads X-Sendfile2 from FastCGI responses only (http-header-glue.c).
    fn follows_sendfile2(self) -> bool {
        self.dialect == Dialect::Lighttpd && self.protocol == Protocol::FastCgi
    }
}

/// A listener's file hand-off settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Files {
    pub mode: Mode,
    pub front: Front,
    /// `file-roots`: the only directories the bridge sends files from, each as written and
    /// with symlinks resolved once here: a path is compared with them as written before it
    /// is looked up, its real path after.
    pub roots: Vec<PathBuf>,
    /// `file-map`: (filesystem prefix, internal URI prefix), longest filesystem prefix first.
    pub map: Vec<(String, String)>,
    /// What the bridge may send files from: `roots`, and with `translate` the `file-map`
    /// directories too (in both forms): a file nginx would serve from there is checked as
    /// one the bridge sends, and sent by the bridge when nginx would drop the app's headers.
    pub serve_roots: Vec<PathBuf>,
    /// `FCGIBRIDGE_FILE_ROOTS` for the worker: the directories a wsgi.file_wrapper file
    /// may be handed back from as X-Sendfile. None (`file-hand-back: false`): the worker streams
    /// every file.
    pub worker_roots: Option<Bytes>,
    /// `max-ranges`: ranges one request may ask of a file the bridge serves.
    pub max_ranges: u32,
}

/// The param that tells the worker where wsgi.file_wrapper files may be handed off from.
pub(crate) const WORKER_ROOTS_PARAM: &[u8] = b"FCGIBRIDGE_FILE_ROOTS";

/// Strip a `FCGIBRIDGE_FILE_ROOTS` the web server sent and set the listener's own.
pub(crate) fn set_worker_roots(params: &mut fastcgi_server::Params, files: Option<&Files>) {
    match files.and_then(|f| f.worker_roots.clone()) {
        Some(v) => params.insert(Bytes::from_static(WORKER_ROOTS_PARAM), v),
        None => {
            params.remove(WORKER_ROOTS_PARAM);
        }
    }
}

/// What happens to a response.
#[derive(Debug)]
pub(crate) enum Decision {
    /// No hand-off header, or one the web server understands (possibly rewritten in place).
    Forward,
    /// The bridge sends the file(s).
    Serve(Box<FileHandoff>),
    /// The header cannot be passed on nor served: 500, and `why` is logged with `header`.
    Refuse { header: String, why: String },
}

impl Decision {
    /// This decision, holding the files `checked` looked up to make it when the bridge
    /// serves them ([`FileHandoff::checked`]).
    fn holding(mut self, checked: Checked) -> Self {
        if let Self::Serve(h) = &mut self {
            h.checked = checked;
        }
        self
    }
}

/// How a hand-off path falls short of a normal absolute path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathFlaw {
    #[error("it is not absolute")]
    Relative,
    #[error("it has a `..` segment")]
    DotDot,
    #[error("it has a `.` segment")]
    Dot,
    #[error("it has an empty segment (`//`)")]
    Empty,
    #[error("it ends in `/`")]
    TrailingSlash,
    #[error("it has a NUL or another control character")]
    Control,
    #[error("it has a backslash")]
    Backslash,
}

/// A hand-off value refused before any mapping: as the app wrote it, and the decoded
/// form that has the flaw when only that one has it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a normal path{}: {flaw}", decoded.as_ref().map(|d| format!(" once percent-decoded ({d:?})")).unwrap_or_default())]
pub(crate) struct BadPath {
    pub value: String,
    pub decoded: Option<String>,
    pub flaw: PathFlaw,
}

/// Ok when `p` is absolute, `/`-separated without empty, `.` or `..` segments, and has no
/// control character or backslash. Each reader normalises such paths its own way (nginx
/// merges `//` and refuses `..`, lighttpd simplifies, the kernel follows `..`), so only
/// a path all of them read alike is handed on. `trailing_slash`: a final `/` is allowed
/// (an nginx location URI, never a file).
pub(crate) fn normal_path(p: &[u8], trailing_slash: bool) -> Result<(), PathFlaw> {
    let Some(rest) = p.strip_prefix(b"/") else { return Err(PathFlaw::Relative) };
    if rest.is_empty() {
        // `/` alone: an nginx location, never a file.
        return if trailing_slash { Ok(()) } else { Err(PathFlaw::TrailingSlash) };
    }
    let rest = match rest.strip_suffix(b"/") {
        Some(r) if trailing_slash => r,
        Some(_) => return Err(PathFlaw::TrailingSlash),
        None => rest,
    };
    for seg in rest.split(|&b| b == b'/') {
        match seg {
            b"" => return Err(PathFlaw::Empty),
            b"." => return Err(PathFlaw::Dot),
            b".." => return Err(PathFlaw::DotDot),
            _ => {}
        }
    }
    if p.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(PathFlaw::Control);
    }
    if p.contains(&b'\\') {
        // A separator on Windows builds of the servers and in URL parsers that follow WHATWG.
        return Err(PathFlaw::Backslash);
    }
    Ok(())
}

/// [`normal_path`] of `value` as written and, with `decode`, percent-decoded too: the form
/// a reader that decodes it (nginx for X-Accel-Redirect, lighttpd and mod_xsendfile for
/// X-Sendfile) acts on.
fn check_path(value: &[u8], decode: bool, trailing_slash: bool) -> Result<(), BadPath> {
    let shown = || String::from_utf8_lossy(value).into_owned();
    normal_path(value, trailing_slash).map_err(|flaw| BadPath { value: shown(), decoded: None, flaw })?;
    if decode {
        let d = crate::route::percent_decode(value);
        normal_path(&d, trailing_slash).map_err(|flaw| BadPath {
            value: shown(),
            decoded: Some(String::from_utf8_lossy(&d).into_owned()),
            flaw,
        })?;
    }
    Ok(())
}

/// An X-Accel-Redirect's path (its query is no path) as written and as nginx decodes it.
/// `nginx`: nginx follows it, so a named location and a final `/` are fine. `twice`: the
/// mapped path goes on as X-Sendfile to a server that decodes it once more.
fn check_accel(uri: &[u8], nginx: bool, twice: bool) -> Result<(), BadPath> {
    if nginx && uri.starts_with(b"@") {
        return Ok(());
    }
    let path = uri.split(|&b| b == b'?').next().unwrap_or_default();
    check_path(path, true, nginx)?;
    if twice {
        check_path(&crate::route::percent_decode(path), true, false)?;
    }
    Ok(())
}

/// A local redirect no route serves, about to go to nginx as X-Accel-Redirect: the same
/// check as an app's own X-Accel-Redirect (nginx refuses `..` itself; `.`, `//` and
/// encoded forms it would follow).
pub(crate) fn check_redirect_for_nginx(target: &[u8]) -> Result<(), BadPath> {
    check_accel(target, true, false)
}

/// An X-Sendfile2 value the bridge cannot parse, passed to lighttpd as it is: every word
/// with a `/` in it is taken for a path and checked as lighttpd would decode it.
fn check_sendfile2_words(value: &[u8]) -> Result<(), BadPath> {
    value
        .split(|&b| b == b',' || b.is_ascii_whitespace())
        .filter(|w| w.contains(&b'/'))
        .try_for_each(|w| check_path(w, true, false))
}

/// Headers that describe the body the app did not send: the bridge drops or replaces them.
const BODY_HEADERS: &[&[u8]] = &[
    b"content-length",
    b"content-range",
    b"accept-ranges",
    b"etag",
    b"last-modified",
    b"content-type",
    b"x-sendfile",
    b"x-sendfile2",
    b"x-accel-redirect",
    LIGHTTPD_SENDFILE,
];

impl Files {
    /// Listener `cfg`'s settings; None with `file-handoff: pass`, which touches no header.
    pub(crate) fn of(cfg: &crate::config::Listener) -> Option<Self> {
        use crate::config::FileHandoff;
        let mode = match cfg.file_handoff {
            FileHandoff::Pass => return None,
            FileHandoff::Serve => Mode::Serve,
            FileHandoff::Translate => Mode::Translate,
        };
        let front = Front { dialect: cfg.dialect, protocol: cfg.protocol };
        Some(Self::new(mode, front, cfg.file_roots.clone(), cfg.file_map.clone(), cfg.max_ranges, cfg.file_hand_back))
    }

    pub(crate) fn new(
        mode: Mode,
        front: Front,
        roots: Vec<PathBuf>,
        mut map: Vec<(String, String)>,
        max_ranges: u32,
        file_hand_back: bool,
    ) -> Self {
        // A nested directory's own mapping wins.
        map.sort_by_key(|(fs, _)| std::cmp::Reverse(fs.len()));
        let real = |d: &PathBuf| std::fs::canonicalize(d).unwrap_or_else(|_| d.clone());
        let mapped: Vec<PathBuf> =
            if mode == Mode::Translate { map.iter().map(|(fs, _)| PathBuf::from(fs)).collect() } else { vec![] };
        // The worker compares real paths. A root containing `:` cannot be listed (the
        // separator); its files are streamed.
        let listed: Vec<String> = roots
            .iter()
            .chain(&mapped)
            .filter_map(|d| real(d).to_str().map(str::to_owned))
            .filter(|d| !d.contains(':') && !d.is_empty())
            .collect();
        let worker_roots = (file_hand_back && !listed.is_empty()).then(|| Bytes::from(listed.join(":")));
        let both_forms = |dirs: &[PathBuf]| {
            let mut out: Vec<PathBuf> = Vec::new();
            for d in dirs.iter().flat_map(|d| [real(d), d.clone()]) {
                if !out.contains(&d) {
                    out.push(d);
                }
            }
            out
        };
        let serve_roots = both_forms(&[&roots[..], &mapped[..]].concat());
        let roots = both_forms(&roots);
        Self { mode, front, roots, map, serve_roots, worker_roots, max_ranges }
    }

    /// Decide what the response `head` from worker `pid` becomes; `reader`: the pool's
    /// account, when its workers run as another than the bridge's.
    pub(crate) fn decide(&self, head: &mut ResponseHead, pid: u32, reader: Option<&Reader>) -> Decision {
        let status = super::effective_status(head);
        let i = match only_hand_off(head) {
            Ok(Some(i)) => i,
            Ok(None) => return Decision::Forward,
            Err(refused) => return refused,
        };
        let kind = Kind::of(&head.headers[i].0).unwrap_or(Kind::Sendfile);
        let value = head.headers[i].1.clone();
        let shown = format!("{}: {}", kind.name(), String::from_utf8_lossy(&value));
        let refuse = |why: String| Decision::Refuse { header: shown.clone(), why };
        let nginx = self.front.is_nginx();
        // The bridge sends the file, or with `to_front` checks it and hands that head on.
        let hand_off = |head: &ResponseHead, spec: FileSpec, to_front: Option<Bytes>| match kept_headers(head) {
            Ok(kept) => Decision::Serve(Box::new(FileHandoff::new(kind, spec, status, pid, kept, to_front))),
            Err(why) => Decision::Refuse { header: shown.clone(), why },
        };
        let serve = |head: &ResponseHead, spec: FileSpec| hand_off(head, spec, None);
        // Every path is checked before it is mapped, served or passed on: a mapping works on
        // text, so `ROOT/../x` would otherwise become `/protected/../x` for nginx.
        let translate = self.mode == Mode::Translate;
        let spec = match kind {
            Kind::Sendfile => match check_path(&value, true, false) {
                Ok(()) => FileSpec::Whole(value.to_vec()),
                Err(e) => return refuse(e.to_string()),
            },
            // nginx follows its own header (to any location, named ones too); into a file-map
            // directory only for a file the bridge has checked.
            Kind::AccelRedirect if translate && nginx => {
                if let Err(e) = check_accel(&value, true, false) {
                    return refuse(e.to_string());
                }
                return match self.uri_to_fs(&value) {
                    Some(path) => checked_for_nginx(head, path, hand_off),
                    None => Decision::Forward,
                };
            }
            Kind::AccelRedirect => {
                if let Err(e) = check_accel(&value, false, translate && self.front.follows_sendfile()) {
                    return refuse(e.to_string());
                }
                match self.uri_to_fs(&value) {
                    Some(p) => FileSpec::Whole(p),
                    None => return refuse("no file-map prefix covers it".to_owned()),
                }
            }
            Kind::Sendfile2 => match fastcgi_server::sendfile2::parse(&value) {
                Ok(p) => match p.iter().try_for_each(|p| check_path(&p.path, false, false)) {
                    Ok(()) => FileSpec::Pieces(p),
                    Err(e) => return refuse(e.to_string()),
                },
                Err(_) if translate && self.front.follows_sendfile2() => {
                    return match check_sendfile2_words(&value) {
                        Ok(()) => Decision::Forward,
                        Err(e) => refuse(e.to_string()),
                    };
                }
                Err(e) => return refuse(e.to_string()),
            },
        };
        if self.mode == Mode::Serve {
            return serve(head, spec);
        }
        // translate: what the web server in front understands goes to it.
        match (kind, &spec) {
            (Kind::Sendfile, FileSpec::Whole(path)) if nginx => {
                if let Some(uri) = self.fs_to_uri(path) {
                    let path = path.clone();
                    head.headers[i] = (Bytes::from_static(b"X-Accel-Redirect"), Bytes::from(uri));
                    return checked_for_nginx(head, path, hand_off);
                }
            }
            // lighttpd and mod_xsendfile percent-decode X-Sendfile: the file they open is the
            // decoded path. That one is checked, and it goes on encoded, so that their
            // decoding gives back exactly it (`/srv/%66iles/x` is `/srv/files/x` to them).
            (Kind::Sendfile, FileSpec::Whole(path)) if self.front.follows_sendfile() => {
                let opened = crate::route::percent_decode(path).into_owned();
                head.headers[i].1 = Bytes::from(percent_encode(&opened));
                return self.checked_for_front(head, FileSpec::Whole(opened), hand_off);
            }
            (Kind::AccelRedirect, FileSpec::Whole(path)) if self.front.follows_sendfile() => {
                head.headers[i] = (Bytes::from_static(b"X-Sendfile"), Bytes::from(percent_encode(path)));
                return self.checked_for_front(head, spec, hand_off);
            }
            (Kind::Sendfile2, _) if self.front.follows_sendfile2() => {
                return self.checked_for_front(head, spec, hand_off)
            }
            _ => {}
        }
        match self.servable(kind, &spec, reader) {
            Ok(checked) => serve(head, spec).holding(checked),
            Err(why) => refuse(why),
        }
    }

    /// lighttpd and Apache follow symlinks and read as their own user, as nginx does: a
    /// hand-off naming a file under a `file-map` directory or `file-roots` goes to them only
    /// once every file it names passes the checks of a file the bridge sends. One that names
    /// none of them is the web server's own to judge (its `x-sendfile-docroot`,
    /// `XSendFilePath`), as before.
    fn checked_for_front(
        &self,
        head: &mut ResponseHead,
        spec: FileSpec,
        hand_off: impl Fn(&ResponseHead, FileSpec, Option<Bytes>) -> Decision,
    ) -> Decision {
        let ours =
            |p: &&[u8]| self.serve_roots.iter().any(|r| std::path::Path::new(OsStr::from_bytes(p)).starts_with(r));
        if !spec.paths().iter().any(ours) {
            return Decision::Forward;
        }
        handed_on(head, spec, hand_off)
    }

    /// A hand-off the web server in front cannot follow: every file it names from
    /// `file-roots`, opened as the pool's account (`reader`) when the bridge may send it all,
    /// else why not. A file that account may not read is the bridge's to refuse (403,
    /// respond/sendfile.rs): that refusal is kept too.
    fn servable(&self, kind: Kind, spec: &FileSpec, reader: Option<&Reader>) -> Result<Checked, String> {
        let why = match kind {
            Kind::Sendfile if self.front.is_nginx() => "no file-map prefix covers it",
            Kind::Sendfile2 if self.front.dialect == Dialect::Lighttpd => {
                "lighttpd follows X-Sendfile2 only over FastCGI (mod_scgi does not)"
            }
            _ => "the web server in front (dialect) does not understand it",
        };
        if self.roots.is_empty() {
            return Err(format!("{why}, and the listener has no file-roots to serve it from"));
        }
        let mut checked = Checked::default();
        for p in spec.paths() {
            if checked.has(p) {
                continue;
            }
            match super::sendfile::open(&self.roots, reader, p) {
                found @ (Ok(_) | Err(super::sendfile::SendfileError::Unreadable { .. })) => checked.keep(p, found),
                Err(e) => return Err(format!("{why}, and the bridge does not serve it: {e}")),
            }
        }
        Ok(checked)
    }

    /// `/fs/prefix/rest` → `/uri/prefix/rest`, percent-encoded (nginx decodes X-Accel-Redirect).
    pub(crate) fn fs_to_uri(&self, path: &[u8]) -> Option<String> {
        self.map.iter().find_map(|(fs, uri)| {
            let rest = strip_dir_prefix(path, fs.as_bytes())?;
            Some(format!("{uri}{}", percent_encode(rest)))
        })
    }

    /// An X-Accel-Redirect URI → filesystem path, as nginx reads it: the query dropped,
    /// percent-decoded, NUL refused; then the longest `file-map` URI prefix.
    pub(crate) fn uri_to_fs(&self, uri: &[u8]) -> Option<Vec<u8>> {
        let path = uri.split(|&b| b == b'?').next().unwrap_or_default();
        let decoded = crate::route::percent_decode(path);
        if decoded.contains(&0) || !decoded.starts_with(b"/") {
            return None;
        }
        let mut best: Option<(usize, Vec<u8>)> = None;
        for (fs, prefix) in &self.map {
            if let Some(rest) = strip_dir_prefix(&decoded, prefix.as_bytes()) {
                if best.as_ref().is_none_or(|(len, _)| prefix.len() > *len) {
                    let mut p = fs.as_bytes().to_vec();
                    p.extend_from_slice(rest);
                    best = Some((prefix.len(), p));
                }
            }
        }
        best.map(|(_, p)| p)
    }
}

/// nginx follows symlinks and reads as its own user: `head`, with its X-Accel-Redirect, goes
/// to nginx only through `hand_off`, once the file at `path` passes the checks of a file the
/// bridge sends itself (respond/sendfile.rs); the bridge sends it instead when nginx would
/// drop some of its headers.
fn checked_for_nginx(
    head: &mut ResponseHead,
    path: Vec<u8>,
    hand_off: impl Fn(&ResponseHead, FileSpec, Option<Bytes>) -> Decision,
) -> Decision {
    // With X-Accel-Redirect nginx passes on only a few of the app's headers: a response
    // whose other headers matter (CORS, CSP, nosniff, Vary) is sent by the bridge, which
    // keeps them all, whether the app wrote X-Sendfile or X-Accel-Redirect.
    if dropped_by_nginx(head) {
        return hand_off(head, FileSpec::Whole(path), None);
    }
    handed_on(head, FileSpec::Whole(path), hand_off)
}

/// `head`, without the app's body, for the web server to send `spec` once the bridge has
/// checked every file of it.
fn handed_on(
    head: &mut ResponseHead,
    spec: FileSpec,
    hand_off: impl Fn(&ResponseHead, FileSpec, Option<Bytes>) -> Decision,
) -> Decision {
    head.content_length = None; // the app's body is not sent
    match super::encode_head(head, 0) {
        Ok((_, out)) => hand_off(head, spec, Some(out.freeze())),
        // Answered as any head that cannot be passed on.
        Err(_) => Decision::Forward,
    }
}

/// `rest` (empty or starting with `/`) when `path` lies under the directory `prefix`.
fn strip_dir_prefix<'a>(path: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let prefix = prefix.strip_suffix(b"/").unwrap_or(prefix);
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with(b"/")).then_some(rest)
}

/// Percent-encode everything but unreserved characters, sub-delims, `:`, `@` and `/`.
fn percent_encode(s: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The app's headers nginx passes on from a response with X-Accel-Redirect (besides those
/// it makes from the file: Content-Length, ETag, Last-Modified), and its own `X-Accel-*`.
const NGINX_KEEPS: &[&[u8]] =
    &[b"content-type", b"content-disposition", b"accept-ranges", b"set-cookie", b"cache-control", b"expires"];

/// Whether `head` has a header nginx would drop once it follows X-Accel-Redirect.
fn dropped_by_nginx(head: &ResponseHead) -> bool {
    head.headers.iter().any(|(n, _)| {
        let kept = NGINX_KEEPS.iter().chain(BODY_HEADERS).any(|h| n.eq_ignore_ascii_case(h))
            || n.len() > 8 && n[..8].eq_ignore_ascii_case(b"x-accel-");
        !kept && !fastcgi_server::cgi::is_hop_by_hop(n) && !n.eq_ignore_ascii_case(b"status")
    })
}

/// Header (name, value) pairs.
type Headers = Vec<(Bytes, Bytes)>;

/// The app's headers kept on a response the bridge serves, and its Content-Type.
fn kept_headers(head: &ResponseHead) -> Result<(Headers, Option<Bytes>), String> {
    let mut kept = Vec::new();
    for (n, v) in &head.headers {
        if !fastcgi_server::cgi::is_token(n) {
            return Err(format!("header name {:?} is not a valid token", String::from_utf8_lossy(n)));
        }
        if super::has_ctl(v) {
            return Err(format!("header {:?} has a CR, LF or NUL in its value", String::from_utf8_lossy(n)));
        }
        let body = BODY_HEADERS.iter().any(|h| n.eq_ignore_ascii_case(h));
        let hop = fastcgi_server::cgi::is_hop_by_hop(n) || n.eq_ignore_ascii_case(b"status");
        if !body && !hop {
            kept.push((n.clone(), v.clone()));
        }
    }
    Ok((kept, head.content_type.clone().filter(|t| !t.is_empty())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kinds_are_the_protocol_crates_hand_off_headers() {
        // The workers know a hand-off by fastcgi_server::cgi::FILE_HANDOFF: the same names.
        for name in fastcgi_server::cgi::FILE_HANDOFF {
            assert!(Kind::of(name).is_some(), "{}", String::from_utf8_lossy(name));
        }
        for kind in [Kind::Sendfile, Kind::Sendfile2, Kind::AccelRedirect] {
            assert!(fastcgi_server::cgi::is_file_handoff(kind.name().as_bytes()), "{}", kind.name());
        }
    }

    fn head(headers: &[(&str, &str)]) -> ResponseHead {
        let headers: Vec<(Bytes, Bytes)> = headers
            .iter()
            .map(|(n, v)| (Bytes::copy_from_slice(n.as_bytes()), Bytes::copy_from_slice(v.as_bytes())))
            .collect();
        let content_type =
            headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(b"content-type")).map(|(_, v)| v.clone());
        ResponseHead { status: Some(200), reason: None, location: None, content_type, content_length: None, headers }
    }

    fn files(mode: Mode, dialect: Dialect, roots: Vec<PathBuf>) -> Files {
        behind(mode, Front { dialect, protocol: Protocol::FastCgi }, roots)
    }

    fn piece(path: &str, start: u64, end: Option<u64>) -> Piece {
        Piece { path: path.as_bytes().to_vec(), start, end }
    }

    fn behind(mode: Mode, front: Front, roots: Vec<PathBuf>) -> Files {
        let map = vec![("/srv/files".into(), "/protected".into()), ("/srv/files/deep".into(), "/deep".into())];
        Files::new(mode, front, roots, map, 16, mode == Mode::Serve)
    }

    #[test]
    fn uri_and_fs_mapping() {
        let f = files(Mode::Serve, Dialect::Caddy, vec![]);
        assert_eq!(f.uri_to_fs(b"/protected/a%20b.pdf?x=1").as_deref(), Some(&b"/srv/files/a b.pdf"[..]));
        assert_eq!(f.uri_to_fs(b"/deep/x").as_deref(), Some(&b"/srv/files/deep/x"[..]));
        assert_eq!(f.uri_to_fs(b"/protectedX/a"), None);
        assert_eq!(f.uri_to_fs(b"/other/a"), None);
        assert_eq!(f.uri_to_fs(b"/protected/a%00b"), None);
        assert_eq!(f.uri_to_fs(b"@named"), None);
        // the longest filesystem prefix wins
        assert_eq!(f.fs_to_uri(b"/srv/files/deep/x y?").as_deref(), Some("/deep/x%20y%3F"));
        assert_eq!(f.fs_to_uri(b"/srv/files/a.pdf").as_deref(), Some("/protected/a.pdf"));
        assert_eq!(f.fs_to_uri(b"/srv/filesX/a"), None);
    }

    #[test]
    fn a_file_for_nginx_whose_headers_nginx_would_drop_is_sent_by_the_bridge() {
        let dir = crate::scratch::scratch_dir("handoff-nginx-drops");
        std::fs::write(dir.join("a.csv"), "x\n").unwrap();
        let map = vec![(dir.display().to_string(), "/protected".to_owned())];
        let nginx = Front { dialect: Dialect::Nginx, protocol: Protocol::FastCgi };
        let f = Files::new(Mode::Translate, nginx, vec![], map, 16, true);
        let file = dir.join("a.csv").display().to_string();
        // What nginx keeps, or makes from the file: handed to nginx.
        let kept = [
            ("Content-Type", "text/csv"),
            ("Content-Disposition", "attachment"),
            ("Set-Cookie", "a=1"),
            ("Cache-Control", "no-store"),
            ("ETag", "\"1\""),
            ("Last-Modified", "x"),
            ("X-Accel-Buffering", "no"),
        ];
        let mut h = head(&[&[("X-Sendfile", file.as_str())][..], &kept[..]].concat());
        assert!(for_front(f.decide(&mut h, 1, None))
            .starts_with("Status: 200 OK\r\nX-Accel-Redirect: /protected/a.csv\r\n"));
        // A CORS or CSP header nginx would drop: the bridge sends the file, with it.
        for extra in [("Access-Control-Allow-Origin", "https://a.example"), ("Content-Security-Policy", "sandbox")] {
            let mut h = head(&[("X-Sendfile", file.as_str()), extra]);
            let Decision::Serve(served) = f.decide(&mut h, 1, None) else { panic!("not served: {extra:?}") };
            assert_eq!(served.headers, vec![(Bytes::from(extra.0), Bytes::from(extra.1))]);
        }
        // A missing file too: the bridge answers 404 as for any file it sends.
        let mut h = head(&[("X-Sendfile", &*format!("{}/missing", dir.display())), ("Vary", "Origin")]);
        assert!(matches!(f.decide(&mut h, 1, None), Decision::Serve(s) if s.to_front.is_none()));
        // The app's own X-Accel-Redirect into a file-map location: the same.
        let mut h = head(&[&[("X-Accel-Redirect", "/protected/a.csv")][..], &kept[..]].concat());
        assert!(for_front(f.decide(&mut h, 1, None)).contains("\r\nX-Accel-Redirect: /protected/a.csv\r\n"));
        let mut h = head(&[("X-Accel-Redirect", "/protected/a.csv"), ("Vary", "Cookie")]);
        let Decision::Serve(served) = f.decide(&mut h, 1, None) else { panic!("not served") };
        assert_eq!((served.headers, served.to_front), (vec![(Bytes::from("Vary"), Bytes::from("Cookie"))], None));
        // One nginx follows elsewhere (a named location, one no file-map covers) is nginx's.
        let mut h = head(&[("X-Accel-Redirect", "@files"), ("Vary", "Cookie")]);
        assert!(matches!(f.decide(&mut h, 1, None), Decision::Forward));
    }

    #[test]
    fn a_directory_named_through_a_symlink_is_one_as_written_too() {
        // A path is compared with the roots as written before anything is looked up: the
        // configured form counts, as well as the real one.
        let dir = crate::scratch::scratch_dir("handoff-symlinked-root");
        std::fs::create_dir(dir.join("real")).unwrap();
        std::fs::write(dir.join("real/f.txt"), "x").unwrap();
        std::os::unix::fs::symlink(dir.join("real"), dir.join("link")).unwrap();
        let nginx = Front { dialect: Dialect::Nginx, protocol: Protocol::FastCgi };
        let f =
            Files::new(Mode::Translate, nginx, vec![dir.join("link")], vec![("/srv/x".into(), "/p".into())], 16, true);
        assert_eq!(f.roots, vec![dir.join("real"), dir.join("link")]);
        for p in [dir.join("link/f.txt"), dir.join("real/f.txt")] {
            let mut h = head(&[("X-Sendfile", p.to_str().unwrap_or_default())]);
            assert!(matches!(f.decide(&mut h, 1, None), Decision::Serve(s) if s.to_front.is_none()), "{}", p.display());
        }
        let map = vec![(dir.join("link").display().to_string(), "/protected".to_owned())];
        let f = Files::new(Mode::Translate, nginx, vec![], map, 16, true);
        assert_eq!(f.serve_roots, vec![dir.join("real"), dir.join("link")]);
        assert_eq!(f.worker_roots, Some(Bytes::from(dir.join("real").display().to_string())));
        let found = super::super::sendfile::locate(
            &f.serve_roots,
            dir.join("link/f.txt").to_str().unwrap_or_default().as_bytes(),
        );
        assert_eq!(found.map(|l| l.real).ok(), Some(dir.join("real/f.txt")));
    }

    /// The head that goes to the web server (nginx, lighttpd) once the bridge has checked the file.
    fn for_front(d: Decision) -> String {
        match d {
            Decision::Serve(h) if h.to_front.is_some() => {
                String::from_utf8_lossy(&h.to_front.unwrap_or_default()).into()
            }
            other => panic!("not for nginx: {other:?}"),
        }
    }

    #[test]
    fn translate_rewrites_for_the_server_in_front() {
        let nginx = files(Mode::Translate, Dialect::Nginx, vec![]);
        let mut h = head(&[("X-Sendfile", "/srv/files/a/b.pdf"), ("Content-Length", "12")]);
        h.content_length = Some(12);
        let Decision::Serve(checked) = nginx.decide(&mut h, 1, None) else { panic!("not checked") };
        // nginx sends the file once the bridge has checked it: no Content-Length of the app's body
        assert_eq!(checked.spec, FileSpec::Whole(b"/srv/files/a/b.pdf".to_vec()));
        assert_eq!(
            checked.to_front.as_deref(),
            Some(&b"Status: 200 OK\r\nX-Accel-Redirect: /protected/a/b.pdf\r\n\r\n"[..])
        );
        // nginx understands its own header; one into a file-map directory is checked first
        let mut h = head(&[("X-Accel-Redirect", "/anything")]);
        assert!(matches!(nginx.decide(&mut h, 1, None), Decision::Forward));
        let mut h = head(&[("X-Accel-Redirect", "/deep/a%20b.pdf?v=1"), ("Set-Cookie", "a=1")]);
        let Decision::Serve(checked) = nginx.decide(&mut h, 1, None) else { panic!("not checked") };
        assert_eq!(checked.spec, FileSpec::Whole(b"/srv/files/deep/a b.pdf".to_vec()));
        let to_front = String::from_utf8_lossy(checked.to_front.as_deref().unwrap_or_default()).into_owned();
        assert_eq!(to_front, "Status: 200 OK\r\nX-Accel-Redirect: /deep/a%20b.pdf?v=1\r\nSet-Cookie: a=1\r\n\r\n");
        // lighttpd follows X-Sendfile; one into a file-map directory is checked first too
        let lighttpd = files(Mode::Translate, Dialect::Lighttpd, vec![]);
        let mut h = head(&[("X-Accel-Redirect", "/protected/a%20b.pdf")]);
        assert_eq!(
            for_front(lighttpd.decide(&mut h, 1, None)),
            "Status: 200 OK\r\nX-Sendfile: /srv/files/a%20b.pdf\r\n\r\n"
        );
        // lighttpd decodes X-Sendfile: the file it opens is the one checked, and it gets that
        // path encoded (a `%` written by the app cannot lead it to another file)
        for (written, opened, sent) in [
            ("/srv/%66iles/a", "/srv/files/a", "/srv/files/a"),
            ("/srv/files/a%41", "/srv/files/aA", "/srv/files/aA"),
            ("/srv/files/a%2541", "/srv/files/a%41", "/srv/files/a%2541"),
        ] {
            let mut h = head(&[("X-Sendfile", written)]);
            let Decision::Serve(checked) = lighttpd.decide(&mut h, 1, None) else { panic!("{written}: not checked") };
            assert_eq!(checked.spec, FileSpec::Whole(opened.as_bytes().to_vec()), "{written}");
            let to_front = String::from_utf8_lossy(checked.to_front.as_deref().unwrap_or_default()).into_owned();
            assert_eq!(to_front, format!("Status: 200 OK\r\nX-Sendfile: {sent}\r\n\r\n"), "{written}");
        }
        // a mapped X-Accel-Redirect, decoded once by the mapping, is encoded for lighttpd
        let mut h = head(&[("X-Accel-Redirect", "/protected/x%2541")]);
        let Decision::Serve(checked) = lighttpd.decide(&mut h, 1, None) else { panic!("not checked") };
        assert_eq!(checked.spec, FileSpec::Whole(b"/srv/files/x%41".to_vec()));
        assert!(for_front(Decision::Serve(checked)).contains("\r\nX-Sendfile: /srv/files/x%2541\r\n"));
        let mut h = head(&[("X-Sendfile2", "/srv/files/a 0-1, /x 0-1")]);
        assert_eq!(
            for_front(lighttpd.decide(&mut h, 1, None)),
            "Status: 200 OK\r\nX-Sendfile2: /srv/files/a 0-1, /x 0-1\r\n\r\n"
        );
        // one naming no file-map directory nor file-root is lighttpd's own (its docroot)
        let mut h = head(&[("X-Sendfile2", "/x 0-1")]);
        assert!(matches!(lighttpd.decide(&mut h, 1, None), Decision::Forward));
        let mut h = head(&[("X-Sendfile", "/srv/other/a")]);
        assert!(matches!(lighttpd.decide(&mut h, 1, None), Decision::Forward));
    }

    #[test]
    fn translate_never_forwards_what_the_server_cannot_do() {
        let nginx = files(Mode::Translate, Dialect::Nginx, vec![]);
        let mut h = head(&[("X-Sendfile", "/etc/passwd")]);
        match nginx.decide(&mut h, 1, None) {
            Decision::Refuse { header, why } => {
                assert_eq!(header, "X-Sendfile: /etc/passwd");
                assert!(why.starts_with("no file-map prefix covers it"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        let mut h = head(&[("X-Sendfile2", "/srv/files/a 0-1")]);
        assert!(matches!(nginx.decide(&mut h, 1, None), Decision::Refuse { .. }));
        let lighttpd = files(Mode::Translate, Dialect::Lighttpd, vec![]);
        let mut h = head(&[("X-Accel-Redirect", "/unmapped/a")]);
        assert!(matches!(lighttpd.decide(&mut h, 1, None), Decision::Refuse { .. }));
        let caddy = files(Mode::Translate, Dialect::Caddy, vec![]);
        let mut h = head(&[("X-Sendfile", "/srv/files/a")]);
        assert!(matches!(caddy.decide(&mut h, 1, None), Decision::Refuse { .. }));
        // lighttpd's older name is X-Sendfile too: checked, and passed on under that name.
        let mut h = head(&[("X-LIGHTTPD-send-file", "/etc/passwd")]);
        assert!(matches!(nginx.decide(&mut h, 1, None), Decision::Refuse { .. }));
        let mut h = head(&[("X-LIGHTTPD-send-file", "/srv/files/../secret")]);
        assert!(matches!(lighttpd.decide(&mut h, 1, None), Decision::Refuse { .. }));
        let mut h = head(&[("X-LIGHTTPD-send-file", "/srv/files/a")]);
        assert_eq!(for_front(lighttpd.decide(&mut h, 1, None)), "Status: 200 OK\r\nX-Sendfile: /srv/files/a\r\n\r\n");
    }

    #[test]
    fn x_sendfile_temporary_is_never_passed_on() {
        // mod_xsendfile sends it and deletes the file: unchecked, it would reach any file.
        for f in [files(Mode::Translate, Dialect::Apache, vec![]), files(Mode::Serve, Dialect::Apache, vec![])] {
            let mut h = head(&[("X-SENDFILE-TEMPORARY", "/etc/passwd")]);
            let Decision::Refuse { header, why } = f.decide(&mut h, 1, None) else { panic!("passed on") };
            assert_eq!(header, "X-Sendfile-Temporary: /etc/passwd");
            assert!(why.contains("send X-Sendfile"), "{why}");
        }
    }

    #[test]
    fn only_the_checked_hand_off_header_goes_on() {
        // lighttpd follows X-Sendfile2 before X-Sendfile, nginx the first X-Accel-Redirect:
        // a second hand-off header, never checked, must not reach either.
        let lighttpd = files(Mode::Translate, Dialect::Lighttpd, vec![]);
        let mut h = head(&[
            ("X-Sendfile", "/srv/files/a"),
            ("X-App", "1"),
            ("X-Sendfile2", "/srv/files/../../etc/passwd 0-"),
            ("x-lighttpd-send-file", "/etc/shadow"),
            ("X-Accel-Redirect", "/protected/../x"),
        ]);
        assert_eq!(
            for_front(lighttpd.decide(&mut h, 1, None)),
            "Status: 200 OK\r\nX-Sendfile: /srv/files/a\r\nX-App: 1\r\n\r\n"
        );
        let nginx = files(Mode::Translate, Dialect::Nginx, vec![]);
        let mut h = head(&[("X-Accel-Redirect", "@named"), ("X-Sendfile", "/etc/passwd")]);
        assert!(matches!(nginx.decide(&mut h, 1, None), Decision::Forward));
        assert_eq!(h.headers, [(Bytes::from_static(b"X-Accel-Redirect"), Bytes::from_static(b"@named"))]);
        let mut h = head(&[("X-Sendfile", "/srv/files/a"), ("X-Accel-Redirect", "/protected/b")]);
        let Decision::Serve(checked) = nginx.decide(&mut h, 1, None) else { panic!("not checked") };
        assert_eq!(checked.to_front.as_deref(), Some(&b"Status: 200 OK\r\nX-Accel-Redirect: /protected/a\r\n\r\n"[..]));
    }

    #[test]
    fn translate_serves_unmapped_files_under_roots() {
        let dir = crate::scratch::scratch_dir("handoff");
        let file = dir.join("f.txt");
        std::fs::write(&file, b"x").unwrap_or_default();
        let nginx = files(Mode::Translate, Dialect::Nginx, vec![dir.to_path_buf()]);
        let mut h = head(&[("X-Sendfile", file.to_str().unwrap_or_default())]);
        assert!(matches!(nginx.decide(&mut h, 1, None), Decision::Serve(_)));
        let mut h = head(&[("X-Sendfile", "/etc/passwd")]);
        assert!(matches!(nginx.decide(&mut h, 1, None), Decision::Refuse { .. }));
    }

    #[test]
    fn serve_keeps_the_apps_headers() {
        let f = files(Mode::Serve, Dialect::Haproxy, vec![]);
        let mut h = head(&[
            ("X-Accel-Redirect", "/protected/a.pdf"),
            ("Content-Type", "application/pdf"),
            ("Content-Length", "12"),
            ("Content-Disposition", "attachment; filename=\"a.pdf\""),
            ("Set-Cookie", "a=1"),
            ("ETag", "\"app\""),
            ("Transfer-Encoding", "chunked"),
            ("X-Custom", "yes"),
        ]);
        let Decision::Serve(s) = f.decide(&mut h, 7, None) else { panic!("not served") };
        assert_eq!(s.kind, Kind::AccelRedirect);
        assert_eq!(s.spec, FileSpec::Whole(b"/srv/files/a.pdf".to_vec()));
        assert_eq!(s.content_type.as_deref(), Some(&b"application/pdf"[..]));
        let names: Vec<&[u8]> = s.headers.iter().map(|(n, _)| &n[..]).collect();
        assert_eq!(names, vec![&b"Content-Disposition"[..], b"Set-Cookie", b"X-Custom"]);
        let mut h = head(&[("X-Accel-Redirect", "/nowhere/a.pdf")]);
        match f.decide(&mut h, 7, None) {
            Decision::Refuse { why, .. } => assert_eq!(why, "no file-map prefix covers it"),
            other => panic!("{other:?}"),
        }
        let mut h = head(&[("X-Sendfile2", "/srv/files/a 0-")]);
        let Decision::Serve(s) = f.decide(&mut h, 7, None) else { panic!("not served") };
        assert_eq!(s.spec, FileSpec::Pieces(vec![piece("/srv/files/a", 0, None)]));
        let mut h = head(&[("X-Sendfile2", "/srv/files/a")]);
        assert!(matches!(f.decide(&mut h, 7, None), Decision::Refuse { .. }));
        let mut h = head(&[("Content-Type", "text/plain")]);
        assert!(matches!(f.decide(&mut h, 7, None), Decision::Forward));
    }

    #[test]
    fn normal_paths() {
        assert_eq!(normal_path(b"/srv/files/a b.pdf", false), Ok(()));
        assert_eq!(normal_path(b"/srv/files/..a/b..", false), Ok(()));
        assert_eq!(normal_path(b"/srv/files/%2e%2e/x", false), Ok(())); // as written; decoded elsewhere
        assert_eq!(normal_path(b"srv/a", false), Err(PathFlaw::Relative));
        assert_eq!(normal_path(b"", false), Err(PathFlaw::Relative));
        assert_eq!(normal_path(b"/srv/../etc/passwd", false), Err(PathFlaw::DotDot));
        assert_eq!(normal_path(b"/srv/files/..", false), Err(PathFlaw::DotDot));
        assert_eq!(normal_path(b"/srv/./a", false), Err(PathFlaw::Dot));
        assert_eq!(normal_path(b"/srv//a", false), Err(PathFlaw::Empty));
        assert_eq!(normal_path(b"//srv/a", false), Err(PathFlaw::Empty));
        assert_eq!(normal_path(b"/", false), Err(PathFlaw::TrailingSlash));
        assert_eq!(normal_path(b"/srv/dir/", false), Err(PathFlaw::TrailingSlash));
        assert_eq!(normal_path(b"/internal/", true), Ok(()));
        assert_eq!(normal_path(b"/", true), Ok(()));
        assert_eq!(normal_path(b"//", true), Err(PathFlaw::Empty));
        assert_eq!(normal_path(b"/internal//", true), Err(PathFlaw::Empty));
        assert_eq!(normal_path(b"/a\0b", false), Err(PathFlaw::Control));
        assert_eq!(normal_path(b"/a\x1bb", false), Err(PathFlaw::Control));
        assert_eq!(normal_path(b"/a\\..\\b", false), Err(PathFlaw::Backslash));
    }

    fn refused(f: &Files, header: &str, value: &str) -> String {
        let mut h = head(&[(header, value)]);
        match f.decide(&mut h, 1, None) {
            Decision::Refuse { header: shown, why } => {
                assert_eq!(shown, format!("{header}: {value}"));
                why
            }
            other => panic!("{header}: {value} → {other:?}"),
        }
    }

    #[test]
    fn non_normal_paths_are_refused_before_mapping_in_every_dialect() {
        let dir = crate::scratch::scratch_dir("handoff-dots");
        let root = dir.to_string_lossy().into_owned();
        for dialect in [Dialect::Nginx, Dialect::Lighttpd, Dialect::Apache, Dialect::Caddy, Dialect::Generic] {
            for mode in [Mode::Translate, Mode::Serve] {
                let f = files(mode, dialect, vec![dir.to_path_buf()]);
                let why = refused(&f, "X-Sendfile", "/srv/files/../secret.txt");
                assert_eq!(why, "\"/srv/files/../secret.txt\" is not a normal path: it has a `..` segment");
                refused(&f, "X-Sendfile", &format!("{root}/../secret.txt"));
                refused(&f, "X-Sendfile", "/srv/files/./a.pdf");
                refused(&f, "X-Sendfile", "/srv/files//a.pdf");
                refused(&f, "X-Sendfile", "/srv/files/a\\..\\..\\b");
                // lighttpd and mod_xsendfile decode X-Sendfile
                let why = refused(&f, "X-Sendfile", "/srv/files/%2e%2e/secret.txt");
                assert!(
                    why.ends_with("once percent-decoded (\"/srv/files/../secret.txt\"): it has a `..` segment"),
                    "{why}"
                );
                refused(&f, "X-Accel-Redirect", "/protected/../secret.txt");
                refused(&f, "X-Accel-Redirect", "/protected/%2E%2E/secret.txt");
                refused(&f, "X-Accel-Redirect", "/protected/a%2f..%2f..%2fb");
                refused(&f, "X-Accel-Redirect", "/protected/%00a");
                refused(&f, "X-Sendfile2", "/srv/files/a 0-1, /srv/files/../b 0-1");
                refused(&f, "X-Sendfile2", "/srv/files/%2e%2e/b 0-1");
                refused(&f, "X-Sendfile2", "relative/a 0-1");
            }
        }
        // passed to lighttpd as it is when the bridge cannot parse it: its paths are checked still
        let lighttpd = files(Mode::Translate, Dialect::Lighttpd, vec![]);
        refused(&lighttpd, "X-Sendfile2", "/srv/files/%2e%2e/b 0-1 extra");
        let mut h = head(&[("X-Sendfile2", "/srv/files/b 0-1 extra")]);
        assert!(matches!(lighttpd.decide(&mut h, 1, None), Decision::Forward));
        // X-Accel-Redirect mapped to X-Sendfile for lighttpd, which decodes it once more
        refused(&lighttpd, "X-Accel-Redirect", "/protected/%252e%252e/secret.txt");
    }

    #[test]
    fn nginx_follows_a_normal_x_accel_redirect() {
        let nginx = files(Mode::Translate, Dialect::Nginx, vec![]);
        for ok in ["/internal/", "@named", "/p/a%20b"] {
            let mut h = head(&[("X-Accel-Redirect", ok)]);
            assert!(matches!(nginx.decide(&mut h, 1, None), Decision::Forward), "{ok}");
        }
        for mapped in ["/protected/a.pdf", "/protected/a.pdf?path=../x", "/protected/"] {
            let mut h = head(&[("X-Accel-Redirect", mapped)]);
            assert!(for_front(nginx.decide(&mut h, 1, None)).contains(&format!("\r\nX-Accel-Redirect: {mapped}\r\n")));
        }
        refused(&nginx, "X-Accel-Redirect", "/internal/../admin");
        refused(&nginx, "X-Accel-Redirect", "/internal/%2e%2e/admin?x=1");
        refused(&nginx, "X-Accel-Redirect", "relative");
        // a literal `%2e%2e` directory is not `..` for nginx: X-Sendfile's `%` is encoded
        let mut h = head(&[("X-Sendfile", "/srv/files/100%.txt")]);
        assert!(for_front(nginx.decide(&mut h, 1, None)).contains("\r\nX-Accel-Redirect: /protected/100%25.txt\r\n"));
    }

    #[test]
    fn worker_roots_param() {
        let nginx = Front { dialect: Dialect::Nginx, protocol: Protocol::FastCgi };
        let map = || vec![("/no/such/dir".into(), "/p".into()), ("/a:b".into(), "/q".into())];
        let f = Files::new(Mode::Translate, nginx, vec![], map(), 16, true);
        assert_eq!(f.worker_roots.as_deref(), Some(&b"/no/such/dir"[..]));
        let serve = Files::new(Mode::Serve, nginx, vec!["/no/such/root".into()], map(), 16, true);
        assert_eq!(serve.worker_roots.as_deref(), Some(&b"/no/such/root"[..]));
        // file-hand-back: false (translate's default but behind nginx): the worker is told nothing and streams
        let f = Files::new(Mode::Translate, nginx, vec!["/no/such/root".into()], map(), 16, false);
        assert_eq!(f.worker_roots, None);
    }

    #[test]
    fn lighttpd_over_scgi_never_gets_x_sendfile2() {
        let scgi = Front { dialect: Dialect::Lighttpd, protocol: Protocol::Scgi };
        let f = behind(Mode::Translate, scgi, vec![]);
        let why = refused(&f, "X-Sendfile2", "/srv/files/a 0-1");
        assert_eq!(
            why,
            "lighttpd follows X-Sendfile2 only over FastCGI (mod_scgi does not), and the listener has no file-roots to serve it from"
        );
        // a value the bridge cannot parse is not passed on either
        let why = refused(&f, "X-Sendfile2", "/srv/files/b 0-1 extra");
        assert!(why.contains("text after its range"), "{why}");
        // X-Sendfile and a mapped X-Accel-Redirect still go to lighttpd over SCGI (checked)
        let mut h = head(&[("X-Sendfile", "/srv/files/a")]);
        assert_eq!(for_front(f.decide(&mut h, 1, None)), "Status: 200 OK\r\nX-Sendfile: /srv/files/a\r\n\r\n");
        let mut h = head(&[("X-Accel-Redirect", "/protected/a")]);
        assert_eq!(for_front(f.decide(&mut h, 1, None)), "Status: 200 OK\r\nX-Sendfile: /srv/files/a\r\n\r\n");
        // served by the bridge when file-roots cover every piece
        let dir = crate::scratch::scratch_dir("handoff-scgi");
        std::fs::write(dir.join("f.txt"), b"xyz").unwrap_or_default();
        let f = behind(Mode::Translate, scgi, vec![dir.to_path_buf()]);
        let mut h = head(&[("X-Sendfile2", &format!("{}/f.txt 0-1", dir.display()))]);
        assert!(matches!(f.decide(&mut h, 1, None), Decision::Serve(_)));
        let why = refused(&f, "X-Sendfile2", "/etc/passwd 0-1");
        assert!(why.starts_with("lighttpd follows X-Sendfile2 only over FastCGI"), "{why}");
    }
}
