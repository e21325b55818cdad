//! Pool templates: a `pools:` entry with a `template:` block is no pool of its own but the
//! pattern of pools made on demand, one per key of a request (virtual host, authenticated
//! user). Its values may hold the placeholders `{host}` and `{user}`; an instance is the
//! entry again with them filled in, resolved and checked exactly as a written pool is
//! (supervise/instances.rs makes and runs instances).
//!
//! At load time the keys without a placeholder are checked as for a pool; those with one
//! (and what depends on the app file: chdir, chroot, script owner) are checked per
//! instance, when its first request comes.
use super::error::{At, ConfigError, Source};
use super::file::RawPool;
use super::locate::KeyPath;
use super::model::Pool;
use super::paths;
use super::units::{DurationDisplay, HumanDuration};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// `max-instances` by default: live instances of one template.
pub const DEFAULT_MAX_INSTANCES: u32 = 64;
/// `instance-idle-timeout` by default: an instance with no request for this long stops.
pub const DEFAULT_INSTANCE_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// `spawn-rate` by default: new instances per second, so a scan cannot fork a pool per name.
pub const DEFAULT_SPAWN_RATE: u32 = 4;
/// `missing-cache` by default: how long a key whose app is missing is answered 404 untried.
pub const DEFAULT_MISSING_CACHE: Duration = Duration::from_secs(10);
/// `min-uid` by default: below it an instance's user is a system account and refused.
pub const DEFAULT_MIN_UID: u32 = 1000;
/// The least `queue-size` an instance gets by default, however many instances share the
/// listener: enough for a burst while its first worker starts.
pub const INSTANCE_QUEUE_FLOOR: usize = 16;

/// The placeholders a template may use, and where their values come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Placeholder {
    /// HTTP_HOST (else SERVER_NAME), lower-cased, port dropped, RFC 1123 labels only.
    Host,
    /// REMOTE_USER, as the web server's authentication (or an authorizer) set it.
    User,
    /// The account that owns the instance's app file (in `user` and `group` only): each
    /// site runs as its owner. No part of the key: it follows from the other placeholders.
    Owner,
}

impl Placeholder {
    pub const ALL: [Self; 3] = [Self::Host, Self::User, Self::Owner];

    pub fn name(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::User => "user",
            Self::Owner => "owner",
        }
    }
}

/// The `template:` block of a pool entry, as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawTemplate {
    /// A regular expression the whole key must match; others are answered 404.
    pub allow: Option<String>,
    pub max_instances: Option<u32>,
    pub instance_idle_timeout: Option<HumanDuration>,
    pub spawn_rate: Option<u32>,
    pub missing_cache: Option<HumanDuration>,
    pub min_uid: Option<u32>,
}

/// A resolved template.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    /// The directory relative paths resolve against (the file's).
    pub dir: PathBuf,
    /// The file that defines it, for the errors of its instances.
    pub file: String,
    /// The file's name and where this entry's keys are written in it: an instance's errors
    /// name `file:line:column: key` as `check` does.
    pub source: Arc<Source>,
    /// The entry as written, relative paths made absolute, `template:` taken out.
    pub raw: Arc<RawPool>,
    /// Placeholders used, in [`Placeholder::ALL`] order: together they are an instance's key.
    pub keys: Vec<Placeholder>,
    /// `{owner}` is used: the app file's owner is looked up per instance.
    pub by_owner: bool,
    pub allow: Option<regex::Regex>,
    pub max_instances: u32,
    /// None: instances are never reaped for idleness.
    pub idle_timeout: Option<Duration>,
    pub spawn_rate: u32,
    pub missing_cache: Duration,
    pub min_uid: u32,
    /// An instance's `queue-size`: as written, else its fair share of the listeners that
    /// lead to the template ([`fit_to_listeners`]).
    pub queue_size: usize,
    /// Where `queue-size` is written, when it is.
    pub queue_size_at: Option<At>,
    /// `queue_size` is the fair share of the listeners that lead to the template (none
    /// written, and at least one listener leads to it).
    pub queue_size_shared: bool,
    /// Requests its instances take without a 503 (processes × threads + queue, times
    /// max-instances), for FCGI_MAX_REQS.
    pub capacity: usize,
    /// Whether an instance's app file runs as the main script (a flup script) outside a
    /// chroot: then its shebang names the interpreter before the default does.
    pub python_from_shebang: bool,
    /// The addresses of the listeners that lead to it (by `pool:` or a route), for its
    /// instances' workers' hints (FCGIBRIDGE_LISTENERS): set when the files are merged.
    pub listened_at: Vec<String>,
    /// What `check` and the daemon warn of (a written queue-size that lets one instance hold
    /// a listener's every connection): `file:line:column: warning: key: message`.
    pub warnings: Vec<String>,
}

impl PartialEq for Template {
    fn eq(&self, o: &Self) -> bool {
        // The raw entry compares by its text: it holds no float and prints every field.
        // `dir` is left out: every path in `raw` is absolute (see `absolutize`).
        self.name == o.name
            && format!("{:?}", self.raw) == format!("{:?}", o.raw)
            && self.allow.as_ref().map(regex::Regex::as_str) == o.allow.as_ref().map(regex::Regex::as_str)
            && (self.max_instances, self.idle_timeout, self.spawn_rate)
                == (o.max_instances, o.idle_timeout, o.spawn_rate)
            && (self.missing_cache, self.min_uid, self.queue_size) == (o.missing_cache, o.min_uid, o.queue_size)
    }
}

/// The keys whose values may hold a placeholder.
const TAKES_PLACEHOLDERS: &[&str] = &[
    "app",
    "python",
    "command",
    "chdir",
    "env",
    "user",
    "group",
    "groups",
    "chroot",
    "script-user",
    "script-group",
    "ready-check",
    "touch-reload",
];

/// The string values of `raw` with their key names, placeholders possible or not.
fn strings(raw: &mut RawPool) -> Vec<(String, &mut String)> {
    let mut out: Vec<(String, &mut String)> = Vec::new();
    let one = [
        ("app", &mut raw.app),
        ("python", &mut raw.python),
        ("chdir", &mut raw.chdir),
        ("user", &mut raw.user),
        ("group", &mut raw.group),
        ("chroot", &mut raw.chroot),
        ("script-user", &mut raw.script_user),
        ("script-group", &mut raw.script_group),
        ("mode", &mut raw.mode),
        ("umask", &mut raw.umask),
        ("rlimit-core", &mut raw.rlimit_core),
        ("ready-check", &mut raw.ready_check),
    ];
    for (k, v) in one {
        if let Some(v) = v.as_mut() {
            out.push((k.to_owned(), v));
        }
    }
    for (k, list) in
        [("command", &mut raw.command), ("groups", &mut raw.groups), ("touch-reload", &mut raw.touch_reload)]
    {
        for (i, v) in list.iter_mut().flatten().enumerate() {
            out.push((format!("{k}[{i}]"), v));
        }
    }
    for (name, v) in raw.env.iter_mut().flat_map(|e| e.0.iter_mut()) {
        out.push((format!("env.{name}"), v));
    }
    for (status, page) in raw.error_pages.iter_mut().flat_map(|e| e.0.iter_mut()) {
        for v in page.file.iter_mut().chain(page.redirect.iter_mut()) {
            out.push((format!("error-pages.{status}"), v));
        }
    }
    out
}

/// What a template value may name, for the error of an unknown placeholder.
const KNOWN_IN_VALUES: &str = "a template knows {host}, {user} and {owner}";
/// What a route prefix may capture.
const KNOWN_IN_ROUTES: &str = "a route captures {host} or {user}";

/// The placeholders in `text`, or why it is not a valid template value (`known`: what may
/// be named there, for the error).
fn placeholders_in(text: &str, known: &str) -> Result<Vec<Placeholder>, String> {
    if let Some((foreign, ours)) = foreign_placeholder(text) {
        return Err(format!("{text:?}: {foreign} is written {ours} here"));
    }
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or_else(|| format!("{text:?}: a '{{' without its '}}'"))?;
        let name = &after[..close];
        let p = Placeholder::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| format!("{text:?}: unknown placeholder {{{name}}}; {known}"))?;
        found.push(p);
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("{text:?}: a '}}' without its '{{'"));
    }
    Ok(found)
}

/// A placeholder in the syntax of another server, and ours: uWSGI's `%(host)s`, nginx's
/// `$host` (`$http_host`, `$server_name`, `$remote_user`).
fn foreign_placeholder(text: &str) -> Option<(String, &'static str)> {
    const FOREIGN: [(&str, &str); 7] = [
        ("%(host)s", "{host}"),
        ("%(user)s", "{user}"),
        ("%(owner)s", "{owner}"),
        ("$host", "{host}"),
        ("$http_host", "{host}"),
        ("$server_name", "{host}"),
        ("$remote_user", "{user}"),
    ];
    FOREIGN.iter().find_map(|(foreign, ours)| {
        let at = text.find(foreign)?;
        let after = text[at + foreign.len()..].chars().next();
        let whole = !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let whose = if foreign.starts_with('%') { "uWSGI's" } else { "nginx's" };
        whole.then(|| (format!("{whose} {foreign}"), *ours))
    })
}

/// The placeholder a route prefix captures (`/~{user}`), None for a plain prefix; or why
/// the pattern is refused: one `{host}` or `{user}`, inside one segment.
pub fn route_capture(prefix: &str) -> Result<Option<Placeholder>, String> {
    let found = placeholders_in(prefix, KNOWN_IN_ROUTES)?;
    match found.as_slice() {
        [] => Ok(None),
        [p @ (Placeholder::Host | Placeholder::User)] => {
            let seg = prefix.split('/').find(|s| s.contains('{')).unwrap_or("");
            if seg.matches('{').count() == 1 {
                Ok(Some(*p))
            } else {
                Err(format!("{prefix:?}: one placeholder per segment"))
            }
        }
        _ => Err(format!("{prefix:?}: a route captures one {{host}} or {{user}}")),
    }
}

/// Fill in the placeholders of `text`; `values` follows [`Placeholder::ALL`].
pub fn fill(text: &str, values: &[(Placeholder, &str)]) -> String {
    let mut out = text.to_owned();
    for (p, v) in values {
        out = out.replace(&format!("{{{}}}", p.name()), v);
    }
    out
}

/// A template from `pools.NAME` with a `template:` block: the block's settings, every
/// placeholder checked, and the keys without one checked as a pool's are.
pub fn resolve(
    src: &Source,
    dir: &Path,
    name: &str,
    mut raw: RawPool,
    opts: super::LoadOptions<'_>,
) -> Result<Template, ConfigError> {
    let here = KeyPath::of(&["pools", name]);
    let block = raw.template.take().unwrap_or_default();
    let mut errs = Vec::new();
    let mut keys = Vec::new();
    let mut with_placeholders: Vec<String> = Vec::new();
    for (key, value) in strings(&mut raw) {
        let top = key.split(['.', '[']).next().unwrap_or("").to_owned();
        match placeholders_in(value, KNOWN_IN_VALUES) {
            Err(m) => errs.push(src.invalid(&key_path(&here, &key), m)),
            Ok(found) if found.is_empty() => {}
            Ok(_) if !TAKES_PLACEHOLDERS.contains(&top.as_str()) => errs.push(src.invalid(
                &key_path(&here, &key),
                format!("cannot take a placeholder (they go in {})", TAKES_PLACEHOLDERS.join(", ")),
            )),
            Ok(found) if found.contains(&Placeholder::Owner) && !["user", "group"].contains(&top.as_str()) => errs
                .push(
                    src.invalid(
                        &key_path(&here, &key),
                        "{owner} (the app file's owner) goes in `user` or `group` only",
                    ),
                ),
            Ok(found) => {
                keys.extend(found);
                with_placeholders.push(top);
            }
        }
    }
    let by_owner = keys.contains(&Placeholder::Owner);
    keys.retain(|p| *p != Placeholder::Owner);
    keys.sort();
    keys.dedup();
    if by_owner && raw.app.as_deref().is_none_or(|a| !(a.contains('/') || a.ends_with(".py") || a.ends_with(".wsgi"))) {
        errs.push(src.invalid(
            &here.key("user"),
            "{owner} needs a file app (`app: /srv/sites/{host}/app.py`) to take the owner from",
        ));
    }
    if keys.is_empty() && errs.is_empty() {
        errs.push(src.invalid(&here.key("template"), "the template uses no placeholder ({host} or {user}); an instance per key needs one, or make it a plain pool"));
    }
    // As written: a relative path is named as the operator wrote it.
    let touch_warnings = super::resolve::touch_reload_warnings(src, name, dir, &raw);
    absolutize(&mut raw, dir);
    if raw.mode.is_none() {
        // Instances start with their first request and shrink to none when idle.
        raw.mode = Some("ondemand".to_owned());
    }
    let t = block_settings(src, &here.key("template"), block, &mut errs);
    // The fixed `user:` is read by the sample and by min-uid below: asked once.
    let accounts = super::isolation::Accounts::default();
    let opts = super::LoadOptions { accounts: Some(&accounts), ..opts };
    let mut warnings = check_sample(src, (&here, dir), name, &raw, opts, &with_placeholders, &mut errs);
    warn_of_missing_roots(src, &here, &raw, &mut warnings);
    warnings.extend(touch_warnings);
    let Some((allow, max_instances, idle_timeout, spawn_rate, missing_cache, min_uid)) = t else {
        return Err(ConfigError::several(errs));
    };
    if let Some(why) = fixed_user_refused(&raw, min_uid, &accounts) {
        refuse_user_once(src, &here.key("user"), why, &mut errs);
    }
    if !errs.is_empty() {
        return Err(ConfigError::several(errs));
    }
    let (queue_size, queue_size_at, capacity) = queue_of(src, &here, &raw, max_instances);
    let python_from_shebang = raw.chroot.is_none() && raw.app.as_deref().is_some_and(runs_as_script);
    Ok(Template {
        name: name.to_owned(),
        dir: dir.to_path_buf(),
        file: src.file.clone(),
        source: Arc::new(Source { file: src.file.clone(), index: src.index.under(&here) }),
        raw: Arc::new(raw),
        keys,
        by_owner,
        allow,
        max_instances,
        idle_timeout,
        spawn_rate,
        missing_cache,
        min_uid,
        queue_size,
        queue_size_at,
        queue_size_shared: false,
        capacity,
        python_from_shebang,
        listened_at: Vec::new(),
        warnings,
    })
}

/// Whether the app written `app` (placeholders and all) is a file run as the main script, as
/// [`super::model::App::script`] says of a resolved one: `:__main__`, or a file that is
/// neither .py nor .wsgi (`app.fcgi`). Its file may exist per instance only, so it is
/// judged from the text, split as resolve::parse_app splits it.
fn runs_as_script(app: &str) -> bool {
    let (target, callable) = super::resolve::split_callable(app.trim());
    let is_file = target.contains('/') || target.ends_with(".py") || target.ends_with(".wsgi");
    is_file
        && super::model::App::runs_as_script(Path::new(target), callable.unwrap_or(super::resolve::DEFAULT_CALLABLE))
}

/// The keys of a template's entry without a placeholder, checked now on a sample instance
/// (what a placeholder decides, files and accounts, is checked per instance); the sample's
/// warnings, which hold for every instance (with a placeholder in `app` the sample's file
/// does not exist and says nothing). The sample's app, chdir or python may not exist: its
/// accounts, limits and privileges are then checked without them (isolation.rs
/// `check_without_app`), so a fixed `user:` or `script-user:` naming no account is an
/// error here, not at each instance's first request.
fn check_sample(
    src: &Source,
    (here, dir): (&KeyPath, &Path),
    name: &str,
    raw: &RawPool,
    opts: super::LoadOptions<'_>,
    with_placeholders: &[String],
    errs: &mut Vec<ConfigError>,
) -> Vec<String> {
    let sample = fill_raw(raw, &Placeholder::ALL.map(|p| (p, "example")));
    // The script's owner is checked only when the sample's app file exists; a `script-user`
    // or `script-group` error otherwise is its lookup, which does not depend on the key.
    let dependent = ["chdir", "chroot", "python", "app", "command"];
    let paths_vary = with_placeholders.iter().any(|k| dependent.contains(&k.as_str()));
    let mut warnings = Vec::new();
    if let Err(e) = super::resolve::pool(src, dir, name, sample, opts, &mut warnings) {
        let prefix = here.to_string();
        // A key already refused for its placeholder is not reported again for its value.
        let refused: Vec<String> = errs.iter().filter_map(error_key).map(str::to_owned).collect();
        for e in flatten(e).into_iter().filter(|e| error_key(e).is_none_or(|k| !refused.iter().any(|r| r == k))) {
            let key = match &e {
                ConfigError::Invalid { key, .. } => key.strip_prefix(&prefix).unwrap_or("").trim_start_matches('.'),
                _ => "",
            };
            let top = key.split(['.', '[']).next().unwrap_or("");
            let varies = with_placeholders.iter().any(|k| k == top) || (paths_vary && dependent.contains(&top));
            if !varies {
                errs.push(e);
            }
        }
    }
    warnings
}

/// `nobody`: refused as an instance's account whatever `min-uid` says.
const NOBODY_UID: u32 = 65534;

pub use super::isolation::find_account;

/// Why `user` may run no instance: a system account (uid below `min_uid`, root among them)
/// or `nobody`. None for a site's account.
pub fn account_refused(user: &nix::unistd::User, min_uid: u32) -> Option<String> {
    let uid = user.uid.as_raw();
    if uid < min_uid {
        Some(format!("user {} has uid {uid}, below min-uid {min_uid}", user.name))
    } else if uid == NOBODY_UID {
        // The kernel's overflow id: the account of many daemons and of NFS squashing.
        Some(format!("user {} (uid {NOBODY_UID}) is the unprivileged catch-all account, no site's", user.name))
    } else {
        None
    }
}

/// A `user:` written without a placeholder that names an account [`account_refused`] refuses
/// (every instance would get 403), or a uid without an account (500: an instance runs as a
/// site's account, not a bare uid as an ordinary pool may): the configuration is wrong, and
/// this says what to change. A name that is not there is the sample's error, and a lookup
/// that failed says nothing yet.
fn fixed_user_refused(raw: &RawPool, min_uid: u32, accounts: &super::isolation::Accounts) -> Option<String> {
    let written = raw.user.as_deref().filter(|u| !u.contains('{'))?;
    let user = match accounts.find(written) {
        Ok(Some(user)) => user,
        Ok(None) if written.parse::<u32>().is_ok() => {
            return Some(format!(
                "uid {written} has no account on this system: written without a placeholder, it refuses every \
                 instance (500); create the account, or name a site's account"
            ))
        }
        _ => return None,
    };
    let why = account_refused(&user, min_uid)?;
    let change = if user.uid.as_raw() == NOBODY_UID {
        "choose a site's own account".to_owned()
    } else {
        format!("choose a user with uid {min_uid} or more, lower min-uid (template: {{min-uid: N}})")
    };
    Some(format!(
        "{why}: written without a placeholder, it refuses every instance (403); {change}, or use a placeholder \
         such as \"{{owner}}\" to run each site as its own account"
    ))
}

/// The min-uid error `why` of a template's fixed `user:` at `key`, unless the sample pool
/// already refused that key: one error a key, the one that says what to change first.
/// Without root no instance runs as another account whatever its uid, so the sample's
/// "needs the bridge to run as root" stands (min-uid is moot until it is fixed). As root,
/// the sample can only have said "workers would run as root", which allow-root would not
/// cure in a template: min-uid refuses root too, so its error replaces that one.
fn refuse_user_once(src: &Source, key: &KeyPath, why: String, errs: &mut Vec<ConfigError>) {
    let shown = key.to_string();
    match errs.iter().position(|e| error_key(e) == Some(shown.as_str())) {
        None => errs.push(src.invalid(key, why)),
        Some(i) if super::isolation::bridge_is_root() => errs[i] = src.invalid(key, why),
        Some(_) => {}
    }
}

/// A path with a placeholder whose fixed part cannot exist for any key: the directory
/// before the first placeholder (`/srv/sitse` of `/srv/sitse/{host}/app.py`) is not
/// there. A warning, not an error: the configuration may be checked on another machine.
fn warn_of_missing_roots(src: &Source, here: &KeyPath, raw: &RawPool, warnings: &mut Vec<String>) {
    let paths = [("app", &raw.app), ("python", &raw.python), ("chdir", &raw.chdir), ("chroot", &raw.chroot)];
    for (key, value) in paths {
        let Some(value) = value.as_deref() else { continue };
        let Some((fixed, _)) = value.split_once('{') else { continue };
        // The directory that holds the first segment with a placeholder.
        let Some((root, _)) = fixed.rsplit_once('/') else { continue };
        let root = if root.is_empty() { "/" } else { root };
        if let Err(e) = std::fs::metadata(root) {
            if e.kind() == std::io::ErrorKind::NotFound {
                warnings.push(format!(
                    "{}: warning: {}: {root} does not exist, so no instance can be made for any key until it does; \
                     is the path mistyped?",
                    src.at(&here.key(key)),
                    here.key(key)
                ));
            }
        }
    }
}

/// An instance's `queue-size`, where it is written, and the template's capacity: before
/// [`fit_to_listeners`] knows the listeners, as behind one of the default max-connections.
fn queue_of(src: &Source, here: &KeyPath, raw: &RawPool, max_instances: u32) -> (usize, Option<At>, usize) {
    let at = raw.queue_size.is_some().then(|| src.at(&here.key("queue-size")));
    let queue = raw.queue_size.unwrap_or_else(|| fair_queue(super::resolve::DEFAULT_MAX_CONNECTIONS, max_instances));
    (queue, at, capacity_of_raw(raw, queue).saturating_mul(max_instances as usize))
}

/// An instance's default `queue-size` behind a listener of `max_connections`: its share
/// among `max_instances`, but at least [`INSTANCE_QUEUE_FLOOR`] — or half the listener's
/// connections when that is less — and at least one. One slow site then fills its own queue, not
/// the listener: its next requests get 503 (queue full) while the other sites are served.
pub fn fair_queue(max_connections: u32, max_instances: u32) -> usize {
    let connections = max_connections as usize;
    let share = connections / (max_instances.max(1) as usize);
    share.max(INSTANCE_QUEUE_FLOOR.min(connections / 2)).max(1)
}

/// Size each template's instances for the listeners that lead to it (by `pool:` or a route):
/// a `queue-size` not written becomes the fair share of the smallest of their
/// `max-connections`; a written one that lets one instance hold every connection of one of
/// them is kept, with a warning. Their instances' workers are told the listeners' addresses.
pub(super) fn fit_to_listeners(templates: &mut [Template], listeners: &[&super::model::Listener]) {
    for t in templates {
        let reaching: Vec<&super::model::Listener> =
            listeners.iter().copied().filter(|l| l.routes.iter().any(|r| r.pool == t.name)).collect();
        t.listened_at = super::validate::addresses_leading_to(&t.name, reaching.iter().copied());
        warn_of_tenants(t, &reaching);
        let Some(narrowest) = reaching.iter().map(|l| l.max_connections).min() else { continue };
        let running = capacity_of_raw(&t.raw, 0);
        match &t.queue_size_at {
            None => {
                t.queue_size = fair_queue(narrowest, t.max_instances);
                t.queue_size_shared = true;
            }
            // One instance is all there is: it holds no other site's connections.
            Some(_) if t.max_instances == 1 => {}
            Some(at) => {
                for l in &reaching {
                    let connections = l.max_connections as usize;
                    // Only where a smaller queue-size helps (else processes × threads is the matter).
                    if running + t.queue_size < connections || running + 1 >= connections {
                        continue;
                    }
                    t.warnings.push(format!(
                        "{at}: warning: pools.{}.queue-size: {} waiting plus {running} running lets one instance hold all {connections} connections of listener {:?} (max-connections), so one slow site starves the others; leave queue-size out for a fair share ({}) or write at most {}",
                        t.name,
                        t.queue_size,
                        l.name,
                        fair_queue(l.max_connections, t.max_instances),
                        connections - running - 1,
                    ));
                }
            }
        }
        t.capacity = (running + t.queue_size).saturating_mul(t.max_instances as usize);
    }
}

/// A template whose instances run as their tenants (a placeholder in `user` or `group`)
/// warns of what lets one tenant act as another, or read the bridge's secrets
/// (docs/security.md, "What you must still do"): a TCP listener that leads to it — any
/// tenant's code can connect to it and send another tenant's `REMOTE_USER` or `Host` — and
/// workers that inherit the bridge's environment (no `clear-env: true`).
fn warn_of_tenants(t: &mut Template, reaching: &[&super::model::Listener]) {
    let per_tenant = |v: &Option<String>| v.as_deref().is_some_and(|v| v.contains('{'));
    let key = if per_tenant(&t.raw.user) {
        "user"
    } else if per_tenant(&t.raw.group) {
        "group"
    } else {
        return;
    };
    let here = KeyPath::of(&["pools", &t.name]);
    let at = t.source.at(&here.key(key));
    for l in reaching {
        if let super::model::ListenAddress::Tcp(addr) = &l.address {
            t.warnings.push(format!(
                "{at}: warning: pools.{}.{key}: instances run as their tenants, but listener {:?} is on TCP {addr}, \
                 which any tenant's code can connect to and send another tenant's REMOTE_USER or Host, to be served as \
                 that tenant: listen on a unix socket only the web server may open (socket-mode: \"0660\", \
                 socket-group: its group, in a directory tenants cannot enter); see docs/security.md",
                t.name, l.name
            ));
        }
    }
    if t.raw.clear_env != Some(true) {
        t.warnings.push(format!(
            "{}: warning: pools.{}: instances run as their tenants and get the bridge's environment (its tokens \
             and paths, all of a root shell's when started from one): write clear-env: true and the env the apps need",
            t.source.at(&here),
            t.name
        ));
    }
}

type Settings = (Option<regex::Regex>, u32, Option<Duration>, u32, Duration, u32);

/// The key an error is about, as written (`pools.x.max-body`).
fn error_key(e: &ConfigError) -> Option<&str> {
    match e {
        ConfigError::Invalid { key, .. } => Some(key),
        _ => None,
    }
}

/// The `template:` block's own keys, with their defaults.
fn block_settings(src: &Source, here: &KeyPath, b: RawTemplate, errs: &mut Vec<ConfigError>) -> Option<Settings> {
    let before = errs.len();
    let allow = match b.allow {
        None => None,
        // Anchored: the whole key must match, never a part of it.
        Some(text) => match regex::Regex::new(&format!("^(?:{text})$")) {
            Ok(r) => Some(r),
            Err(e) => {
                // The parser's message draws the (anchored) pattern over several lines; its
                // last line says what is wrong.
                let e = e.to_string();
                let why = e.lines().last().unwrap_or_default().trim_start_matches("error: ");
                errs.push(src.invalid(&here.key("allow"), format!("{text:?} is not a regular expression: {why}")));
                None
            }
        },
    };
    let max_instances = b.max_instances.unwrap_or(DEFAULT_MAX_INSTANCES);
    if max_instances == 0 {
        errs.push(src.invalid(&here.key("max-instances"), "must be 1 or more"));
    }
    let spawn_rate = b.spawn_rate.unwrap_or(DEFAULT_SPAWN_RATE);
    if spawn_rate == 0 {
        errs.push(src.invalid(&here.key("spawn-rate"), "must be 1 or more (new instances per second)"));
    }
    let idle = b.instance_idle_timeout.map_or(DEFAULT_INSTANCE_IDLE_TIMEOUT, |d| d.0);
    let idle_timeout = (!idle.is_zero()).then_some(idle);
    let missing_cache = b.missing_cache.map_or(DEFAULT_MISSING_CACHE, |d| d.0);
    let min_uid = b.min_uid.unwrap_or(DEFAULT_MIN_UID);
    (errs.len() == before).then_some((allow, max_instances, idle_timeout, spawn_rate, missing_cache, min_uid))
}

fn key_path(here: &KeyPath, dotted: &str) -> KeyPath {
    let mut path = here.clone();
    for part in dotted.split('.') {
        match part.split_once('[') {
            Some((k, i)) => path = path.key(k).index(i.trim_end_matches(']').parse().unwrap_or(0)),
            None => path = path.key(part),
        }
    }
    path
}

fn flatten(e: ConfigError) -> Vec<ConfigError> {
    match e {
        ConfigError::Several(all) => all,
        e => vec![e],
    }
}

/// Relative paths made absolute against `dir`, placeholders kept: the entry then means the
/// same wherever it is printed (`fcgibridge check`) or instantiated.
fn absolutize(raw: &mut RawPool, dir: &Path) {
    let abs = |v: &mut String| *v = paths::resolve(dir, v).display().to_string();
    for v in raw.chdir.iter_mut().chain(raw.chroot.iter_mut()) {
        abs(v);
    }
    // A file app, a python given as a path (a bare name is looked up in PATH), a program path.
    if let Some(app) = raw.app.as_mut().filter(|a| a.contains('/') || a.ends_with(".py") || a.ends_with(".wsgi")) {
        abs(app);
    }
    if let Some(py) = raw.python.as_mut().filter(|p| p.contains('/')) {
        abs(py);
    }
    if let Some(first) = raw.command.as_mut().and_then(|c| c.first_mut()).filter(|c| c.contains('/')) {
        abs(first);
    }
    for page in raw.error_pages.iter_mut().flat_map(|e| e.0.iter_mut()).map(|(_, p)| p) {
        page.file.iter_mut().for_each(abs);
    }
    raw.touch_reload.iter_mut().flatten().for_each(abs);
    // In name order, as a pool's env and error pages are kept (and `check` prints them).
    raw.env.iter_mut().for_each(|e| e.0.sort_by(|a, b| a.0.cmp(&b.0)));
    raw.error_pages.iter_mut().for_each(|e| e.0.sort_by(|a, b| a.0.cmp(&b.0)));
    // A module app or a program runs in the file's directory by default: written out, so
    // that the entry means the same when `fcgibridge check` prints it elsewhere.
    if raw.chdir.is_none() && raw.app.as_deref().is_none_or(|a| !a.starts_with('/')) {
        raw.chdir = Some(dir.display().to_string());
    }
}

/// `raw` with every placeholder filled in. A `ready-check` written as a path is sent with
/// the instance's `{host}`, as the web server sends the requests that made the instance
/// (a site's app checks Host: Django's ALLOWED_HOSTS).
pub fn fill_raw(raw: &RawPool, values: &[(Placeholder, &str)]) -> RawPool {
    let mut out = raw.clone();
    for (_, v) in strings(&mut out) {
        *v = fill(v, values);
    }
    let host = values.iter().find_map(|(p, v)| (*p == Placeholder::Host).then_some(*v));
    if let (Some(check), Some(host)) = (out.ready_check.as_mut(), host) {
        if check.trim_start().starts_with('/') {
            *check = format!("http://{host}{}", check.trim_start());
        }
    }
    out
}

/// Requests one instance takes at once without a 503 — its threads and `queue` — from the
/// entry as written (its sample may not resolve: its files exist per instance only).
fn capacity_of_raw(raw: &RawPool, queue: usize) -> usize {
    use super::resolve::DEFAULT_THREADS;
    let processes = raw.max_processes.or(raw.processes).unwrap_or(super::supervision::DEFAULT_MAX_PROCESSES);
    let threads = raw.threads.unwrap_or(DEFAULT_THREADS);
    (processes as usize) * (threads as usize) + queue
}

impl Template {
    /// The `template:` block as `fcgibridge check` prints it, every default written out.
    pub fn render_block(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(a) = &self.allow {
            let text = a.as_str().strip_prefix("^(?:").and_then(|s| s.strip_suffix(")$")).unwrap_or(a.as_str());
            out.push(("allow", format!("{:?}", text)));
        }
        out.push(("max-instances", self.max_instances.to_string()));
        out.push(("instance-idle-timeout", DurationDisplay(self.idle_timeout.unwrap_or_default()).to_string()));
        out.push(("spawn-rate", self.spawn_rate.to_string()));
        out.push(("missing-cache", DurationDisplay(self.missing_cache).to_string()));
        out.push(("min-uid", self.min_uid.to_string()));
        out
    }

    /// The interpreter its instances run when `python:` is not written, as `check` prints
    /// it (a comment: the entry is printed as written), looked for on `search_path` (check's
    /// own PATH) now: only `check` needs it, the daemon's instances look on the daemon's
    /// PATH when they are made. None when `python:` is written or for `command:`.
    pub fn default_python_note(&self, search_path: Option<&std::ffi::OsStr>) -> Option<String> {
        if self.raw.python.is_some() || self.raw.command.is_some() {
            return None;
        }
        // As resolve::pool_python chooses an instance's interpreter when `python:` is not written.
        let python3 = match paths::find_python(super::resolve::DEFAULT_PYTHON, &self.dir, search_path) {
            Ok(path) => format!("{} (python3 found on {})", path.display(), paths::ON_CHECKS_PATH),
            Err(_) => format!("python3, which is not found on {}", paths::ON_CHECKS_PATH),
        };
        Some(if self.python_from_shebang {
            format!("by default the Python each instance's app file's shebang names, else {python3}")
        } else {
            format!("by default {python3}")
        })
    }

    /// An error about its key `key` (`user`), as `check` gives it: `file:line:column:
    /// pools.NAME.key: message`.
    pub fn key_error(&self, key: &str, message: &str) -> String {
        self.source.invalid(&KeyPath::of(&["pools", &self.name]).key(key), message).to_string()
    }

    /// The pool keys as written (paths absolute), each value as YAML (JSON is YAML).
    pub fn render_keys(&self) -> Vec<(String, String)> {
        let Ok(serde_json::Value::Object(map)) = serde_json::to_value(&*self.raw) else { return Vec::new() };
        map.into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, mut v)| {
                drop_nulls(&mut v);
                (k, v.to_string())
            })
            .collect()
    }
}

fn drop_nulls(v: &mut serde_json::Value) {
    if let serde_json::Value::Object(m) = v {
        m.retain(|_, x| !x.is_null());
        m.values_mut().for_each(drop_nulls);
    }
}

/// An instance's pool from its filled-in entry, resolved and checked as a written pool
/// (errors name the template's file and keys), and what is worth a warning (its app
/// file's shebang names a Python that cannot be used).
pub fn instantiate(
    t: &Template,
    mut raw: RawPool,
    search_path: Option<&std::ffi::OsStr>,
    accounts: &super::isolation::Accounts,
) -> Result<(Pool, Vec<String>), ConfigError> {
    raw.queue_size.get_or_insert(t.queue_size);
    // The template's load warned of a memory-limit without a unit: not again at each instance.
    raw.memory_limit.iter_mut().for_each(|m| m.bare = false);
    let opts = super::LoadOptions {
        search_path,
        privileges: super::Privileges::Check,
        moment: super::Moment::Start,
        accounts: Some(accounts),
    };
    let mut warnings = Vec::new();
    let mut pool = super::resolve::pool(&t.source, &t.dir, &t.name, raw, opts, &mut warnings)?;
    pool.listened_at = t.listened_at.clone();
    Ok((pool, warnings))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::scratch::ScratchDir;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn an_instances_ready_check_is_sent_with_its_host() {
        let raw = |check: &str| RawPool { ready_check: Some(check.to_owned()), ..RawPool::default() };
        let filled = |check: &str, values: &[(Placeholder, &str)]| fill_raw(&raw(check), values).ready_check.unwrap();
        let host = [(Placeholder::Host, "shop.test")];
        assert_eq!(filled("/healthz/", &host), "http://shop.test/healthz/");
        assert_eq!(filled("https://{host}/up", &host), "https://shop.test/up");
        assert_eq!(filled("http://fixed.test/up", &host), "http://fixed.test/up");
        // Keyed by user only: no host to send, the route's (or none) as for a plain pool.
        assert_eq!(filled("/healthz/", &[(Placeholder::User, "ann")]), "/healthz/");
    }

    fn placeholders_in_values(text: &str) -> Result<Vec<Placeholder>, String> {
        placeholders_in(text, KNOWN_IN_VALUES)
    }

    #[test]
    fn placeholders_are_named_and_closed() {
        assert_eq!(placeholders_in_values("/srv/{host}/{user}/app.py"), Ok(vec![Placeholder::Host, Placeholder::User]));
        assert_eq!(placeholders_in_values("plain"), Ok(vec![]));
        assert!(placeholders_in_values("/srv/{hots}").unwrap_err().contains("unknown placeholder {hots}"));
        assert!(placeholders_in_values("/srv/{host").unwrap_err().contains("without its '}'"));
        assert!(placeholders_in_values("/srv/host}").unwrap_err().contains("without its '{'"));
        assert_eq!(fill("/srv/{host}/{host}", &[(Placeholder::Host, "a.test")]), "/srv/a.test/a.test");
    }

    /// A scratch conf.d with `text`, a stand-in python3 on the search path, an empty sites/;
    /// the load result.
    fn load(name: &str, text: &str) -> (ScratchDir, Result<super::super::Config, ConfigError>) {
        let root = crate::scratch::scratch_dir(name);
        fs::create_dir_all(root.join("conf.d")).unwrap();
        fs::create_dir_all(root.join("bin")).unwrap();
        let python = root.join("bin/python3");
        fs::write(&python, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&python, fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir_all(root.join("errors")).unwrap();
        fs::write(root.join("errors/404.html"), "gone\n").unwrap();
        // Where the sites go, none made yet.
        fs::create_dir_all(root.join("sites")).unwrap();
        fs::write(root.join("conf.d/10.yaml"), text).unwrap();
        let bin = root.join("bin");
        let loaded = super::super::load_with_search_path(&root.join("conf.d"), Some(bin.as_os_str()));
        (root, loaded)
    }

    const TEMPLATE: &str = "\
pools:
  sites:
    template: {allow: '[a-z.]+', max-instances: 3, spawn-rate: 2, instance-idle-timeout: 0s}
    app: ../sites/{host}/app.py
    env: {SITE: '{host}', OTHER: plain}
    threads: 2
    error-pages: {'404': ../errors/404.html}
    touch-reload: ../sites/{host}/reload.txt
listeners:
  web: {fastcgi: 127.0.0.1:9000, pool: sites}
";

    #[test]
    fn a_templates_graceful_timeout_counts_in_the_bound_stop_wait_is_told() {
        let text = TEMPLATE.replace("    threads: 2\n", "    threads: 2\n    graceful-timeout: 10m\n");
        let config = load("template-graceful", &text).1.unwrap();
        let bound = crate::control::graceful_stop_bound(&config);
        // No static pool: drain-period 0 + shutdown-timeout 30s + the template's 10m + 1m.
        assert_eq!(bound, std::time::Duration::from_secs(30 + 600 + 60));
    }

    #[test]
    fn a_template_loads_and_its_check_output_loads_back() {
        let (root, loaded) = load("template-roundtrip", TEMPLATE);
        let config = loaded.unwrap();
        let t = &config.templates[0];
        assert_eq!(
            (t.keys.clone(), t.max_instances, t.spawn_rate, t.idle_timeout),
            (vec![Placeholder::Host], 3, 2, None)
        );
        assert_eq!(t.raw.app.as_deref(), Some(&*format!("{}/sites/{{host}}/app.py", root.display())));
        assert_eq!(t.raw.touch_reload, Some(vec![format!("{}/sites/{{host}}/reload.txt", root.display())]));
        assert!(t.allow.as_ref().unwrap().is_match("a.test") && !t.allow.as_ref().unwrap().is_match("a.test/x"));
        let bin = root.join("bin");
        let text = crate::cli::check::render(&config, "x", Some(bin.as_os_str()));
        let again = crate::scratch::scratch_dir("template-roundtrip-again");
        fs::write(again.join("00.yaml"), &text).unwrap();
        let reloaded = super::super::load_with_search_path(&again, Some(bin.as_os_str())).unwrap();
        assert_eq!(reloaded, config, "\n{text}");
    }

    #[test]
    fn the_fair_share_of_a_listener() {
        assert_eq!(fair_queue(1024, DEFAULT_MAX_INSTANCES), 16);
        assert_eq!(fair_queue(1024, 4), 256);
        assert_eq!(fair_queue(1024, 1000), INSTANCE_QUEUE_FLOOR);
        // A small listener: the floor is no more than half of it.
        assert_eq!((fair_queue(20, 64), fair_queue(1, 64)), (10, 1));
    }

    #[test]
    fn an_instance_reads_its_own_scripts_shebang() {
        let text = TEMPLATE.replace("../sites/{host}/app.py", "../sites/{host}/app.fcgi");
        let (root, loaded) = load("template-shebang", &text);
        let t = &loaded.unwrap().templates[0];
        assert_eq!(t.warnings, Vec::<String>::new());
        let bin = root.join("bin");
        let venv_python = root.join("venvs/alpha/bin/python3");
        fs::create_dir_all(venv_python.parent().unwrap()).unwrap();
        fs::write(&venv_python, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&venv_python, fs::Permissions::from_mode(0o755)).unwrap();
        let site = |host: &str, first_line: &str| {
            fs::create_dir_all(root.join("sites").join(host)).unwrap();
            fs::write(root.join("sites").join(host).join("app.fcgi"), format!("{first_line}\n")).unwrap();
            instantiate(t, fill_raw(&t.raw, &[(Placeholder::Host, host)]), Some(bin.as_os_str()), &Default::default())
                .unwrap()
        };
        let (alpha, warnings) = site("alpha.test", &format!("#!{}", venv_python.display()));
        assert_eq!((alpha.python, warnings), (venv_python, vec![]));
        // Another site's script names a Python that is not there: the default, and a warning.
        let (beta, warnings) = site("beta.test", "#!/nonexistent/bin/python3");
        assert_eq!(beta.python, bin.join("python3"));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("beta.test/app.fcgi:1: warning: pools.sites.python:"), "{}", warnings[0]);
    }

    #[test]
    fn a_touch_reload_path_is_warned_of_when_its_part_before_the_placeholder_is_missing() {
        // `sites/` exists (each site's directory is made with the site): nothing to say.
        let (_, loaded) = load("template-touch-ok", TEMPLATE);
        assert_eq!(loaded.unwrap().templates[0].warnings, Vec::<String>::new());
        // `sitse/` never will: no instance restarts on a touch. And a path without a
        // placeholder is looked at as a pool's is.
        let text = TEMPLATE.replace(
            "touch-reload: ../sites/{host}/reload.txt",
            "touch-reload: ['../sitse/{host}/reload.txt', '/nonexistent/site-{host}/r.txt', ../deploy/restart.txt]",
        );
        let (root, loaded) = load("template-touch-missing", &text);
        let root = root.display().to_string();
        let warnings: Vec<String> =
            loaded.unwrap().templates[0].warnings.iter().map(|w| w.replace(&root, "ROOT")).collect();
        let at = "ROOT/conf.d/10.yaml:8:5: warning: pools.sites.touch-reload:";
        let end = "does not exist: the workers restart only once it and the file are made; a relative path is read \
                   from the configuration file's directory";
        assert_eq!(
            warnings,
            [
                format!(
                    "{at} ROOT/sitse, the part of ROOT/sitse/{{host}}/reload.txt before its first placeholder, {end}"
                ),
                format!(
                    "{at} /nonexistent, the part of /nonexistent/site-{{host}}/r.txt before its first placeholder, does not exist: the \
                     workers restart only once it and the file are made"
                ),
                format!("{at} the directory of ROOT/deploy/restart.txt {end}"),
            ]
        );
    }

    #[test]
    fn a_memory_limit_without_a_unit_is_warned_of_by_the_template_not_each_instance() {
        let text = TEMPLATE.replace("    threads: 2\n", "    threads: 2\n    memory-limit: 500000000\n");
        let (root, loaded) = load("template-memory-limit", &text);
        let t = &loaded.unwrap().templates[0];
        assert_eq!(t.warnings.len(), 1, "{:?}", t.warnings);
        assert!(
            t.warnings[0].contains("warning: pools.sites.memory-limit: 500000000 without a unit"),
            "{:?}",
            t.warnings
        );
        fs::create_dir_all(root.join("sites/alpha.test")).unwrap();
        fs::write(root.join("sites/alpha.test/app.py"), "application = None\n").unwrap();
        let raw = fill_raw(&t.raw, &[(Placeholder::Host, "alpha.test")]);
        let bin = root.join("bin");
        let (pool, warnings) = instantiate(t, raw, Some(bin.as_os_str()), &Default::default()).unwrap();
        assert_eq!((pool.supervision.memory_limit, warnings), (Some(500_000_000), vec![]));
    }

    #[test]
    fn an_instance_queues_its_share_of_the_listeners_connections_by_default() {
        let (root, loaded) = load("template-queue", TEMPLATE);
        let t = &loaded.unwrap().templates[0];
        // Three instances behind a listener of the default 1024 connections.
        assert_eq!((t.queue_size, &t.warnings), (341, &Vec::<String>::new()));
        assert_eq!(t.capacity, 3 * (4 * 2 + 341));
        fs::create_dir_all(root.join("sites/alpha.test")).unwrap();
        fs::write(root.join("sites/alpha.test/app.py"), "application = None\n").unwrap();
        let raw = fill_raw(&t.raw, &[(Placeholder::Host, "alpha.test")]);
        assert_eq!(
            instantiate(t, raw, Some(root.join("bin").as_os_str()), &Default::default()).unwrap().0.queue_size,
            341
        );
        // The narrowest listener that leads to it decides (60 / 3); a listener that leads
        // elsewhere does not.
        let text = with_a_pool_and_listeners(concat!(
            "  small:\n",
            "    fastcgi: 127.0.0.1:9001\n",
            "    max-connections: 60\n",
            "    routes: [{host: a.test, pool: sites}, {pool: plain}]\n",
            "  other: {fastcgi: 127.0.0.1:9002, pool: plain, max-connections: 3}\n",
        ));
        let t = load("template-queue-two", &text).1.unwrap().templates.remove(0);
        assert_eq!(t.queue_size, 20);
    }

    #[test]
    fn a_written_queue_size_that_holds_a_whole_listener_is_kept_with_a_warning() {
        let text = TEMPLATE.replace("threads: 2", "threads: 2\n    queue-size: 1024");
        let t = load("template-queue-written", &text).1.unwrap().templates.remove(0);
        assert_eq!(t.queue_size, 1024);
        assert_eq!(t.warnings.len(), 1, "{:?}", t.warnings);
        let want = "10.yaml:7:5: warning: pools.sites.queue-size: 1024 waiting plus 8 running lets one instance hold all 1024 connections of listener \"web\" (max-connections), so one slow site starves the others; leave queue-size out for a fair share (341) or write at most 1015";
        assert!(t.warnings[0].ends_with(want), "{}", t.warnings[0]);
        // Below the listener's connections: no warning.
        let text = TEMPLATE.replace("threads: 2", "threads: 2\n    queue-size: 1015");
        assert_eq!(load("template-queue-fits", &text).1.unwrap().templates[0].warnings, Vec::<String>::new());
    }

    /// [`TEMPLATE`] with an ordinary pool `plain` and `listeners` (YAML entries) before `web`.
    fn with_a_pool_and_listeners(listeners: &str) -> String {
        TEMPLATE
            .replace("  web:", &format!("{listeners}  web:"))
            .replace("listeners:", "  plain: {app: ../bin/python3}\nlisteners:")
    }

    /// [`load`] as a bridge with `ids` (root, or the unit tests' unprivileged 4242).
    fn load_as(
        ids: super::super::isolation::BridgeIds,
        name: &str,
        text: &str,
    ) -> (ScratchDir, Result<super::super::Config, ConfigError>) {
        use super::super::isolation::{BridgeIds, TEST_BRIDGE_IDS};
        TEST_BRIDGE_IDS.with(|c| c.set(ids));
        let r = load(name, text);
        TEST_BRIDGE_IDS.with(|c| c.set(BridgeIds { uid: 4242, gid: 4242 }));
        r
    }

    #[test]
    fn the_accounts_and_limits_without_a_placeholder_are_checked_though_the_app_has_one() {
        use super::super::isolation::BridgeIds;
        const ROOT: BridgeIds = BridgeIds { uid: 0, gid: 0 };
        // The sample instance's app file does not exist: its other keys are still checked.
        let keys = "threads: 2\n    user: no-such-user-fcgibridge\n    group: no-such-group-fcgibridge\n    \
                    groups: [no-such-group-fcgibridge]\n    script-user: no-such-user-fcgibridge\n    \
                    rlimit-as: 10MiB";
        let err = load_as(ROOT, "template-accounts", &TEMPLATE.replace("threads: 2", keys)).1.unwrap_err().to_string();
        for want in [
            "10.yaml:7:5: pools.sites.user: no such user \"no-such-user-fcgibridge\"",
            "10.yaml:8:5: pools.sites.group: no such group \"no-such-group-fcgibridge\"",
            "10.yaml:9:14: pools.sites.groups[0]: no such group \"no-such-group-fcgibridge\"",
            "10.yaml:10:5: pools.sites.script-user: no such user \"no-such-user-fcgibridge\"",
            "10.yaml:11:5: pools.sites.rlimit-as: 10MiB is below 64MiB",
        ] {
            assert!(err.contains(want), "{want}\n{err}");
        }
        // A root bridge, no user and no allow-root: every instance would run as root.
        let err = load_as(ROOT, "template-root", TEMPLATE).1.unwrap_err().to_string();
        assert!(err.contains("10.yaml:2:3: pools.sites: workers would run as root"), "{err}");
        let allowed = TEMPLATE.replace("threads: 2", "threads: 2\n    allow-root: true");
        load_as(ROOT, "template-root-allowed", &allowed).1.unwrap();
        // A placeholder in user: the sample's account is not looked up, nor root suspected.
        let per_user = TEMPLATE.replace("{host}", "{user}").replace("threads: 2", "threads: 2\n    user: '{user}'");
        load_as(ROOT, "template-per-user", &per_user).1.unwrap();
        let err = load_as(
            ROOT,
            "template-per-user-group",
            &per_user.replace("threads: 2", "threads: 2\n    group: no-such-group-fcgibridge"),
        )
        .1
        .unwrap_err()
        .to_string();
        assert!(err.contains("10.yaml:7:5: pools.sites.group: no such group"), "{err}");
        assert!(!err.contains("pools.sites.user"), "{err}");
        // A route that captures {user} for the refused template: its error alone, not also
        // "no template that uses it".
        let routed = per_user.replace("threads: 2", "threads: 2\n    group: no-such-group-fcgibridge").replace(
            "web: {fastcgi: 127.0.0.1:9000, pool: sites}",
            "web:\n    fastcgi: 127.0.0.1:9000\n    routes: [{prefix: '/~{user}', pool: sites}]",
        );
        let err = load_as(ROOT, "template-routed-refused", &routed).1.unwrap_err().to_string();
        assert!(err.contains("pools.sites.group: no such group") && !err.contains("captures {user}"), "{err}");
        // A route to a template that is not there (removed): "unknown pool" alone.
        let gone = routed.replace("pool: sites}]", "pool: homes}]");
        let err = load_as(ROOT, "template-routed-gone", &gone).1.unwrap_err().to_string();
        assert!(err.contains("unknown pool \"homes\"") && !err.contains("captures {user}"), "{err}");
    }

    #[test]
    fn a_fixed_user_that_every_instance_would_refuse_is_an_error_at_load() {
        use super::super::isolation::BridgeIds;
        const ROOT: BridgeIds = BridgeIds { uid: 0, gid: 0 };
        let with =
            |keys: &str| TEMPLATE.replace("threads: 2", &format!("threads: 2\n    {keys}\n    allow-root: true"));
        // root, uid 0: below the default min-uid, so every instance would get 403.
        let err = load_as(ROOT, "template-fixed-root", &with("user: root")).1.unwrap_err().to_string();
        let want = "10.yaml:7:5: pools.sites.user: user root has uid 0, below min-uid 1000: written without a \
                    placeholder, it refuses every instance (403); choose a user with uid 1000 or more, lower min-uid \
                    (template: {min-uid: N}), or use a placeholder such as \"{owner}\"";
        assert!(err.contains(want), "{want}\n{err}");
        // Written as a uid, the same account.
        let err = load_as(ROOT, "template-fixed-uid", &with("user: '0'")).1.unwrap_err().to_string();
        assert!(err.contains("pools.sites.user: user root has uid 0, below min-uid 1000"), "{err}");
        // min-uid lowered to take it: no error.
        let lowered = with("user: root").replace("0s}", "0s, min-uid: 0}");
        load_as(ROOT, "template-fixed-root-taken", &lowered).1.unwrap();
        // nobody, whatever min-uid says; lowering it would not help.
        let err = load_as(ROOT, "template-fixed-nobody", &lowered.replace("user: root", "user: nobody"))
            .1
            .unwrap_err()
            .to_string();
        let want = "pools.sites.user: user nobody (uid 65534) is the unprivileged catch-all account, no site's: \
                    written without a placeholder, it refuses every instance (403); choose a site's own account, or";
        assert!(err.contains(want), "{want}\n{err}");
        // A uid with no account: an instance runs as a site's account, so none could run.
        if find_account("3999999").is_ok_and(|a| a.is_none()) {
            let err = load_as(ROOT, "template-fixed-bare-uid", &with("user: '3999999'")).1.unwrap_err().to_string();
            assert!(err.contains("pools.sites.user: uid 3999999 has no account on this system"), "{err}");
        }
    }

    #[test]
    fn a_templates_fixed_user_is_looked_up_once_per_load() {
        use super::super::isolation::{BridgeIds, USER_LOOKUPS};
        const ROOT: BridgeIds = BridgeIds { uid: 0, gid: 0 };
        let text = TEMPLATE
            .replace("threads: 2", "threads: 2\n    user: root\n    allow-root: true")
            .replace("0s}", "0s, min-uid: 0}");
        USER_LOOKUPS.with(|l| l.borrow_mut().clear());
        // Read by the sample pool and by min-uid, asked of the user database once.
        load_as(ROOT, "template-fixed-user-lookups", &text).1.unwrap();
        let asked = USER_LOOKUPS.with(|l| l.borrow().iter().filter(|w| *w == "root").count());
        assert_eq!(asked, 1);
    }

    #[test]
    fn a_fixed_user_refused_twice_over_gets_one_error_that_says_what_to_change_first() {
        use super::super::isolation::BridgeIds;
        const ROOT: BridgeIds = BridgeIds { uid: 0, gid: 0 };
        let with = |keys: &str| TEMPLATE.replace("threads: 2", &format!("threads: 2\n    {keys}"));
        let user_errors = |err: &str| err.lines().filter(|l| l.contains("pools.sites.user:")).count();
        // An unprivileged bridge (the tests' uid 4242) runs no instance as root, nor as any
        // other account: the root error alone, whatever min-uid would say of the account.
        let err = load("template-fixed-root-unprivileged", &with("user: root\n    allow-root: true"))
            .1
            .unwrap_err()
            .to_string();
        assert_eq!(user_errors(&err), 1, "{err}");
        assert!(
            err.contains("10.yaml:7:5: pools.sites.user: switching to user \"root\" needs the bridge to run as root"),
            "{err}"
        );
        // A root bridge without allow-root: allow-root would not help, min-uid refuses root.
        let err = load_as(ROOT, "template-fixed-root-not-allowed", &with("user: root")).1.unwrap_err().to_string();
        assert_eq!(user_errors(&err), 1, "{err}");
        assert!(err.contains("10.yaml:7:5: pools.sites.user: user root has uid 0, below min-uid 1000"), "{err}");
        // min-uid lowered to take root: then allow-root is what is missing.
        let lowered = with("user: root").replace("0s}", "0s, min-uid: 0}");
        let err = load_as(ROOT, "template-fixed-root-min-uid-0", &lowered).1.unwrap_err().to_string();
        assert_eq!(user_errors(&err), 1, "{err}");
        assert!(err.contains("pools.sites.user: workers would run as root"), "{err}");
    }

    #[test]
    fn an_instance_is_told_the_addresses_of_the_listeners_that_lead_to_its_template() {
        let text = with_a_pool_and_listeners(concat!(
            "  routed:\n",
            "    fastcgi: 'unix:../routed.sock'\n",
            "    routes: [{host: a.test, pool: sites}, {pool: plain}]\n",
            "  other: {fastcgi: 127.0.0.1:9002, pool: plain}\n",
        ));
        let (root, loaded) = load("template-listened-at", &text);
        let t = &loaded.unwrap().templates[0];
        let mut addresses = t.listened_at.clone();
        addresses.sort();
        assert_eq!(
            addresses,
            vec!["fastcgi: 127.0.0.1:9000".to_owned(), format!("fastcgi: unix:{}", root.join("routed.sock").display())]
        );
        fs::create_dir_all(root.join("sites/alpha.test")).unwrap();
        fs::write(root.join("sites/alpha.test/app.py"), "application = None\n").unwrap();
        let raw = fill_raw(&t.raw, &[(Placeholder::Host, "alpha.test")]);
        let (pool, _) = instantiate(t, raw, Some(root.join("bin").as_os_str()), &Default::default()).unwrap();
        assert_eq!(pool.listened_at, t.listened_at);
        // A listener that moved is only its workers' hint: the instance is the same pool.
        assert!(pool.same_but_listeners(&Pool { listened_at: Vec::new(), ..pool.clone() }));
        assert!(!pool.same_but_listeners(&Pool { threads: 3, ..pool.clone() }));
    }

    #[test]
    fn check_shows_the_interpreter_an_instance_runs_by_default() {
        let (root, loaded) = load("template-default-python", TEMPLATE);
        let config = loaded.unwrap();
        let python3 = root.join("bin/python3");
        let bin = root.join("bin");
        let text = crate::cli::check::render(&config, "x", Some(bin.as_os_str()));
        let want = format!(
            "    # python: not set: by default {} (python3 found on the PATH of this check; the daemon looks on the \
             PATH it was started with)\n",
            python3.display()
        );
        assert!(text.contains(&want), "{want}\n{text}");
        // Looked for when `check` prints it, on the PATH it is given, not when the configuration
        // was loaded (the daemon, which loads it at every start and reload, never prints it).
        let elsewhere = root.join("sites");
        let text = crate::cli::check::render(&config, "x", Some(elsewhere.as_os_str()));
        let want = "    # python: not set: by default python3, which is not found on the PATH of this check; the \
                    daemon looks on the PATH it was started with\n";
        assert!(text.contains(want), "{want}\n{text}");
        // The one an instance really runs.
        fs::create_dir_all(root.join("sites/alpha.test")).unwrap();
        fs::write(root.join("sites/alpha.test/app.py"), "application = None\n").unwrap();
        let t = &config.templates[0];
        let raw = fill_raw(&t.raw, &[(Placeholder::Host, "alpha.test")]);
        assert_eq!(
            instantiate(t, raw, Some(root.join("bin").as_os_str()), &Default::default()).unwrap().0.python,
            python3
        );
        // A flup script: its shebang first, as an instance reads it.
        let text = TEMPLATE.replace("../sites/{host}/app.py", "../sites/{host}/app.fcgi");
        let (root, loaded) = load("template-default-python-script", &text);
        let want = format!(
            "    # python: not set: by default the Python each instance's app file's shebang names, else {} (python3 \
             found on the PATH of this check; the daemon looks on the PATH it was started with)\n",
            root.join("bin/python3").display()
        );
        let bin = root.join("bin");
        let text = crate::cli::check::render(&loaded.unwrap(), "x", Some(bin.as_os_str()));
        assert!(text.contains(&want), "{want}\n{text}");
        // Written: no comment.
        let written = TEMPLATE.replace("threads: 2", "threads: 2\n    python: ../bin/python3");
        let text = crate::cli::check::render(
            &load("template-python-written", &written).1.unwrap(),
            "x",
            Some(bin.as_os_str()),
        );
        assert!(!text.contains("# python:"), "{text}");
    }

    #[test]
    fn an_instances_refusal_names_the_line_and_column_of_its_key() {
        let text = TEMPLATE.replace("threads: 2", "threads: 2\n    python: ../venvs/{host}/bin/python3");
        let (root, loaded) = load("template-instance-at", &text);
        let t = &loaded.unwrap().templates[0];
        fs::create_dir_all(root.join("sites/alpha.test")).unwrap();
        fs::write(root.join("sites/alpha.test/app.py"), "application = None\n").unwrap();
        let raw = fill_raw(&t.raw, &[(Placeholder::Host, "alpha.test")]);
        let err = instantiate(t, raw, Some(root.join("bin").as_os_str()), &Default::default()).unwrap_err().to_string();
        assert!(err.contains("conf.d/10.yaml:7:5: pools.sites.python: "), "{err}");
    }

    #[test]
    fn a_template_run_as_its_tenants_warns_of_a_tcp_listener_and_the_bridges_environment() {
        let per_user = TEMPLATE.replace("{host}", "{user}").replace("threads: 2", "threads: 2\n    user: '{user}'");
        let t = load("template-tenants-tcp", &per_user).1.unwrap().templates.remove(0);
        assert_eq!(t.warnings.len(), 2, "{:?}", t.warnings);
        let tcp = "10.yaml:7:5: warning: pools.sites.user: instances run as their tenants, but listener \"web\" is on TCP 127.0.0.1:9000, which any tenant's code can connect to";
        assert!(t.warnings[0].contains(tcp), "{}", t.warnings[0]);
        let env = "10.yaml:2:3: warning: pools.sites: instances run as their tenants and get the bridge's environment";
        assert!(t.warnings[1].contains(env), "{}", t.warnings[1]);
        // As docs/dynamic-pools.md shows it: a unix socket and clear-env.
        let safe = per_user
            .replace("threads: 2", "threads: 2\n    clear-env: true")
            .replace("fastcgi: 127.0.0.1:9000", "fastcgi: 'unix:../web.sock', socket-mode: '0660'");
        let t = load("template-tenants-unix", &safe).1.unwrap().templates.remove(0);
        assert_eq!(t.warnings, Vec::<String>::new());
        // Run as the bridge's own account: not the tenants', no warning.
        assert_eq!(load("template-no-tenants", TEMPLATE).1.unwrap().templates[0].warnings, Vec::<String>::new());
    }

    #[test]
    fn a_template_path_whose_fixed_part_does_not_exist_is_warned_of() {
        let text = TEMPLATE.replace("../sites/{host}/app.py", "../sitse/{host}/app.py");
        let (root, loaded) = load("template-missing-root", &text);
        let t = &loaded.unwrap().templates[0];
        assert_eq!(t.warnings.len(), 1, "{:?}", t.warnings);
        let want = format!(
            "10.yaml:4:5: warning: pools.sites.app: {} does not exist, so no instance can be made for any key",
            root.join("sitse").display()
        );
        assert!(t.warnings[0].contains(&want), "{}", t.warnings[0]);
        // The directory there (no site in it yet): no warning.
        fs::create_dir_all(root.join("sitse")).unwrap();
        let again = super::super::load_with_search_path(&root.join("conf.d"), Some(root.join("bin").as_os_str()));
        assert_eq!(again.unwrap().templates[0].warnings, Vec::<String>::new());
    }

    #[test]
    fn misplaced_and_unknown_placeholders_are_errors_at_their_key() {
        let text = TEMPLATE.replace("threads: 2", "threads: 2\n    umask: '{host}'\n    chdir: /x/{nope}");
        let err = load("template-errors", &text).1.unwrap_err().to_string();
        assert!(err.contains("10.yaml:7:5: pools.sites.umask: cannot take a placeholder"), "{err}");
        assert!(err.contains("10.yaml:8:5: pools.sites.chdir: \"/x/{nope}\": unknown placeholder {nope}"), "{err}");
        let owner = TEMPLATE.replace("OTHER: plain", "OTHER: '{owner}'");
        let err = load("template-owner", &owner).1.unwrap_err().to_string();
        assert!(
            err.contains("pools.sites.env.OTHER: {owner} (the app file's owner) goes in `user` or `group` only"),
            "{err}"
        );
        let routes = TEMPLATE.replace(
            "web: {fastcgi: 127.0.0.1:9000, pool: sites}",
            "web:\n    fastcgi: 127.0.0.1:9000\n    routes:\n      - {prefix: '/~{user}', pool: sites}\n      - {prefix: '/x/{nope}', pool: sites}",
        );
        let err = load("template-routes", &routes).1.unwrap_err().to_string();
        assert!(
            err.contains(
                "listeners.web.routes[1].prefix: \"/x/{nope}\": unknown placeholder {nope}; a route captures {host} or {user}"
            ),
            "{err}"
        );
        // {owner} is no route's: the route's error does not offer it.
        assert!(!err.lines().any(|l| l.contains("routes[1]") && l.contains("{owner}")), "{err}");
        let routes = routes.replace("      - {prefix: '/x/{nope}', pool: sites}\n", "").replace("/x/{nope}", "");
        let err = load("template-routes-2", &routes).1.unwrap_err().to_string();
        assert!(
            err.contains("listeners.web.routes[0].prefix: captures {user}, but \"sites\" is no template that uses it"),
            "{err}"
        );
        let none = TEMPLATE.replace("{host}", "alpha.test");
        let err = load("template-none", &none).1.unwrap_err().to_string();
        assert!(err.contains("pools.sites.template: the template uses no placeholder"), "{err}");
    }
}
