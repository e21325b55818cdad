//! One config file exactly as written: serde structs with kebab-case keys.
//!
//! Every key is optional here; what is required, and every default, is decided in
//! `resolve.rs`, where the error can name the key that is missing. Unknown keys are
//! rejected (`deny_unknown_fields`) so a typo never silently falls back to a default.
use super::units::{ByteSize, HumanDuration, WrittenSize};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::marker::PhantomData;

/// Top level of a file: any of the three sections, and `x-…` keys, which are ignored: a
/// place for YAML anchors that pools or listeners share (`x-common: &common {...}`).
#[derive(Debug, Default)]
pub(super) struct RawFile {
    pub bridge: Option<RawBridge>,
    pub pools: Option<Entries<RawPool>>,
    pub listeners: Option<Entries<RawListener>>,
}

impl<'de> Deserialize<'de> for RawFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const SECTIONS: &[&str] = &["bridge", "pools", "listeners"];
        struct FileVisitor;

        impl<'de> Visitor<'de> for FileVisitor {
            type Value = RawFile;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of bridge, pools and listeners")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut file = RawFile::default();
                let mut seen = [false; 3];
                while let Some(key) = map.next_key::<String>()? {
                    if let Some(i) = SECTIONS.iter().position(|s| *s == key) {
                        if std::mem::replace(&mut seen[i], true) {
                            return Err(de::Error::duplicate_field(SECTIONS[i]));
                        }
                    }
                    match key.as_str() {
                        "bridge" => file.bridge = map.next_value()?,
                        "pools" => file.pools = map.next_value()?,
                        "listeners" => file.listeners = map.next_value()?,
                        k if k.starts_with("x-") => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                        k => return Err(de::Error::unknown_field(k, SECTIONS)),
                    }
                }
                Ok(file)
            }
        }
        deserializer.deserialize_map(FileVisitor)
    }
}

/// The `bridge:` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawBridge {
    pub runtime_dir: Option<String>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    pub access_log: Option<String>,
    /// The daemon's log file (default: stderr); reopened on SIGUSR1.
    pub log_file: Option<String>,
    pub shutdown_timeout: Option<HumanDuration>,
    /// After SIGTERM, how long ping paths answer 503 while everything else is still served.
    pub drain_period: Option<HumanDuration>,
    /// `$remote_addr "$method $uri" $status …`: the access log line (docs/configuration.md).
    pub access_log_format: Option<String>,
    /// The status listener: `{listen: 127.0.0.1:9180 | unix:/path, path: /status}`.
    pub status: Option<RawStatus>,
    /// The unix socket `fcgibridge status|reload|stop` talk to.
    pub control_socket: Option<String>,
    /// Memory all connections together may hold in request headers still arriving.
    pub header_memory: Option<ByteSize>,
    /// Summarise the log lines a client can cause per request (logging/ratelimit.rs).
    pub log_rate_limit: Option<bool>,
}

/// `bridge: status:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawStatus {
    pub listen: Option<String>,
    pub path: Option<String>,
}

/// One entry under `pools:`. Clone and Serialize serve templates (config/template.rs):
/// an instance is this entry again with its placeholders filled in.
#[derive(Debug, Default, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawPool {
    pub app: Option<String>,
    pub python: Option<String>,
    /// A generic FastCGI program instead of a WSGI app: `[php-cgi]`, `[./app.fcgi, --x]`.
    pub command: Option<Vec<String>>,
    pub chdir: Option<String>,
    #[serde(default, deserialize_with = "env_entries")]
    pub env: Option<Entries<String>>,
    pub processes: Option<u32>,
    pub threads: Option<u32>,
    /// `wsgi` (default), `asgi` or `auto` (config/interface.rs takes these three out).
    pub interface: Option<String>,
    /// Requests in flight per ASGI worker.
    pub concurrency: Option<u32>,
    /// `auto`, `asyncio` or `uvloop`.
    pub asgi_loop: Option<String>,
    pub queue_size: Option<usize>,
    pub queue_timeout: Option<HumanDuration>,
    pub startup_timeout: Option<HumanDuration>,
    /// A path (or `http(s)://host/path`) a new worker must answer 2xx/3xx before it is ready.
    pub ready_check: Option<String>,
    /// Log the Python stack of a request running longer than this.
    pub slowlog_timeout: Option<HumanDuration>,
    // Supervision (config/supervision.rs): taken out by `RawSupervision::take`.
    pub mode: Option<String>,
    pub min_processes: Option<u32>,
    pub max_processes: Option<u32>,
    pub spare_processes: Option<u32>,
    pub max_spawn_rate: Option<u32>,
    pub idle_timeout: Option<HumanDuration>,
    pub max_requests: Option<u64>,
    pub max_requests_jitter: Option<u64>,
    pub restart_interval: Option<HumanDuration>,
    pub restart_interval_jitter: Option<HumanDuration>,
    pub min_lifetime: Option<HumanDuration>,
    pub request_timeout: Option<HumanDuration>,
    pub graceful_timeout: Option<HumanDuration>,
    pub abort_grace: Option<HumanDuration>,
    pub memory_limit: Option<WrittenSize>,
    pub cpu_time_limit: Option<HumanDuration>,
    pub max_body: Option<ByteSize>,
    /// `stream` (default), `buffer` or `refuse`: a chunked upload's body.
    pub unknown_length_body: Option<String>,
    pub pipeline: Option<bool>,
    /// Files whose change (mtime, or a new file in its place) restarts the pool's workers,
    /// rolling: a path or a list (uWSGI's `touch-reload`, mod_wsgi's touched `.wsgi`).
    #[serde(default, deserialize_with = "one_or_many")]
    pub touch_reload: Option<Vec<String>>,
    /// `<status>: file | {file: path} | {redirect: /local/path}` — pages replacing an app's
    /// error bodies and the bridge's own errors.
    pub error_pages: Option<Entries<RawErrorPage>>,
    // Isolation (config/isolation.rs): taken out by `RawIsolation::take`.
    pub user: Option<String>,
    pub group: Option<String>,
    pub groups: Option<Vec<String>>,
    pub chroot: Option<String>,
    /// A string so that `"0027"` and an unquoted `0027` keep their octal digits.
    pub umask: Option<String>,
    pub clear_env: Option<bool>,
    pub rlimit_nofile: Option<u64>,
    /// Processes (and threads) of the workers' user, all counted together.
    pub rlimit_nproc: Option<u64>,
    /// A size or "unlimited".
    pub rlimit_core: Option<String>,
    /// Address space (RLIMIT_AS), a size.
    pub rlimit_as: Option<ByteSize>,
    pub nice: Option<i32>,
    pub allow_root: Option<bool>,
    pub script_user: Option<String>,
    pub script_group: Option<String>,
    pub preload: Option<bool>,
    /// Makes the entry a template of pools made per request (config/template.rs). Written
    /// with no value (`template:`), it is a template with every default.
    #[serde(skip_serializing, default, deserialize_with = "present")]
    pub template: Option<super::template::RawTemplate>,
}

/// A key that is there, even with no value: null reads as the default.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Some(Option::<T>::deserialize(d)?.unwrap_or_default()))
}

/// A pool's `env:`, a mapping. uWSGI's `env = NAME=value` lines, pasted as a string or a
/// list, are refused with the mapping that says the same.
fn env_entries<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Entries<String>>, D::Error> {
    struct EnvVisitor;

    impl<'de> Visitor<'de> for EnvVisitor {
        type Value = Option<Entries<String>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a mapping of variable names to values")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            Entries::deserialize(de::value::MapAccessDeserializer::new(map)).map(Some)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Err(E::custom(super::hint::env_not_a_mapping(&[v])))
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element::<String>()? {
                items.push(item);
            }
            let items: Vec<&str> = items.iter().map(String::as_str).collect();
            Err(de::Error::custom(super::hint::env_not_a_mapping(&items)))
        }
    }

    d.deserialize_any(EnvVisitor)
}

/// A string, or a list of them.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a path, or a list of paths")]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(Option::<OneOrMany>::deserialize(d)?.map(|v| match v {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    }))
}

/// One entry under `listeners:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawListener {
    pub fastcgi: Option<String>,
    pub scgi: Option<String>,
    pub pool: Option<String>,
    pub routes: Option<Vec<RawRoute>>,
    /// A string so that both `"0660"` and an unquoted `0660` keep their octal digits.
    pub socket_mode: Option<String>,
    pub socket_owner: Option<String>,
    pub socket_group: Option<String>,
    pub backlog: Option<u32>,
    pub max_params: Option<ByteSize>,
    /// The status page served through this listener, e.g. /fcgibridge-status.
    pub status_path: Option<String>,
    /// Answers "pong" through this listener, e.g. /ping.
    pub ping_path: Option<String>,
    pub dialect: Option<String>,
    pub max_redirects: Option<u32>,
    pub unrouted_redirect: Option<String>,
    /// `same` (default) or `any`: which pools an app's local redirect is followed into.
    pub redirect_pools: Option<String>,
    /// TCP peers allowed to connect (addresses, CIDR blocks); others are closed at accept.
    pub allowed_clients: Option<Vec<String>>,
    pub trusted_proxies: Option<Vec<String>>,
    pub trusted_proxy_headers: Option<Vec<String>>,
    pub file_handoff: Option<String>,
    pub file_roots: Option<Vec<String>>,
    pub file_map: Option<Entries<String>>,
    pub max_ranges: Option<u32>,
    /// Whether wsgi.file_wrapper / pathsend files are handed back instead of streamed.
    pub file_hand_back: Option<bool>,
    pub mount: Option<String>,
    pub path_info: Option<String>,
    /// Longest time from a request's first byte to its complete headers.
    pub header_timeout: Option<HumanDuration>,
    /// Longest wait for the next request body byte.
    pub body_timeout: Option<HumanDuration>,
    /// Least average rate of a request body once body-timeout has passed (bytes a second).
    pub body_min_rate: Option<ByteSize>,
    /// Longest wait for the web server to take response bytes.
    pub send_timeout: Option<HumanDuration>,
    /// Longest a kept FastCGI connection may sit with no request.
    pub keepalive_timeout: Option<HumanDuration>,
    pub max_connections: Option<u32>,
    /// The pool's workers accept this socket's connections themselves (docs/direct.md).
    pub direct: Option<bool>,
}

/// One `error-pages` entry: a file as a plain string or `{file: path}`, or
/// `{redirect: /local/path}`. Which of them is required is checked in `resolve.rs`.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RawErrorPage {
    pub file: Option<String>,
    pub redirect: Option<String>,
}

impl<'de> Deserialize<'de> for RawErrorPage {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PageVisitor;

        impl<'de> Visitor<'de> for PageVisitor {
            type Value = RawErrorPage;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a file path, `{file: path}` or `{redirect: /local/path}`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawErrorPage { file: Some(v.to_owned()), redirect: None })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut page = RawErrorPage::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "file" => page.file = Some(map.next_value()?),
                        "redirect" => page.redirect = Some(map.next_value()?),
                        other => return Err(de::Error::unknown_field(other, &["file", "redirect"])),
                    }
                }
                Ok(page)
            }
        }

        deserializer.deserialize_any(PageVisitor)
    }
}

/// One item of a listener's `routes:` list.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawRoute {
    pub host: Option<String>,
    pub prefix: Option<String>,
    pub pool: Option<String>,
}

/// A YAML mapping kept in the order it was written (pools and listeners are
/// reported, started and printed in file order).
#[derive(Debug, Clone)]
pub struct Entries<T>(pub Vec<(String, T)>);

impl<T: serde::Serialize> serde::Serialize for Entries<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<T> Default for Entries<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Entries<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for EntriesVisitor<T> {
            type Value = Entries<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of names to settings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                // Duplicate names within one file are already refused by the YAML layer.
                let mut entries = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, T>()? {
                    entries.push((key, value));
                }
                Ok(Entries(entries))
            }
            // `pools:` with nothing under it is an empty section, not a type error.
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Entries(Vec::new()))
            }
        }

        deserializer.deserialize_map(EntriesVisitor(PhantomData))
    }
}
