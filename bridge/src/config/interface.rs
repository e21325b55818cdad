//! The `interface` keys of a pool: a WSGI app served by threads, or an ASGI app served by
//! one event loop per worker with `concurrency` requests in flight (docs/asgi.md).
use super::error::{ConfigError, Source};
use super::file::RawPool;
use super::locate::KeyPath;

/// `concurrency`: requests in flight per ASGI worker (and the bridge's slots to it).
pub const DEFAULT_CONCURRENCY: u32 = 100;

/// How a pool's app is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Interface {
    /// PEP 3333: `app(environ, start_response)` on `threads` threads.
    #[default]
    Wsgi,
    /// ASGI 3: `await app(scope, receive, send)` on one event loop.
    Asgi,
    /// The worker looks at the callable and reports which it serves in its READY line.
    Auto,
}

impl Interface {
    /// The key's value as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Wsgi => "wsgi",
            Self::Asgi => "asgi",
            Self::Auto => "auto",
        }
    }
}

/// The event loop of an ASGI worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AsgiLoop {
    /// uvloop when the pool's Python has it, else asyncio.
    #[default]
    Auto,
    Asyncio,
    /// uvloop, or the worker fails to start.
    Uvloop,
}

impl AsgiLoop {
    /// The key's value as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Asyncio => "asyncio",
            Self::Uvloop => "uvloop",
        }
    }
}

/// A pool's resolved interface settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterfaceConfig {
    pub kind: Interface,
    /// Requests in flight per ASGI worker: the connections the bridge opens to it.
    pub concurrency: u32,
    pub asgi_loop: AsgiLoop,
}

impl Default for InterfaceConfig {
    fn default() -> Self {
        Self { kind: Interface::Wsgi, concurrency: DEFAULT_CONCURRENCY, asgi_loop: AsgiLoop::Auto }
    }
}

impl InterfaceConfig {
    /// Connections the bridge opens to a ready worker: `threads` for WSGI, `concurrency`
    /// for ASGI (`asgi`: what an `auto` worker reported).
    pub fn slots(&self, threads: u32, asgi: bool) -> u32 {
        match self.kind {
            Interface::Asgi => self.concurrency,
            Interface::Auto if asgi => self.concurrency,
            _ => threads,
        }
    }

    /// The most slots a worker may have before it said which interface it serves: a direct
    /// worker's scoreboard is made that large.
    pub fn most_slots(&self, threads: u32) -> u32 {
        match self.kind {
            Interface::Wsgi => threads,
            Interface::Asgi => self.concurrency,
            Interface::Auto => threads.max(self.concurrency),
        }
    }

    /// The pool's keys for `fcgibridge check`, each with its value; `threads` is
    /// printed by the caller, only when it is not an ASGI pool (`shows_threads`).
    pub fn render(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("interface", self.kind.as_str().to_owned())];
        if self.kind != Interface::Wsgi {
            out.push(("concurrency", self.concurrency.to_string()));
            out.push(("asgi-loop", self.asgi_loop.as_str().to_owned()));
        }
        out
    }

    /// Whether `threads` means anything for this pool.
    pub fn shows_threads(&self) -> bool {
        self.kind != Interface::Asgi
    }
}

/// The interface keys as written, taken out of the pool's raw keys.
#[derive(Debug, Default)]
pub struct RawInterface {
    interface: Option<String>,
    concurrency: Option<u32>,
    asgi_loop: Option<String>,
    threads_written: bool,
    command: bool,
}

impl RawInterface {
    /// Take the keys out of `raw` (`threads` stays: only whether it was written is noted).
    pub fn take(raw: &mut RawPool) -> Self {
        Self {
            interface: raw.interface.take(),
            concurrency: raw.concurrency.take(),
            asgi_loop: raw.asgi_loop.take(),
            threads_written: raw.threads.is_some(),
            command: raw.command.is_some(),
        }
    }
}

/// Check the keys; every error is returned.
pub fn resolve(src: &Source, here: &KeyPath, raw: RawInterface) -> Result<InterfaceConfig, Vec<ConfigError>> {
    let mut errs = Vec::new();
    let kind = match raw.interface.as_deref().map(str::trim) {
        None | Some("wsgi") => Interface::Wsgi,
        Some("asgi") => Interface::Asgi,
        Some("auto") => Interface::Auto,
        Some(other) => {
            let hint = super::hint::meant(super::hint::did_you_mean(other, &["wsgi", "asgi", "auto"]));
            errs.push(src.invalid(&here.key("interface"), format!("{other:?}: expected wsgi, asgi or auto{hint}")));
            Interface::Wsgi
        }
    };
    let asgi_loop = match raw.asgi_loop.as_deref().map(str::trim) {
        None | Some("auto") => AsgiLoop::Auto,
        Some("asyncio") => AsgiLoop::Asyncio,
        Some("uvloop") => AsgiLoop::Uvloop,
        Some(other) => {
            let hint = super::hint::meant(super::hint::did_you_mean(other, &["auto", "asyncio", "uvloop"]));
            errs.push(
                src.invalid(&here.key("asgi-loop"), format!("{other:?}: expected auto, asyncio or uvloop{hint}")),
            );
            AsgiLoop::Auto
        }
    };
    let concurrency = raw.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
    if concurrency == 0 {
        errs.push(src.invalid(&here.key("concurrency"), "must be 1 or more"));
    }
    if raw.command && kind != Interface::Wsgi {
        errs.push(src.invalid(
            &here.key("interface"),
            "a `command:` pool runs a FastCGI program of its own; `interface` is for `app:` pools",
        ));
    }
    if kind == Interface::Asgi && raw.threads_written {
        errs.push(src.invalid(
            &here.key("threads"),
            "an ASGI pool (`interface: asgi`) runs one event loop per worker: set `concurrency` \
             (requests in flight per worker) instead of `threads`",
        ));
    }
    if kind == Interface::Wsgi {
        let message = "applies to ASGI pools only: add `interface: asgi` (or `auto`), or leave it out";
        if raw.concurrency.is_some() {
            errs.push(src.invalid(&here.key("concurrency"), message));
        }
        if raw.asgi_loop.is_some() {
            errs.push(src.invalid(&here.key("asgi-loop"), message));
        }
    }
    if errs.is_empty() {
        Ok(InterfaceConfig { kind, concurrency, asgi_loop })
    } else {
        Err(errs)
    }
}
