//! Loading whole configuration directories: every kind of error, defaults, merging.
use super::*;
use crate::scratch::{scratch_dir, ScratchDir};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

/// A scratch tree: `root/conf.d/*.yaml`, `root/app/app.py`, and `root/bin/python3`
/// (a stand-in interpreter on the PATH the loader is given).
struct Tree {
    root: ScratchDir,
}

impl Tree {
    fn new(name: &str) -> Self {
        let root = scratch_dir(name);
        fs::create_dir_all(root.join("conf.d")).unwrap();
        fs::create_dir_all(root.join("app")).unwrap();
        fs::write(root.join("app/app.py"), "def application(environ, start_response): pass\n").unwrap();
        fs::create_dir_all(root.join("bin")).unwrap();
        let python = root.join("bin/python3");
        fs::write(&python, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&python, fs::Permissions::from_mode(0o755)).unwrap();
        Self { root }
    }

    fn file(self, name: &str, text: &str) -> Self {
        fs::write(self.root.join("conf.d").join(name), text).unwrap();
        self
    }

    fn load(&self) -> Result<Config, ConfigError> {
        let path = self.root.join("bin");
        load_with_search_path(&self.root.join("conf.d"), Some(path.as_os_str()))
    }

    fn config(&self) -> Config {
        match self.load() {
            Ok(c) => c,
            Err(e) => panic!("expected a valid configuration, got: {e}"),
        }
    }

    /// The error message, with the scratch root shown as `ROOT`.
    fn error(&self) -> String {
        match self.load() {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string().replace(&self.root.display().to_string(), "ROOT"),
        }
    }
}

const POOL: &str = "\
pools:
  demo:
    app: ../app/app.py
";

const LISTENER: &str = "\
listeners:
  demo-fastcgi:
    fastcgi: 127.0.0.1:9000
    pool: demo
";

fn valid(name: &str) -> Tree {
    Tree::new(name).file("10-pool.yaml", POOL).file("20-listen.yaml", LISTENER)
}

#[test]
fn a_pool_needs_only_its_app_and_everything_else_defaults() {
    let tree = valid("defaults");
    let config = tree.config();
    assert_eq!(
        config.global,
        Global {
            runtime_dir: None,
            log_level: "info".into(),
            log_format: LogFormat::Text,
            access_log: None,
            log_file: None,
            shutdown_timeout: Duration::from_secs(30),
            drain_period: Duration::ZERO,
            access_log_format: None,
            status: None,
            control_socket: None,
            header_memory: 256 << 20,
            log_rate_limit: true,
        }
    );
    let pool = &config.pools[0];
    assert_eq!(pool.name, "demo");
    assert_eq!(pool.app, App::File { path: tree.root.join("app/app.py"), callable: "application".into() });
    assert_eq!(pool.python, tree.root.join("bin/python3"));
    // A file app runs in its own directory.
    assert_eq!(pool.chdir, tree.root.join("app"));
    assert!(pool.env.is_empty());
    assert_eq!((pool.processes, pool.threads, pool.queue_size), (2, 4, 1024));
    assert_eq!(pool.queue_timeout, Duration::from_secs(30));
    assert_eq!(pool.startup_timeout, Duration::from_secs(60));

    let listener = &config.listeners[0];
    assert_eq!(listener.name, "demo-fastcgi");
    assert_eq!(listener.protocol, Protocol::FastCgi);
    assert_eq!(listener.address, ListenAddress::Tcp("127.0.0.1:9000".parse().unwrap()));
    assert_eq!(listener.routes, vec![Route { host: None, prefix: None, pool: "demo".into() }]);
    assert_eq!((listener.backlog, listener.max_params), (1024, 1 << 20));
    assert_eq!((listener.header_timeout, listener.body_timeout), (Duration::from_secs(60), Duration::from_secs(60)));
    assert_eq!(listener.max_connections, 1024);
    assert_eq!(listener.socket_mode, None);
}

#[test]
fn every_key_is_read() {
    let tree = Tree::new("every-key").file(
        "10-all.yaml",
        "\
bridge:
  runtime-dir: ../run
  log-level: fcgibridge=debug
  log-format: json
  access-log: ../log/access.log
  shutdown-timeout: 1m30s
  header-memory: 8MiB
  log-rate-limit: false
pools:
  api:
    app: mysite.wsgi:application
    python: ../bin/python3
    chdir: ../app
    env: {DJANGO_SETTINGS_MODULE: mysite.settings, WORKERS: 3, DEBUG: false}
    processes: 3
    threads: 8
    queue-size: 0
    queue-timeout: 250ms
    startup-timeout: 2m
listeners:
  api:
    scgi: unix:../run/api.sock
    socket-mode: 0660
    socket-owner: www-data
    socket-group: www-data
    backlog: 64
    max-params: 64k
    header-timeout: 5s
    body-timeout: 2m
    max-connections: 100
    routes:
      - {host: API.example.com, prefix: /v1, pool: api}
      - {prefix: /admin, pool: api}
      - {pool: api}
",
    );
    fs::create_dir_all(tree.root.join("log")).unwrap();
    let config = tree.config();
    let r = &tree.root;
    assert_eq!(config.global.runtime_dir, Some(r.join("run")));
    assert_eq!(config.global.log_level, "fcgibridge=debug");
    assert_eq!(config.global.log_format, LogFormat::Json);
    assert_eq!(config.global.access_log, Some(r.join("log/access.log")));
    assert_eq!(config.global.shutdown_timeout, Duration::from_secs(90));
    assert_eq!(config.global.header_memory, 8 << 20);
    assert!(!config.global.log_rate_limit);

    let pool = &config.pools[0];
    assert_eq!(pool.app, App::Module { module: "mysite.wsgi".into(), callable: "application".into() });
    assert_eq!(pool.python, r.join("bin/python3"));
    assert_eq!(pool.chdir, r.join("app"));
    let env: Vec<(&str, &str)> = pool.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(env, [("DEBUG", "false"), ("DJANGO_SETTINGS_MODULE", "mysite.settings"), ("WORKERS", "3")]);
    assert_eq!((pool.processes, pool.threads, pool.queue_size), (3, 8, 0));
    assert_eq!(pool.queue_timeout, Duration::from_millis(250));
    assert_eq!(pool.startup_timeout, Duration::from_secs(120));

    let l = &config.listeners[0];
    assert_eq!(l.protocol, Protocol::Scgi);
    assert_eq!(l.address, ListenAddress::Unix(r.join("run/api.sock")));
    assert_eq!(l.socket_mode, Some(0o660));
    assert_eq!((l.socket_owner.as_deref(), l.socket_group.as_deref()), (Some("www-data"), Some("www-data")));
    assert_eq!((l.backlog, l.max_params), (64, 64 << 10));
    assert_eq!(
        (l.header_timeout, l.body_timeout, l.max_connections),
        (Duration::from_secs(5), Duration::from_secs(120), 100)
    );
    let route = |host: Option<&str>, prefix: Option<&str>| Route {
        host: host.map(Into::into),
        prefix: prefix.map(Into::into),
        pool: "api".into(),
    };
    assert_eq!(l.routes, [route(Some("api.example.com"), Some("/v1")), route(None, Some("/admin")), route(None, None)]);
}

#[test]
fn a_module_app_runs_in_the_config_directory() {
    let tree = Tree::new("module-chdir")
        .file("10-pool.yaml", "pools:\n  demo:\n    app: hello\n")
        .file("20-listen.yaml", LISTENER);
    let pool = &tree.config().pools[0];
    assert_eq!(pool.app, App::Module { module: "hello".into(), callable: "application".into() });
    assert_eq!(pool.chdir, tree.root.join("conf.d"));
}

#[test]
fn a_touch_reload_file_in_a_missing_directory_is_warned_of() {
    // Passenger's `touch tmp/restart.txt`, written relative as under Passenger: it is the
    // configuration directory's tmp/, which no deploy makes.
    let tree = Tree::new("touch-reload-dir")
        .file(
            "10-pool.yaml",
            "pools:\n  demo:\n    app: ../app/app.py\n    chdir: ../app\n    touch-reload: [tmp/restart.txt, ../app/new.txt]\n",
        )
        .file("20-listen.yaml", LISTENER);
    let config = tree.config();
    let root = tree.root.display().to_string();
    let warnings: Vec<String> = config.warnings.iter().map(|w| w.replace(&root, "ROOT")).collect();
    assert_eq!(
        warnings,
        ["ROOT/conf.d/10-pool.yaml:5:5: warning: pools.demo.touch-reload: the directory of ROOT/conf.d/tmp/restart.txt \
          does not exist: the workers restart only once it and the file are made; a relative path is read from the \
          configuration file's directory, not from chdir (there it would be ROOT/app/tmp/restart.txt)"]
    );
    assert_eq!(config.pools[0].touch_reload, [tree.root.join("conf.d/tmp/restart.txt"), tree.root.join("app/new.txt")]);
}

#[test]
fn a_relative_app_file_found_in_chdir_is_named() {
    // uWSGI's `chdir = /srv/app` + `wsgi-file = app.py`, pasted: the path is read from
    // the configuration's directory, and the error says where the file is.
    let tree = Tree::new("app-in-chdir")
        .file("10-pool.yaml", "pools:\n  demo:\n    app: app.py:app\n    chdir: ../app\n")
        .file("20-listen.yaml", LISTENER);
    assert_eq!(
        tree.error(),
        "ROOT/conf.d/10-pool.yaml:3:5: pools.demo.app: app file ROOT/conf.d/app.py does not exist; a relative path \
         is read from the configuration file's directory, not from chdir: for ROOT/app/app.py write \
         \"ROOT/app/app.py:app\""
    );
    // Not in chdir either: the error alone.
    let tree = Tree::new("app-not-in-chdir")
        .file("10-pool.yaml", "pools:\n  demo:\n    app: gone.py\n    chdir: ../app\n")
        .file("20-listen.yaml", LISTENER);
    assert_eq!(
        tree.error(),
        "ROOT/conf.d/10-pool.yaml:3:5: pools.demo.app: app file ROOT/conf.d/gone.py does not exist"
    );
}

#[test]
fn an_app_factory_is_called_without_arguments_in_both_forms() {
    let tree = Tree::new("factory")
        .file(
            "10-pool.yaml",
            "pools:\n  m:\n    app: \"app:create_app()\"\n    chdir: ../app\n  f:\n    app: ../app/app.py:create_app()\n",
        )
        .file("20-listen.yaml", "listeners:\n  l:\n    fastcgi: 127.0.0.1:9000\n    pool: m\n");
    let config = tree.config();
    assert_eq!(config.pools[0].app, App::Module { module: "app".into(), callable: "create_app()".into() });
    assert_eq!(config.pools[1].app, App::File { path: tree.root.join("app/app.py"), callable: "create_app()".into() });
    // Arguments are refused, with the form that works.
    let tree = valid("factory-args").file("30-x.yaml", "pools:\n  x:\n    app: \"app:create_app(debug=True)\"\n");
    assert_eq!(
        tree.error(),
        "ROOT/conf.d/30-x.yaml:3:5: pools.x.app: \"create_app(debug=True)\" calls a factory with arguments, which the \
         worker cannot: write \"app:create_app()\" (called without arguments), or a module that does \
         `application = create_app(debug=True)` and name that module"
    );
}

#[test]
fn files_merge_in_name_order() {
    let tree = Tree::new("order")
        .file(
            "30-b.yaml",
            "pools:\n  b:\n    app: b\n  a:\n    app: a\nlisteners:\n  z:\n    fastcgi: 127.0.0.1:9002\n    pool: a\n",
        )
        .file("10-a.yaml", "pools:\n  c:\n    app: c\nlisteners:\n  y:\n    scgi: 127.0.0.1:9001\n    pool: b\n")
        .file("20-empty.yaml", "# nothing yet\n")
        .file("notes.txt", "not: [yaml")
        .file(".10-draft.yaml", "not: [yaml");
    let config = tree.config();
    let pools: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
    let listeners: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(pools, ["c", "b", "a"]);
    assert_eq!(listeners, ["y", "z"]);
}

#[test]
fn syntax_errors_give_line_and_column() {
    let tree = valid("syntax").file("30-bad.yaml", "pools:\n  other: {app: x\n");
    // A syntax error stops its file, and says so.
    const STOPS: &str = " (the rest of this file is not checked until this is fixed)";
    assert_eq!(tree.error(), format!("ROOT/conf.d/30-bad.yaml:2:10: unclosed bracket '{{'{STOPS}"));
    let tree = valid("indent").file("30-bad.yaml", "pools:\n  other:\n   app: x\n    threads: 3\n");
    assert_eq!(
        tree.error(),
        format!(
            "ROOT/conf.d/30-bad.yaml:4:5: `threads` is indented more than `app` above it, which already has a value: \
             line it up with `app`{STOPS}"
        )
    );
    // A tab in the indentation is placed on the tab itself (the parser names the character
    // after the line's blanks, or the start of the scalar the tab's line would continue).
    let tabs = [
        ("pools:\n  other:\n\tapp: x\n", "3:1"),
        ("pools:\n  other:\n  \t\tapp: x\n", "3:3"),
        ("pools:\n  other:\n    app: x\n\tthreads: 2\n", "4:1"),
        ("pools:\n  other:\n    app: x\n    \tthreads: 2\n", "4:5"),
    ];
    for (i, (text, at)) in tabs.into_iter().enumerate() {
        let tree = valid(&format!("tab-{i}")).file("30-bad.yaml", text);
        let want =
            format!("ROOT/conf.d/30-bad.yaml:{at}: a tab in the indentation; YAML indents with spaces only{STOPS}");
        assert_eq!(tree.error(), want, "{text:?}");
    }
    // The second document is placed at its `---`, not at what follows it.
    let docs = "pools: {}\n---\nlisteners: {}\n";
    let tree = valid("two-docs").file("30-bad.yaml", docs);
    assert_eq!(
        tree.error(),
        format!(
            "ROOT/conf.d/30-bad.yaml:2:1: a second YAML document (`---`); put each one in its own *.yaml file{STOPS}"
        )
    );
    let docs = "---\nbridge:\n  log-level: info\nx-a: 1\nx-b: 2\nx-c: 3\nx-d: 4\n---\n# more\n\nlisteners: {}\n";
    let err = valid("two-docs-late").file("30-bad.yaml", docs).error();
    assert!(err.starts_with("ROOT/conf.d/30-bad.yaml:8:1: a second YAML document"), "{err}");
    let err = valid("two-docs-empty").file("30-bad.yaml", "pools: {}\n---\n").error();
    assert!(err.starts_with("ROOT/conf.d/30-bad.yaml:2:1: a second YAML document"), "{err}");
}

#[test]
fn unknown_keys_are_named_with_a_hint_at_every_level() {
    let cases = [
        ("pool:\n  x: 1\n", "1:1: pool: unknown key; did you mean \"pools\"?"),
        ("bridge:\n  log_level: debug\n", "2:3: bridge.log_level: unknown key; did you mean \"log-level\"?"),
        (
            "pools:\n  x:\n    app: x\n    procesess: 2\n",
            "4:5: pools.x.procesess: unknown key; did you mean \"processes\"?",
        ),
        (
            "listeners:\n  l:\n    fastcgi: /tmp/x.sock\n    pool: demo\n    socket-mod: '0600'\n",
            "5:5: listeners.l.socket-mod: unknown key; did you mean \"socket-mode\"?",
        ),
        (
            "listeners:\n  l:\n    fastcgi: /tmp/x.sock\n    routes:\n      - {pool: demo, prefx: /a}\n",
            "5:22: listeners.l.routes[0].prefx: unknown key; did you mean \"prefix\"?",
        ),
        (
            "pools:\n  x:\n    app: x\n    zzz: 1\n",
            "4:5: pools.x.zzz: unknown key; expected one of \"app\", \"python\"",
        ),
        // uWSGI's option names are recognized in a pool, and nowhere else.
        (
            "pools:\n  x:\n    app: x\n    route: x\n",
            "4:5: pools.x.route: unknown key; uWSGI's route has no equivalent",
        ),
        (
            "listeners:\n  l:\n    fastcgi: /tmp/x.sock\n    pool: demo\n    route: x\n",
            "5:5: listeners.l.route: unknown key; did you mean \"routes\"?",
        ),
        (
            "pools:\n  x:\n    app: /srv/{host}/app.py\n    template:\n      cache: 1s\n",
            "5:7: pools.x.template.cache: unknown key; expected one of \"allow\"",
        ),
    ];
    for (text, expected) in cases {
        let tree = valid("unknown-key").file("30-extra.yaml", text);
        let err = tree.error();
        let expected = format!("ROOT/conf.d/30-extra.yaml:{expected}");
        assert!(err.starts_with(&expected), "got:  {err}\nwant: {expected}");
    }
}

#[test]
fn wrong_types_name_the_key() {
    let cases = [
        (
            "pools:\n  x:\n    app: x\n    processes: many\n",
            "4:16: pools.x.processes: expected a whole number from 1 to 4294967295",
        ),
        (
            "pools:\n  x:\n    app: x\n    threads: -1\n",
            "4:14: pools.x.threads: expected a whole number from 1 to 4294967295",
        ),
        (
            "pools:\n  x:\n    app: x\n    queue-size: -1\n",
            "4:17: pools.x.queue-size: expected a whole number, 0 or more",
        ),
        ("pools:\n  x:\n    app: [a, b]\n", "3:10: pools.x.app: "),
        ("pools:\n  x: just-a-string\n", "2:6: pools.x: "),
        // A bad value reached through an alias is reported where the alias is used.
        (
            "pools:\n  x:\n    app: x\n    env: {N: &n many}\n  y:\n    app: y\n    threads: *n\n",
            "7:14: pools.y.threads: expected a whole number",
        ),
        ("pools:\n  x:\n    app: x\n    env: [A, B]\n", "4:10: pools.x.env: "),
        // uWSGI's `env = K=V`, pasted: the mapping to write instead.
        (
            "pools:\n  x:\n    app: x\n    env: APP_MODE=production\n",
            "4:10: pools.x.env: expected a mapping of variable names to values; uWSGI's `env = NAME=value` lines are \
             written `env: {APP_MODE: production}`",
        ),
        (
            "pools:\n  x:\n    app: x\n    env:\n      - APP_MODE=production\n      - LANG=C.UTF-8\n",
            "5:7: pools.x.env: expected a mapping of variable names to values; uWSGI's `env = NAME=value` lines are \
             written `env: {APP_MODE: production, LANG: C.UTF-8}`",
        ),
    ];
    for (text, expected) in cases {
        let err = valid("wrong-type").file("30-extra.yaml", text).error();
        let expected = format!("ROOT/conf.d/30-extra.yaml:{expected}");
        assert!(err.starts_with(&expected), "got:  {err}\nwant: {expected}");
    }
}

#[test]
fn bad_durations_and_sizes_say_what_to_write() {
    let err = valid("duration").file("30-x.yaml", "pools:\n  x:\n    app: x\n    queue-timeout: 30 seconds\n").error();
    assert!(
        err.starts_with(
            "ROOT/conf.d/30-x.yaml:4:20: pools.x.queue-timeout: invalid duration \"30 seconds\"; write \"30s\""
        ),
        "{err}"
    );
    let err = valid("size")
        .file("30-x.yaml", "listeners:\n  x:\n    fastcgi: /tmp/x.sock\n    pool: demo\n    max-params: 1 megabyte\n")
        .error();
    assert!(
        err.starts_with("ROOT/conf.d/30-x.yaml:5:17: listeners.x.max-params: invalid size \"1 megabyte\""),
        "{err}"
    );
}

#[test]
fn a_missing_app_file_names_the_path() {
    let tree = valid("missing-app").file("30-x.yaml", "pools:\n  x:\n    app: ../app/nope.py\n");
    assert_eq!(tree.error(), "ROOT/conf.d/30-x.yaml:3:5: pools.x.app: app file ROOT/app/nope.py does not exist");
    let tree = valid("no-app").file("30-x.yaml", "pools:\n  x:\n    threads: 2\n");
    assert!(tree.error().starts_with("ROOT/conf.d/30-x.yaml:2:3: pools.x: missing key `app`"), "{}", tree.error());
}

#[test]
fn python_must_be_found() {
    let tree = valid("no-python").file("30-x.yaml", "pools:\n  x:\n    app: x\n    python: python3.99\n");
    assert_eq!(
        tree.error(),
        "ROOT/conf.d/30-x.yaml:4:5: pools.x.python: \"python3.99\" was not found on PATH; set python: to an interpreter path or a virtualenv directory"
    );
    let tree = valid("venv-python").file("30-x.yaml", "pools:\n  x:\n    app: x\n    python: ../app\n");
    assert_eq!(
        tree.error(),
        "ROOT/conf.d/30-x.yaml:4:5: pools.x.python: ROOT/app is a directory but not a virtualenv: ROOT/app/bin/python is missing"
    );
    // mod_wsgi's python-home=/usr: a prefix whose interpreter is bin/python3.
    std::fs::create_dir_all(tree.root.join("usr/bin")).expect("usr/bin");
    let python3 = tree.root.join("usr/bin/python3");
    std::fs::write(&python3, "#!/bin/sh\n").expect("python3");
    std::fs::set_permissions(&python3, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    let tree = tree.file("30-x.yaml", "pools:\n  x:\n    app: x\n    python: ../usr\n");
    assert_eq!(
        tree.error(),
        "ROOT/conf.d/30-x.yaml:4:5: pools.x.python: ROOT/usr is a directory but not a virtualenv: ROOT/usr/bin/python is \
         missing; name its interpreter instead: `python: ROOT/usr/bin/python3`"
    );
}

#[test]
fn counts_and_names_are_checked() {
    let cases = [
        ("pools:\n  x:\n    app: x\n    processes: 0\n", "4:5: pools.x.processes: must be 1 or more"),
        ("pools:\n  x:\n    app: x\n    threads: 0\n", "4:5: pools.x.threads: must be 1 or more"),
        ("pools:\n  my pool:\n    app: x\n", "2:3: pools.my pool: pool name \"my pool\" may only use letters, digits, '_' and '-'; e.g. \"my-pool\""),
        ("pools:\n  shop/api:\n    app: x\n", "2:3: pools.shop/api: pool name \"shop/api\" may only use letters, digits, '_' and '-'; e.g. \"shop-api\""),
        ("pools:\n  x:\n    app: my-site\n", "3:5: pools.x.app: \"my-site\" is neither a Python module"),
        ("bridge:\n  log-format: jsno\n", "2:3: bridge.log-format: unknown format \"jsno\"; did you mean \"json\"?"),
        ("bridge:\n  log-level: \"fcgibridge=loud\"\n", "2:3: bridge.log-level: \"fcgibridge=loud\" is not a log filter"),
        ("bridge:\n  access-log: ''\n", "2:3: bridge.access-log: is empty"),
        ("listeners:\n  x:\n    fastcgi: 127.0.0.1:9100\n    pool: demo\n    socket-mode: '0600'\n", "5:5: listeners.x.socket-mode: applies only to unix socket listeners"),
        ("listeners:\n  x:\n    fastcgi: 127.0.0.1:9100\n    scgi: 127.0.0.1:9101\n    pool: demo\n", "4:5: listeners.x.scgi: a listener speaks one protocol"),
        ("listeners:\n  x:\n    fastcgi: example.com:9100\n    pool: demo\n", "3:5: listeners.x.fastcgi: \"example.com:9100\" is not an address"),
        ("listeners:\n  x:\n    fastcgi: 127.0.0.1:9100\n", "2:3: listeners.x: missing key `pool` or `routes`"),
        (
            "listeners:\n  x:\n    fastcgi: 127.0.0.1:9100\n    routes:\n      - pool: demo\n      - {prefix: /a, pool: demo}\n",
            "6:9: listeners.x.routes[1]: can never match: routes[0] before it",
        ),
        ("listeners:\n  x:\n    fastcgi: 127.0.0.1:9100\n    routes:\n      - {prefix: api, pool: demo}\n", "5:10: listeners.x.routes[0].prefix: must start with '/'"),
        ("listeners:\n  x:\n    fastcgi: 127.0.0.1:9100\n    pool: demo\n    body-timeout: 0s\n", "5:5: listeners.x.body-timeout: must be longer than 0s"),
        ("listeners:\n  x:\n    fastcgi: 127.0.0.1:9100\n    pool: demo\n    header-timeout: 0\n", "5:5: listeners.x.header-timeout: must be longer than 0s"),
        ("listeners:\n  x:\n    fastcgi: 127.0.0.1:9100\n    pool: demo\n    max-connections: 0\n", "5:5: listeners.x.max-connections: must be 1 or more"),
        ("bridge:\n  header-memory: 0\n", "2:3: bridge.header-memory: must be more than 0 bytes"),
    ];
    for (text, expected) in cases {
        let err = valid("checks").file("30-x.yaml", text).error();
        let expected = format!("ROOT/conf.d/30-x.yaml:{expected}");
        assert!(err.starts_with(&expected), "got:  {err}\nwant: {expected}");
    }
}

#[test]
fn routes_must_name_existing_pools() {
    let tree = valid("unknown-pool").file(
        "30-api.yaml",
        "listeners:\n  api:\n    scgi: 127.0.0.1:9001\n    routes:\n      - {prefix: /v1, pool: demo}\n      - {pool: dmeo}\n",
    );
    assert_eq!(
        tree.error(),
        "ROOT/conf.d/30-api.yaml:6:10: listeners.api.routes[1].pool: unknown pool \"dmeo\"; did you mean \"demo\"?"
    );
    let tree = Tree::new("unknown-pool-single")
        .file("10-x.yaml", "listeners:\n  l:\n    fastcgi: 127.0.0.1:9000\n    pool: demo\n");
    assert_eq!(
        tree.error(),
        "ROOT/conf.d/10-x.yaml:4:5: listeners.l.pool: unknown pool \"demo\"; no pools are defined"
    );
}

#[test]
fn duplicates_across_files_name_both_files() {
    let tree = valid("dup-pool").file("30-again.yaml", "# the same pool again\npools:\n  demo:\n    app: other\n");
    assert_eq!(
        tree.error(),
        "ROOT/conf.d/30-again.yaml:3:3: pools.demo: pool \"demo\" is already defined at ROOT/conf.d/10-pool.yaml:2:3"
    );

    let tree = valid("dup-listener")
        .file("30-again.yaml", "listeners:\n  demo-fastcgi:\n    scgi: 127.0.0.1:9009\n    pool: demo\n");
    assert_eq!(
        tree.error(),
        "ROOT/conf.d/30-again.yaml:2:3: listeners.demo-fastcgi: listener \"demo-fastcgi\" is already defined at ROOT/conf.d/20-listen.yaml:2:3"
    );

    let tree =
        valid("dup-address").file("30-again.yaml", "listeners:\n  other:\n    scgi: 0.0.0.0:9000\n    pool: demo\n");
    assert_eq!(
        tree.error(),
        "ROOT/conf.d/30-again.yaml:3:5: listeners.other.scgi: address already used by listener \"demo-fastcgi\" at ROOT/conf.d/20-listen.yaml:3:5"
    );

    let tree = valid("dup-global")
        .file("00-a.yaml", "bridge:\n  log-level: debug\n")
        .file("30-b.yaml", "bridge:\n  shutdown-timeout: 5s\n  log-level: warn\n");
    assert_eq!(
        tree.error(),
        "ROOT/conf.d/30-b.yaml:3:3: bridge.log-level: already set at ROOT/conf.d/00-a.yaml:2:3; each bridge key may be set in one file only"
    );

    let tree = valid("dup-in-file").file("30-x.yaml", "pools:\n  x:\n    app: x\n  x:\n    app: y\n");
    assert_eq!(tree.error(), "ROOT/conf.d/30-x.yaml:4:3: pools.x: defined twice in this file (first at line 2)");
}

#[test]
fn an_empty_configuration_is_refused() {
    let tree = Tree::new("no-files");
    assert!(tree
        .error()
        .ends_with("conf.d: no *.yaml files found; a configuration needs at least one listener and one pool"));
    let tree = Tree::new("no-listeners").file("10-pool.yaml", POOL);
    assert!(tree
        .error()
        .ends_with("conf.d: no listeners are defined; add a `listeners:` section to one of its *.yaml files"));
    let missing = load(Path::new("/nonexistent/conf.d")).unwrap_err().to_string();
    assert!(missing.starts_with("/nonexistent/conf.d: cannot read the configuration directory"), "{missing}");
    let tree = Tree::new("only-yml").file("10-pool.yml", POOL);
    assert!(tree.error().contains("no *.yaml files found (files ending in .yml are not read: rename them to .yaml)"));
}

#[test]
fn keys_written_two_spaces_short_are_told_to_indent() {
    let tree = Tree::new("under-indented").file(
        "10-x.yaml",
        "pools:\n  demo:\n    app: ../app/app.py\nlisteners:\n  web:\n  fastcgi: 127.0.0.1:9000\n  pool: demo\n",
    );
    let err = tree.error();
    assert!(
        err.contains("listeners.pool: expected a mapping (indented `key: value` lines or `{key: value}`); `pool` is a listener's key: indent it under the name above it"),
        "{err}"
    );
    assert!(
        err.contains("listeners.fastcgi: expected a mapping") && err.contains("`fastcgi` is a listener's key"),
        "{err}"
    );
}

#[test]
fn a_yml_file_beside_yaml_ones_is_named_in_a_warning() {
    let tree = valid("yml-beside").file("30-more.yml", "pools:\n  more:\n    app: ../app/app.py\n");
    let config = tree.config();
    assert!(config.pools.iter().all(|p| p.name != "more"));
    let root = tree.root.display().to_string();
    let warnings: Vec<String> = config.warnings.iter().map(|w| w.replace(&root, "ROOT")).collect();
    assert_eq!(
        warnings,
        ["ROOT/conf.d/30-more.yml: warning: not read: only files ending in .yaml are; rename it to 30-more.yaml"]
    );
}

#[test]
fn a_file_given_for_the_directory_names_its_directory() {
    let tree = valid("file-for-dir");
    let file = tree.root.join("conf.d/10-pool.yaml");
    let err = load(&file).unwrap_err().to_string().replace(&tree.root.display().to_string(), "ROOT");
    assert_eq!(
        err,
        "ROOT/conf.d/10-pool.yaml: the configuration is a directory of *.yaml files, not one file: write --config ROOT/conf.d"
    );
}

#[test]
fn respond_and_proxy_keys_name_file_line_and_key() {
    let l = "listeners:\n  x:\n    fastcgi: /tmp/x.sock\n    pool: demo\n";
    let cases = [
        ("    dialect: varnish\n", "5:5: listeners.x.dialect: unknown web server \"varnish\""),
        (
            "    trusted-proxies: [10.0.0.0/40]\n",
            "5:5: listeners.x.trusted-proxies: \"10.0.0.0/40\": the prefix length",
        ),
        (
            "    trusted-proxy-headers: [X-Forwarded-For]\n",
            "5:5: listeners.x.trusted-proxy-headers: needs trusted-proxies",
        ),
        ("    file-handoff: serve\n", "listeners.x.file-roots: file-handoff: serve needs file-roots"),
        ("    unrouted-redirect: maybe\n", "5:5: listeners.x.unrouted-redirect: \"maybe\" is neither `pass` nor `404`"),
        ("    redirect-pools: listener\n", "5:5: listeners.x.redirect-pools: \"listener\" is neither `same`"),
        (
            "    file-hand-back: true\n",
            "5:5: listeners.x.file-hand-back: file-hand-back needs file-handoff: translate or serve",
        ),
    ];
    for (extra, want) in cases {
        let err = valid("respond-keys").file("30-x.yaml", &format!("{l}{extra}")).error();
        assert!(err.contains(want), "got:  {err}\nwant: {want}");
        assert!(err.starts_with("ROOT/conf.d/30-x.yaml:"), "{err}");
    }
    let err = valid("max-body").file("30-x.yaml", "pools:\n  x:\n    app: x\n    max-body: 0\n").error();
    assert!(err.contains("pools.x.max-body: must be more than 0 bytes"), "{err}");
}

/// The worker hands files back by default only where they are surely followed: by the
/// bridge (serve) or by nginx (translate); lighttpd's entry may lack x-sendfile.
#[test]
fn file_hand_back_defaults_follow_the_mode_and_the_dialect() {
    let tree = valid("file-hand-back");
    fs::create_dir_all(tree.root.join("files")).unwrap();
    let listener = |name: &str, port: u16, keys: &str| {
        format!("  {name}:\n    fastcgi: 127.0.0.1:{port}\n    pool: demo\n    file-map: {{/srv/files: /p}}\n{keys}")
    };
    let text = [
        "listeners:\n".to_owned(),
        listener("serve", 9101, "    file-handoff: serve\n    file-roots: [../files]\n"),
        listener("translate", 9102, "    file-handoff: translate\n"),
        listener("translate-on", 9103, "    file-handoff: translate\n    file-hand-back: true\n"),
        listener("serve-off", 9104, "    file-handoff: serve\n    file-roots: [../files]\n    file-hand-back: false\n"),
        listener("pass", 9105, "    file-hand-back: false\n"),
        listener("nginx", 9106, "    file-handoff: translate\n    dialect: nginx\n"),
        listener("nginx-off", 9107, "    file-handoff: translate\n    dialect: nginx\n    file-hand-back: false\n"),
        listener("lighttpd", 9108, "    file-handoff: translate\n    dialect: lighttpd\n"),
        listener("nginx-pass", 9109, "    dialect: nginx\n"),
    ]
    .concat();
    let cfg = tree.file("30-x.yaml", &text).config();
    let got: Vec<(&str, bool)> = cfg.listeners.iter().skip(1).map(|l| (l.name.as_str(), l.file_hand_back)).collect();
    let want = [
        ("serve", true),
        ("translate", false),
        ("translate-on", true),
        ("serve-off", false),
        ("pass", false),
        ("nginx", true),
        ("nginx-off", false),
        ("lighttpd", false),
        ("nginx-pass", false),
    ];
    assert_eq!(got, want);
}

#[test]
fn a_ready_check_without_a_host_gets_its_pools_route_host() {
    let text = "pools:\n  x:\n    app: ../app/app.py\n    ready-check: /up?deep=1\n  y:\n    app: ../app/app.py\n    ready-check: https://y.example/\n  z:\n    app: ../app/app.py\n    ready-check: /z\nlisteners:\n  l:\n    fastcgi: 127.0.0.1:9100\n    routes:\n      - {prefix: /x, pool: x}\n      - {host: x.example, pool: x}\n      - {host: other.example, pool: y}\n";
    let config = valid("ready-check").file("30-x.yaml", text).config();
    let check = |name: &str| config.pools.iter().find(|p| p.name == name).and_then(|p| p.ready_check.clone());
    assert_eq!(check("x"), Some(ReadyCheck { https: false, host: Some("x.example".into()), uri: "/up?deep=1".into() }));
    assert_eq!(check("y"), Some(ReadyCheck { https: true, host: Some("y.example".into()), uri: "/".into() }));
    assert_eq!(check("z").map(|c| c.host), Some(None));
    assert_eq!(check("demo"), None);
    let err = valid("ready-check").file("30-x.yaml", "pools:\n  x:\n    app: x\n    ready-check: healthz\n").error();
    assert!(err.contains("4:5: pools.x.ready-check: \"healthz\" is neither a path (/healthz) nor a URL"), "{err}");
}

#[test]
fn unknown_length_body_is_stream_buffer_or_refuse() {
    let pool = |v: &str| format!("pools:\n  x:\n    app: ../app/app.py\n    unknown-length-body: {v}\n");
    let how = |v: &str| valid("unknown-length").file("30-x.yaml", &pool(v)).config().pools[1].unknown_length_body;
    assert_eq!(how("buffer"), UnknownLengthBody::Buffer);
    assert_eq!(how("refuse"), UnknownLengthBody::Refuse);
    assert_eq!(how("stream"), UnknownLengthBody::Stream);
    assert_eq!(valid("unknown-length").config().pools[0].unknown_length_body, UnknownLengthBody::Stream);
    let err = valid("unknown-length").file("30-x.yaml", &pool("411")).error();
    assert!(err.contains("4:5: pools.x.unknown-length-body: \"411\" is not one of `stream`, `buffer`"), "{err}");
}

#[test]
fn error_pages_are_files_or_local_redirects() {
    let tree = valid("error-pages");
    fs::write(tree.root.join("app/404.html"), "<h1>gone</h1>").unwrap();
    let pool = |pages: &str| format!("pools:\n  x:\n    app: ../app/app.py\n    error-pages:\n{pages}");
    let ok = tree.file(
        "30-x.yaml",
        &pool("      \"404\": ../app/404.html\n      410: {file: ../app/404.html}\n      503: {redirect: /errors/503?x=1}\n"),
    );
    let cfg = ok.config();
    let pages = &cfg.pools.iter().find(|p| p.name == "x").expect("pool x").error_pages;
    use crate::config::ErrorPage;
    assert!(matches!(pages.get(404), Some(ErrorPage::File { content_type: "text/html; charset=utf-8", .. })));
    assert!(matches!(pages.get(410), Some(ErrorPage::File { .. })));
    assert_eq!(pages.get(503), Some(&ErrorPage::Redirect(bytes::Bytes::from_static(b"/errors/503?x=1"))));
    let cases = [
        ("      \"200\": ../app/404.html\n", "30-x.yaml:5:7: pools.x.error-pages.200: \"200\" is not an HTTP error status"),
        ("      404: {}\n", "30-x.yaml:5:7: pools.x.error-pages.404: missing key `file` or `redirect`; give a page: a file"),
        ("      404: {file: ../app/404.html, redirect: /e}\n", "30-x.yaml:5:7: pools.x.error-pages.404: a page is either `file` or `redirect`, not both"),
        ("      404: {redirect: errors/404}\n", "30-x.yaml:5:7: pools.x.error-pages.404: redirect \"errors/404\" must be a local path starting with one '/'"),
        ("      404: {redirect: //cdn/404}\n", "pools.x.error-pages.404: redirect \"//cdn/404\" must be a local path"),
        ("      404: ../app/missing.html\n", "pools.x.error-pages.404: cannot read the error page ROOT/app/missing.html"),
        ("      404: {page: /e}\n", "30-x.yaml:5:"),
    ];
    for (pages, want) in cases {
        let err = valid("error-pages-bad").file("30-x.yaml", &pool(pages)).error();
        assert!(err.contains(want), "got:  {err}\nwant: {want}");
        assert!(err.starts_with("ROOT/conf.d/30-x.yaml:"), "{err}");
    }
    let err = valid("error-pages-key").file("30-x.yaml", &pool("      404: {page: /e}\n")).error();
    assert!(err.contains("pools.x.error-pages.404") && err.contains("unknown key"), "{err}");
    // A misspelt key of a page is the one error: the page it leaves empty is not reported too.
    let lines = error_lines(&valid("error-pages-typo").file("30-x.yaml", &pool("      \"404\": {fiel: x.html}\n")));
    assert_eq!(lines, ["5:15: pools.x.error-pages.404.fiel: unknown key; did you mean \"file\"?"]);
}

#[test]
fn every_error_of_every_file_is_named_at_once() {
    let tree = Tree::new("many-errors")
        .file("10-broken.yaml", "pools:\n  a: [unclosed\n")
        .file("20-pool.yaml", "pools:\n  b:\n    app: /no/such/file.py\n")
        // a type error does not hide the file's other errors
        .file("25-pool.yaml", "pools:\n  c:\n    app: app.py\n    threads: many\n")
        .file("30-listen.yaml", "listeners:\n  l:\n    fastcgi: 127.0.0.1:9000\n    pool: b\n  m:\n    fastcgi: 127.0.0.1:9001\n    pool: b\n    file-handoff: serve\n");
    let lines: Vec<String> = tree.error().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 5, "{lines:#?}");
    assert!(lines[0].starts_with("ROOT/conf.d/10-broken.yaml:2:6: pools.a: expected a mapping"), "{lines:#?}");
    assert!(lines[1].starts_with("ROOT/conf.d/20-pool.yaml:3:5: pools.b.app:"), "{lines:#?}");
    assert!(lines[2].starts_with("ROOT/conf.d/25-pool.yaml:3:5: pools.c.app:"), "{lines:#?}");
    assert!(lines[3].starts_with("ROOT/conf.d/25-pool.yaml:4:14: pools.c.threads:"), "{lines:#?}");
    assert!(lines[4].starts_with("ROOT/conf.d/30-listen.yaml:5:3: listeners.m.file-roots:"), "{lines:#?}");
    // A route to a pool that has its own error is not reported again as unknown.
    assert!(!lines.iter().any(|l| l.contains("unknown pool")), "{lines:#?}");

    // Without the unreadable file, a route to a pool nobody wrote is still named.
    let tree = Tree::new("many-errors-route")
        .file("20-pool.yaml", "pools:\n  b:\n    app: /no/such/file.py\n")
        .file("30-listen.yaml", "listeners:\n  l:\n    fastcgi: 127.0.0.1:9000\n    pool: bb\n");
    let text = tree.error();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.contains("pools.b.app") && text.contains("listeners.l.pool: unknown pool \"bb\""), "{text}");
}

/// `lines` are as many as `want`, each starting with its counterpart.
fn assert_lines_start_with(lines: &[String], want: &[&str]) {
    assert_eq!(lines.len(), want.len(), "{lines:#?}");
    for (line, want) in lines.iter().zip(want) {
        assert!(line.starts_with(want), "got:  {line}\nwant: {want}");
    }
}

/// The error lines of `tree`, `ROOT/conf.d/30-x.yaml:` taken off.
fn error_lines(tree: &Tree) -> Vec<String> {
    tree.error().lines().map(|l| l.strip_prefix("ROOT/conf.d/30-x.yaml:").unwrap_or(l).to_owned()).collect()
}

#[test]
fn every_mistake_in_one_file_is_named_in_one_run() {
    // A wrong value, a wrong type, a misspelt key and a bad duration in one pool, and two in
    // a listener: serde stops at the first, the loader goes on past each.
    let text = "\
pools:
  x:
    app: x
    threads: 0
    processes: many
    queue-timout: 5s
    startup-timeout: soon
listeners:
  l:
    fastcgi: 127.0.0.1:9100
    pool: x
    backlog: lots
    dialect: klingon
";
    let lines = error_lines(&valid("four-mistakes").file("30-x.yaml", text));
    let want = [
        "4:5: pools.x.threads: must be 1 or more",
        "5:16: pools.x.processes: expected a whole number from 1 to 4294967295",
        "6:5: pools.x.queue-timout: unknown key; did you mean \"queue-timeout\"?",
        "7:22: pools.x.startup-timeout: invalid duration \"soon\"",
        "12:14: listeners.l.backlog: expected a whole number from 1 to 4294967295",
        "13:5: listeners.l.dialect: unknown web server \"klingon\"",
    ];
    assert_lines_start_with(&lines, &want);
}

#[test]
fn every_key_of_an_entry_in_flow_style_is_checked() {
    // A bad key of a flow mapping goes on its own: the entry's other keys are still read
    // and checked, as in block style.
    let text = "\
pools:
  x: {app: x, procesess: 2, threads: many, queue-timout: 5s}
listeners:
  l: {fastcgi: 127.0.0.1:9100, pool: x, backlg: 3, dialect: klingon, mount: app}
";
    let lines = error_lines(&valid("flow-keys").file("30-x.yaml", text));
    let want = [
        "2:15: pools.x.procesess: unknown key; did you mean \"processes\"?",
        "2:38: pools.x.threads: expected a whole number",
        "2:44: pools.x.queue-timout: unknown key; did you mean \"queue-timeout\"?",
        "4:41: listeners.l.backlg: unknown key; did you mean \"backlog\"?",
        "4:52: listeners.l.dialect: unknown web server \"klingon\"",
        "4:70: listeners.l.mount: \"app\" must be a path starting with /",
    ];
    assert_lines_start_with(&lines, &want);
}

#[test]
fn option_names_pasted_from_other_servers_name_the_key_to_write() {
    let text = "\
bridge:
  processes: 4
pools:
  x:
    app: x
    harakiri: 30
    pm.max_children: 5
    max_requests: 100
    limit-as: 512
    listen.owner: www-data
listeners:
  l: {fastcgi: 127.0.0.1:9100, pool: x, buffer-size: 32768}
";
    let lines = error_lines(&valid("peer-names").file("30-x.yaml", text));
    let want = [
        "2:3: bridge.processes: unknown key; processes (uWSGI's workers) is a pool key",
        "6:5: pools.x.harakiri: unknown key; uWSGI's harakiri (PHP-FPM's request_terminate_timeout) is the pool key request-timeout",
        "7:5: pools.x.pm.max_children: unknown key; PHP-FPM's pm.max_children is the pool key processes (mode: static) or max-processes",
        "8:5: pools.x.max_requests: unknown key; did you mean \"max-requests\"?",
        "9:5: pools.x.limit-as: unknown key; uWSGI's limit-as (mod_wsgi's virtual-memory-limit) is the pool key rlimit-as",
        "10:5: pools.x.listen.owner: unknown key; PHP-FPM's listen.owner (uWSGI's chown-socket) is the listener key socket-owner",
        "12:41: listeners.l.buffer-size: unknown key; uWSGI's buffer-size is the listener key max-params",
    ];
    assert_lines_start_with(&lines, &want);
}

#[test]
fn a_unix_socket_goes_in_a_directory_that_exists_or_in_the_runtime_dir() {
    // The runtime-dir does not exist yet, but `run` creates it before binding.
    let in_runtime_dir =
        "bridge:\n  runtime-dir: ../run\nlisteners:\n  u:\n    scgi: unix:../run/u.sock\n    pool: demo\n";
    let tree = valid("socket-in-runtime-dir").file("30-x.yaml", in_runtime_dir);
    assert!(!tree.root.join("run").exists());
    assert_eq!(tree.config().listeners[1].address, ListenAddress::Unix(tree.root.join("run/u.sock")));

    let text = "\
bridge:
  runtime-dir: ../run
  status: {listen: unix:../gone/status.sock}
listeners:
  u: {scgi: unix:../missing/u.sock, pool: demo}
  v:
    fastcgi: unix:../app/app.py/v.sock
    pool: demo
";
    let tree = valid("socket-dirs").file("30-x.yaml", text);
    let lines = error_lines(&tree);
    let missing = |dir: &str| {
        format!(
            "directory ROOT/{dir} does not exist: create it before the bridge starts (systemd: RuntimeDirectory=), \
             or put the socket in the runtime-dir ROOT/run, which the bridge creates"
        )
    };
    let want = [
        format!("3:12: bridge.status.listen: {}", missing("gone")),
        format!("5:7: listeners.u.scgi: {}", missing("missing")),
        "7:5: listeners.v.fastcgi: ROOT/app/app.py is not a directory: the socket file cannot be created in it".into(),
    ];
    assert_eq!(lines, want);
    // The control client reads the files only to find its socket: it does not look.
    let bin = tree.root.join("bin");
    let opts = LoadOptions {
        search_path: Some(bin.as_os_str()),
        privileges: Privileges::Skip,
        moment: Moment::Start,
        accounts: None,
    };
    assert!(load_with(&tree.root.join("conf.d"), opts).is_ok());

    // Without a runtime-dir, the error offers to make the directory one.
    let tree = valid("socket-dir-no-runtime-dir")
        .file("30-x.yaml", "listeners:\n  u: {scgi: unix:../run/u.sock, pool: demo}\n");
    let lines = error_lines(&tree);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].ends_with("or make it the runtime-dir (bridge: runtime-dir: ROOT/run), which the bridge creates"),
        "{lines:#?}"
    );
}

#[test]
fn log_files_go_in_a_directory_that_exists() {
    let text = "\
bridge:
  runtime-dir: ../run
  access-log: ../gone/access.log
  log-file: ../missing/bridge.log
";
    let tree = valid("log-dirs").file("30-x.yaml", text);
    let missing = |dir: &str| {
        format!("directory ROOT/{dir} does not exist; create it before the bridge starts (systemd: LogsDirectory=)")
    };
    let want = [
        format!("3:3: bridge.access-log: cannot open access log ROOT/gone/access.log: {}", missing("gone")),
        format!("4:3: bridge.log-file: cannot open log-file ROOT/missing/bridge.log: {}", missing("missing")),
    ];
    assert_eq!(error_lines(&tree), want);
    // The control client does not look.
    let bin = tree.root.join("bin");
    let opts = LoadOptions {
        search_path: Some(bin.as_os_str()),
        privileges: Privileges::Skip,
        moment: Moment::Start,
        accounts: None,
    };
    assert!(load_with(&tree.root.join("conf.d"), opts).is_ok());
    // `run` creates the runtime-dir before it opens the access log (not before the log file);
    // "-" is the main log, and a directory is no file.
    let text = "bridge:\n  runtime-dir: ../run\n  access-log: ../run/access.log\n  log-file: ../run/bridge.log\n";
    let lines = error_lines(&valid("log-in-runtime-dir").file("30-x.yaml", text));
    assert_eq!(lines, [format!("4:3: bridge.log-file: cannot open log-file ROOT/run/bridge.log: {}", missing("run"))]);
    assert!(valid("access-log-dash").file("30-x.yaml", "bridge:\n  access-log: '-'\n").load().is_ok());
    let lines = error_lines(&valid("log-is-dir").file("30-x.yaml", "bridge:\n  log-file: ../app\n"));
    assert_eq!(lines, ["2:3: bridge.log-file: cannot open log-file ROOT/app: it is a directory; name a file in it"]);
}

#[test]
fn a_reload_only_warns_of_a_missing_log_directory() {
    // Log paths take effect at a restart: a running daemon whose log directory went keeps
    // its open files and must still take other changes.
    let text = "bridge:\n  access-log: ../gone/access.log\n  log-file: ../missing/bridge.log\n";
    let tree = valid("log-dirs-reload").file("30-x.yaml", text);
    let bin = tree.root.join("bin");
    let opts = LoadOptions {
        search_path: Some(bin.as_os_str()),
        privileges: Privileges::Check,
        moment: Moment::Reload,
        accounts: None,
    };
    let config = load_with(&tree.root.join("conf.d"), opts).unwrap();
    let root = tree.root.display().to_string();
    let warnings: Vec<String> = config.warnings.iter().map(|w| w.replace(&root, "ROOT")).collect();
    let then =
        "the reload goes ahead (log paths take effect at the next restart), but that restart fails until this is fixed";
    let missing = |dir: &str| {
        format!("directory ROOT/{dir} does not exist; create it before the bridge starts (systemd: LogsDirectory=)")
    };
    assert_eq!(
        warnings,
        [
            format!("ROOT/conf.d/30-x.yaml:2:3: warning: bridge.access-log: cannot open access log ROOT/gone/access.log: {}; {then}", missing("gone")),
            format!("ROOT/conf.d/30-x.yaml:3:3: warning: bridge.log-file: cannot open log-file ROOT/missing/bridge.log: {}; {then}", missing("missing")),
        ]
    );
    // Warnings are no part of what runs: the same files reloaded are "nothing changed".
    let quiet = Config { warnings: Vec::new(), ..config.clone() };
    assert_eq!(quiet, config);
    // A start (and `check`) refuses it, and has nothing to warn of otherwise.
    assert_eq!(error_lines(&tree).len(), 2);
    assert_eq!(valid("log-dirs-fine").config().warnings, Vec::<String>::new());
}

#[test]
fn a_listener_cannot_share_the_status_listeners_address() {
    let text = "\
bridge:
  status: {listen: 127.0.0.1:9400}
listeners:
  l: {fastcgi: 0.0.0.0:9400, pool: demo}
";
    let lines = error_lines(&valid("status-address").file("30-x.yaml", text));
    assert_eq!(
        lines,
        ["4:7: listeners.l.fastcgi: address already used by the status listener (bridge.status.listen at ROOT/conf.d/30-x.yaml:2:12)"]
    );
    let text = "bridge:\n  status: {listen: 127.0.0.1:9401}\nlisteners:\n  l: {fastcgi: 127.0.0.1:9400, pool: demo}\n";
    assert!(valid("status-address-ok").file("30-x.yaml", text).load().is_ok());
}

#[test]
fn a_key_taken_out_after_its_error_is_not_reported_missing() {
    // `app` of the wrong type is taken out: no "missing key `app`" follows; a misspelt key of
    // a route in a flow list goes on its own, and the route keeps its pool.
    let text = "pools:\n  x:\n    app: [a, b]\nlisteners:\n  l:\n    fastcgi: 127.0.0.1:9100\n    routes: [{prefx: /a, pool: x}]\n";
    let lines = error_lines(&valid("follow-on").file("30-x.yaml", text));
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[0].starts_with("3:10: pools.x.app: "), "{lines:#?}");
    assert!(lines[1].starts_with("7:15: listeners.l.routes[0].prefx: unknown key"), "{lines:#?}");
}

#[test]
fn an_error_on_one_listener_key_hides_none_of_the_others() {
    let text = "\
listeners:
  l:
    fastcgi: 127.0.0.1:9100
    pool: demo
    socket-mode: '0600'
    backlog: 0
    dialect: varnish
    unrouted-redirect: maybe
    mount: app
    path-info: sometimes
    file-handoff: serve
    status-path: no-slash
    routes:
      - pool: demo
      - {prefix: api, pool: demo}
";
    let lines = error_lines(&valid("listener-keys").file("30-x.yaml", text));
    let want = [
        "2:3: listeners.l.file-roots: file-handoff: serve needs file-roots",
        "5:5: listeners.l.socket-mode: applies only to unix socket listeners",
        "6:5: listeners.l.backlog: must be 1 or more",
        "7:5: listeners.l.dialect: unknown web server \"varnish\"",
        "8:5: listeners.l.unrouted-redirect: \"maybe\" is neither `pass` nor `404`",
        "9:5: listeners.l.mount: \"app\" must be a path starting with /",
        "10:5: listeners.l.path-info: \"sometimes\" is neither `derive` nor `keep`",
        "12:5: listeners.l.status-path: ",
        "13:5: listeners.l.routes: set either pool:",
    ];
    assert_lines_start_with(&lines, &want);
    // Within routes, every route is checked too.
    let text = "listeners:\n  l:\n    fastcgi: 127.0.0.1:9100\n    routes:\n      - {host: 'a:80', pool: demo}\n      - {prefix: api, pool: demo}\n      - {prefix: /b}\n";
    let lines = error_lines(&valid("route-keys").file("30-x.yaml", text));
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(lines[0].starts_with("5:10: listeners.l.routes[0].host: must not include a port"), "{lines:#?}");
    assert!(lines[1].starts_with("6:10: listeners.l.routes[1].prefix: must start with '/'"), "{lines:#?}");
    assert!(lines[2].starts_with("7:9: listeners.l.routes[2]: missing key `pool`"), "{lines:#?}");
}

#[test]
fn keepalive_timeout_on_an_scgi_listener_is_an_error_not_ignored() {
    let text = "listeners:\n  l:\n    scgi: 127.0.0.1:9100\n    pool: demo\n    keepalive-timeout: 10s\n";
    let lines = error_lines(&valid("scgi-keepalive").file("30-x.yaml", text));
    assert_lines_start_with(&lines, &["5:5: listeners.l.keepalive-timeout: applies only to FastCGI listeners"]);
}

#[test]
fn an_ondemand_pool_with_no_queue_time_is_an_error() {
    let text = "pools:\n  q:\n    app: x\n    mode: ondemand\n    queue-timeout: 0s\n";
    let lines = error_lines(&valid("ondemand-queue-timeout").file("30-x.yaml", text));
    assert_lines_start_with(&lines, &["5:5: pools.q.queue-timeout: an ondemand pool's first request waits"]);
}

#[test]
fn whole_number_bounds_are_the_real_ones() {
    let cases = [
        (
            "pools:\n  x:\n    app: x\n    threads: 0\n    processes: 0\n",
            &["4:5: pools.x.threads: must be 1 or more", "5:5: pools.x.processes: must be 1 or more"][..],
        ),
        (
            "pools:\n  x:\n    app: x\n    threads: -4\n",
            &["4:14: pools.x.threads: expected a whole number from 1 to 4294967295"],
        ),
        (
            "pools:\n  x:\n    app: x\n    max-requests: -1\n",
            &["4:19: pools.x.max-requests: expected a whole number, 0 or more"],
        ),
        (
            "pools:\n  x:\n    app: x\n    mode: dynamic\n    max-processes: 0\n    max-spawn-rate: 0\n",
            &["5:5: pools.x.max-processes: must be 1 or more", "6:5: pools.x.max-spawn-rate: must be 1 or more"],
        ),
        (
            "listeners:\n  x:\n    fastcgi: 127.0.0.1:9100\n    pool: demo\n    backlog: -1\n",
            &["5:14: listeners.x.backlog: expected a whole number from 1 to 4294967295"],
        ),
    ];
    for (text, want) in cases {
        let lines = error_lines(&valid("bounds").file("30-x.yaml", text));
        assert_lines_start_with(&lines, want);
    }
}

#[test]
fn every_bridge_key_is_checked() {
    let text = "bridge:\n  log-format: jsno\n  access-log: ''\n  log-level: \"fcgibridge=loud\"\n";
    let lines = error_lines(&valid("bridge-keys").file("30-x.yaml", text));
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(lines[0].starts_with("2:3: bridge.log-format: unknown format \"jsno\""), "{lines:#?}");
    assert!(lines[1].starts_with("3:3: bridge.access-log: is empty"), "{lines:#?}");
    assert!(lines[2].starts_with("4:3: bridge.log-level: \"fcgibridge=loud\" is not a log filter"), "{lines:#?}");
}

#[test]
fn interface_keys_default_to_wsgi_and_asgi_takes_concurrency() {
    use super::interface::{AsgiLoop, Interface};
    let config = valid("iface-default").config();
    let pool = &config.pools[0];
    assert_eq!((pool.interface.kind, pool.interface.slots(pool.threads, true)), (Interface::Wsgi, pool.threads));
    let config = valid("iface-asgi")
        .file(
            "30-x.yaml",
            "pools:\n  x:\n    app: x\n    interface: asgi\n    concurrency: 300\n    asgi-loop: uvloop\n",
        )
        .config();
    let pool = config.pools.iter().find(|p| p.name == "x").unwrap();
    assert_eq!((pool.interface.kind, pool.interface.asgi_loop), (Interface::Asgi, AsgiLoop::Uvloop));
    assert_eq!(pool.interface.slots(pool.threads, false), 300);
    let config = valid("iface-auto").file("30-x.yaml", "pools:\n  x:\n    app: x\n    interface: auto\n").config();
    let pool = config.pools.iter().find(|p| p.name == "x").unwrap();
    assert_eq!(pool.interface.slots(pool.threads, false), pool.threads);
    assert_eq!(pool.interface.slots(pool.threads, true), super::interface::DEFAULT_CONCURRENCY);
}

#[test]
fn interface_keys_that_do_not_fit_the_pool_say_which_to_set() {
    let cases = [
        ("    interface: rsgi\n", "4:5: pools.x.interface: \"rsgi\": expected wsgi, asgi or auto"),
        (
            "    interface: asgi\n    threads: 8\n",
            "5:5: pools.x.threads: an ASGI pool (`interface: asgi`) runs one event loop",
        ),
        ("    concurrency: 50\n", "4:5: pools.x.concurrency: applies to ASGI pools only: add `interface: asgi`"),
        ("    asgi-loop: uvloop\n", "4:5: pools.x.asgi-loop: applies to ASGI pools only"),
        ("    interface: asgi\n    concurrency: 0\n", "5:5: pools.x.concurrency: must be 1 or more"),
        (
            "    interface: asgi\n    asgi-loop: trio\n",
            "5:5: pools.x.asgi-loop: \"trio\": expected auto, asyncio or uvloop",
        ),
    ];
    for (keys, expected) in cases {
        let err = valid("iface-bad").file("30-x.yaml", &format!("pools:\n  x:\n    app: x\n{keys}")).error();
        let expected = format!("ROOT/conf.d/30-x.yaml:{expected}");
        assert!(err.starts_with(&expected), "got:  {err}\nwant: {expected}");
    }
}

#[test]
fn checks_across_pools_and_listeners_name_every_mistake() {
    // Every unknown pool and every address conflict, not the first of each.
    let text = "\
listeners:
  a: {fastcgi: 127.0.0.1:9100, pool: dmeo}
  b: {fastcgi: 127.0.0.1:9101, pool: other}
  c: {fastcgi: 127.0.0.1:9100, pool: demo}
  d: {fastcgi: 127.0.0.1:9101, pool: demo}
";
    let lines = error_lines(&valid("across").file("30-x.yaml", text));
    let want = [
        "2:32: listeners.a.pool: unknown pool \"dmeo\"; did you mean \"demo\"?",
        "3:32: listeners.b.pool: unknown pool \"other\"",
        "4:7: listeners.c.fastcgi: address already used by listener \"a\"",
        "5:7: listeners.d.fastcgi: address already used by listener \"b\"",
    ];
    assert_lines_start_with(&lines, &want);
}

#[test]
fn socket_owner_and_group_must_exist() {
    let text = "listeners:\n  u:\n    fastcgi: /tmp/x.sock\n    pool: demo\n    socket-owner: no-such-user-here\n    socket-group: no-such-group-here\n";
    let lines = error_lines(&valid("socket-owner").file("30-x.yaml", text));
    assert_eq!(
        lines,
        [
            "5:5: listeners.u.socket-owner: no such user \"no-such-user-here\" on this system",
            "6:5: listeners.u.socket-group: no such group \"no-such-group-here\" on this system",
        ]
    );
    let ok =
        "listeners:\n  u:\n    fastcgi: /tmp/x.sock\n    pool: demo\n    socket-owner: root\n    socket-group: '0'\n";
    valid("socket-owner-ok").file("30-x.yaml", ok).config();
}

#[test]
fn isolation_and_an_unknown_mode_hide_no_other_mistake() {
    let text = "\
pools:
  x:
    app: x
    user: no-such-user-here
    umask: '0999'
    rlimit-nofile: 0
    nice: 30
    mode: dinamic
    cpu-time-limit: 1500ms
    pipeline: maybe
";
    let lines = error_lines(&valid("iso-all").file("30-x.yaml", text));
    let want = [
        "4:5: pools.x.user: no such user \"no-such-user-here\"",
        "5:5: pools.x.umask: \"0999\" is not an octal umask",
        "6:5: pools.x.rlimit-nofile: must be at least 1",
        "7:5: pools.x.nice: 30 is outside -20..19",
        "8:5: pools.x.mode: unknown mode \"dinamic\"; did you mean \"dynamic\"?",
        "9:5: pools.x.cpu-time-limit: is counted in whole seconds",
        "10:15: pools.x.pipeline: expected true or false",
    ];
    assert_lines_start_with(&lines, &want);
}

#[test]
fn a_template_key_with_no_value_is_a_template_with_its_defaults() {
    let text = "pools:\n  sites:\n    app: /srv/{host}/app.py\n    template:\n";
    let config = valid("template-null").file("30-x.yaml", text).config();
    let t = config.templates.iter().find(|t| t.name == "sites").expect("a template, not a pool");
    assert_eq!(t.max_instances, super::template::DEFAULT_MAX_INSTANCES);
    // A mistake inside the block does not turn the template into a pool either.
    let text = "pools:\n  sites:\n    app: /srv/{host}/app.py\n    template:\n      alow: x\n";
    let lines = error_lines(&valid("template-typo").file("30-x.yaml", text));
    assert_eq!(lines, ["5:7: pools.sites.template.alow: unknown key; did you mean \"allow\"?"], "{lines:#?}");
    // A bad pattern is one line that says what is wrong with it.
    let text = "pools:\n  sites:\n    app: /srv/{host}/app.py\n    template:\n      allow: '('\n";
    let lines = error_lines(&valid("template-regex").file("30-x.yaml", text));
    assert_eq!(lines, ["5:7: pools.sites.template.allow: \"(\" is not a regular expression: unclosed group"]);
}

#[test]
fn x_keys_hold_shared_anchors_and_other_top_level_keys_are_refused() {
    let text = "x-common: &common\n  threads: 3\npools:\n  x:\n    <<: *common\n    app: x\n";
    let config = valid("x-keys").file("30-x.yaml", text).config();
    assert_eq!(config.pools.iter().find(|p| p.name == "x").map(|p| p.threads), Some(3));
    let lines = error_lines(&valid("x-typo").file("30-x.yaml", "pols:\n  x:\n    app: x\n"));
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].starts_with("1:1: pols: unknown key; did you mean \"pools\"?"), "{lines:#?}");
}

#[test]
fn mount_at_the_root_is_kept_as_the_empty_prefix() {
    for (written, want) in [("/", Some("")), ("//", Some("")), ("/app/", Some("/app")), ("''", None)] {
        let text = format!("listeners:\n  l:\n    fastcgi: 127.0.0.1:9100\n    pool: demo\n    mount: {written}\n");
        let config = valid(&format!("mount-{}", written.len())).file("30-x.yaml", &text).config();
        let l = config.listeners.iter().find(|l| l.name == "l").expect("listener l");
        assert_eq!(l.mount.as_deref(), want, "mount: {written}");
    }
}

#[test]
fn an_access_log_format_without_an_access_log_file_is_a_warning() {
    let format = "  access-log-format: '$status $uri'\n";
    for (log, warned) in [("", true), ("  access-log: '-'\n", true), ("  access-log: access.log\n", false)] {
        let t = valid(&format!("access-format-{}", log.len())).file("00-b.yaml", &format!("bridge:\n{log}{format}"));
        let warnings = t.config().warnings;
        let said =
            warnings.iter().any(|w| w.contains("warning: bridge.access-log-format: it applies to an access log"));
        assert_eq!(said, warned, "{log:?}: {warnings:?}");
    }
}

#[test]
fn uwsgis_mount_syntax_says_how_to_write_it_here() {
    let text = "\
listeners:
  l: {fastcgi: 127.0.0.1:9100, pool: demo, mount: /app=/srv/app.py}
  r:
    fastcgi: 127.0.0.1:9101
    routes:
      - {prefix: /blog=blog.py, pool: demo}
";
    let lines = error_lines(&valid("uwsgi-mount").file("30-x.yaml", text));
    let want = [
        "2:44: listeners.l.mount: \"/app=/srv/app.py\" is uWSGI's mount (PREFIX=APP); here `mount` is the path prefix \
         alone, `mount: /app`, and the app goes in the pool's `app`",
        "6:10: listeners.r.routes[0].prefix: \"/blog=blog.py\" is uWSGI's mount (PREFIX=APP); here `prefix` is the \
         path prefix alone, `prefix: /blog`",
    ];
    assert_lines_start_with(&lines, &want);
}

#[test]
fn the_socket_keys_are_read_past_errors_elsewhere_but_not_past_their_own() {
    let socket_keys = |t: &Tree| load_socket_keys(&t.root.join("conf.d")).map(|g| (g.runtime_dir, g.control_socket));
    let run = |t: &Tree| Some((Some(t.root.join("run")), None));
    // A pool's typo, a syntax error in a file that names neither key: the keys still count.
    let t = valid("socket-keys").file("00-bridge.yaml", "bridge:\n  runtime-dir: ../run\n  log-levl: x\n");
    let t = t.file("30-typo.yaml", "pools:\n  bogus-key: 3\n").file("40-syntax.yaml", "pools:\n  a:\n    app: \"x\n");
    assert!(t.load().is_err());
    assert_eq!(socket_keys(&t), run(&t));
    // control-socket as well, relative to its file's directory.
    let t = t.file("01-ctl.yaml", "bridge:\n  control-socket: ctl.sock\n");
    assert_eq!(socket_keys(&t), Some((Some(t.root.join("run")), Some(t.root.join("conf.d/ctl.sock")))));
    // Not known: a file stopped before its end that names a key, a bad value, a key set twice.
    let t = valid("socket-keys-syntax").file("00-bridge.yaml", "bridge:\n  runtime-dir: /run/x\n   x: 1\n y: 2\n");
    assert_eq!(socket_keys(&t), None);
    let t = valid("socket-keys-bad").file("00-bridge.yaml", "bridge:\n  control-socket: [a]\n");
    assert_eq!(socket_keys(&t), None);
    let t = valid("socket-keys-twice").file("00-a.yaml", "bridge:\n  runtime-dir: /a\n");
    let t = t.file("01-b.yaml", "bridge:\n  runtime-dir: /b\n");
    assert_eq!(socket_keys(&t), None);
    let t = valid("socket-keys-section").file("00-bridge.yaml", "bridge: 3\n");
    assert_eq!(socket_keys(&t), None);
}

/// A pool `app` behind listener `front` with `direct: true`, each with `pool_keys` /
/// `listener_keys` added (indented lines).
fn direct_tree(name: &str, pool_keys: &str, listener_keys: &str) -> Tree {
    Tree::new(name).file("10-pool.yaml", &format!("pools:\n  app:\n    app: ../app/app.py\n{pool_keys}")).file(
        "20-listen.yaml",
        &format!("listeners:\n  front:\n    fastcgi: 127.0.0.1:9000\n    pool: app\n    direct: true\n{listener_keys}"),
    )
}

#[test]
fn a_direct_listener_tells_its_pool_what_its_workers_apply() {
    let c = direct_tree("direct-ok", "    threads: 8\n", "    mount: /shop\n    path-info: keep\n").config();
    assert!(c.listeners[0].direct);
    let direct = c.pools[0].direct.as_ref().expect("the pool is served directly");
    assert_eq!(
        (direct.listener.as_str(), direct.mount.as_deref(), direct.keep_path_info),
        ("front", Some("/shop"), true)
    );
    // An ASGI pool (or one that decides at start) may be direct too: its event loop accepts.
    for interface in ["asgi", "auto"] {
        let c = direct_tree(&format!("direct-{interface}"), &format!("    interface: {interface}\n"), "").config();
        assert!(c.pools[0].direct.is_some(), "{interface}");
    }
    // Its workers apply the listener's header-timeout (FCGIBRIDGE_HEADER_TIMEOUT).
    assert_eq!(direct.header_timeout, std::time::Duration::from_secs(60));
    let c = direct_tree("direct-header-timeout", "", "    header-timeout: 2500ms\n").config();
    assert_eq!(c.pools[0].direct.as_ref().map(|d| d.header_timeout), Some(std::time::Duration::from_millis(2500)));
    // And its max-redirects (FCGIBRIDGE_MAX_REDIRECTS): they follow an app's local redirects.
    assert_eq!(direct.max_redirects, 10);
    let redirects = direct_tree(
        "direct-max-redirects",
        "",
        "    max-redirects: 3
",
    )
    .config();
    assert_eq!(redirects.pools[0].direct.as_ref().map(|d| d.max_redirects), Some(3));
    // On loopback (as here) no warning; on another TCP address allowed-clients cannot apply.
    assert_eq!(c.warnings, Vec::<String>::new());
    let open = Tree::new("direct-open")
        .file("10-pool.yaml", "pools:\n  app:\n    app: ../app/app.py\n")
        .file("20-listen.yaml", "listeners:\n  front:\n    fastcgi: 0.0.0.0:9000\n    pool: app\n    direct: true\n")
        .config();
    assert_eq!(open.warnings.len(), 1, "{:?}", open.warnings);
    assert!(
        open.warnings[0].contains("conf.d/20-listen.yaml:3:")
            && open.warnings[0].contains("warning: listeners.front.fastcgi: 0.0.0.0:9000 is a `direct` listener")
            && open.warnings[0].contains("allowed-clients cannot apply to it")
            && open.warnings[0].contains("firewall"),
        "{}",
        open.warnings[0]
    );
    // Without `direct` nothing changes.
    let c = valid("direct-off").config();
    assert!(!c.listeners[0].direct && c.pools[0].direct.is_none());
}

#[test]
fn a_listener_open_to_every_client_on_a_network_address_is_warned_about() {
    let tree = |name: &str, listener: &str| {
        Tree::new(name)
            .file("10-pool.yaml", "pools:\n  app:\n    app: ../app/app.py\n")
            .file("20-listen.yaml", &format!("listeners:\n  front:\n{listener}    pool: app\n"))
            .config()
            .warnings
    };
    // uWSGI's `:9000` and `*:9000` mean every address.
    for (i, address) in ["\"*:9000\"", "0.0.0.0:9000", "10.1.2.3:9000"].iter().enumerate() {
        let warnings = tree(&format!("open-{i}"), &format!("    fastcgi: {address}\n"));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("conf.d/20-listen.yaml:3:5: warning: listeners.front.fastcgi: ")
                && warnings[0].contains("is not loopback and the listener has no allowed-clients")
                && warnings[0].contains("listen on 127.0.0.1"),
            "{}",
            warnings[0]
        );
    }
    assert!(
        tree("open-scgi", "    scgi: 0.0.0.0:9000\n")[0].contains("listeners.front.scgi: 0.0.0.0:9000 is not loopback")
    );
    // Listed clients, loopback and unix sockets are not open to everyone.
    for (i, listener) in [
        "    fastcgi: 0.0.0.0:9000\n    allowed-clients: [10.0.0.5]\n",
        "    fastcgi: 127.0.0.1:9000\n",
        "    fastcgi: \"[::1]:9000\"\n",
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(tree(&format!("closed-{i}"), listener), Vec::<String>::new(), "{listener}");
    }
}

#[test]
fn direct_refuses_what_needs_the_bridge_on_the_request_path() {
    let needs =
        "needs the bridge on the request path; a `direct` listener hands connections to the workers (docs/direct.md)";
    let follows =
        "has nothing to decide on a `direct` listener: its workers follow an app's local redirects themselves";
    // (pool keys, listener keys, the error's line in its file, key, what it says)
    let cases: &[(&str, &str, &str, &str, &str)] = &[
        (
            "",
            "    file-handoff: serve\n    file-roots: [/srv]\n",
            "20-listen.yaml:6",
            "listeners.front.file-handoff",
            needs,
        ),
        ("", "    file-roots: [/srv]\n", "20-listen.yaml:6", "listeners.front.file-roots", needs),
        ("", "    file-map: {/srv: /x}\n", "20-listen.yaml:6", "listeners.front.file-map", needs),
        ("", "    file-hand-back: false\n", "20-listen.yaml:6", "listeners.front.file-hand-back", needs),
        ("", "    status-path: /status\n", "20-listen.yaml:6", "listeners.front.status-path", needs),
        ("", "    ping-path: /ping\n", "20-listen.yaml:6", "listeners.front.ping-path", needs),
        ("", "    trusted-proxies: [10.0.0.0/8]\n", "20-listen.yaml:6", "listeners.front.trusted-proxies", needs),
        ("", "    allowed-clients: [127.0.0.1]\n", "20-listen.yaml:6", "listeners.front.allowed-clients", needs),
        ("", "    redirect-pools: any\n", "20-listen.yaml:6", "listeners.front.redirect-pools", follows),
        ("", "    unrouted-redirect: pass\n", "20-listen.yaml:6", "listeners.front.unrouted-redirect", follows),
        ("", "    dialect: nginx\n", "20-listen.yaml:6", "listeners.front.dialect", follows),
        ("", "    max-connections: 10\n", "20-listen.yaml:6", "listeners.front.max-connections", needs),
        ("", "    body-timeout: 10s\n", "20-listen.yaml:6", "listeners.front.body-timeout", needs),
        ("", "    body-min-rate: 100\n", "20-listen.yaml:6", "listeners.front.body-min-rate", needs),
        ("", "    send-timeout: 10s\n", "20-listen.yaml:6", "listeners.front.send-timeout", needs),
        ("", "    keepalive-timeout: 10s\n", "20-listen.yaml:6", "listeners.front.keepalive-timeout", needs),
        ("    queue-size: 10\n", "", "10-pool.yaml:4", "pools.app.queue-size", needs),
        ("    queue-timeout: 5s\n", "", "10-pool.yaml:4", "pools.app.queue-timeout", needs),
        ("    abort-grace: 1s\n", "", "10-pool.yaml:4", "pools.app.abort-grace", needs),
        ("    unknown-length-body: buffer\n", "", "10-pool.yaml:4", "pools.app.unknown-length-body", needs),
        ("    error-pages: {502: ../app/app.py}\n", "", "10-pool.yaml:4", "pools.app.error-pages", needs),
        ("    max-body: 1MiB\n", "", "10-pool.yaml:4", "pools.app.max-body", needs),
        ("    mode: dynamic\n", "", "10-pool.yaml:4", "pools.app.mode", "`mode: static`"),
        ("    ready-check: /healthz\n", "", "10-pool.yaml:4", "pools.app.ready-check", "remove it"),
    ];
    for (i, (pool_keys, listener_keys, at, key, says)) in cases.iter().enumerate() {
        let e = direct_tree(&format!("direct-refused-{i}"), pool_keys, listener_keys).error();
        let line = e.lines().find(|l| l.contains(&format!(": {key}: "))).unwrap_or_else(|| panic!("{key}: {e}"));
        assert!(line.contains(&format!("conf.d/{at}:")), "{key} at {at}: {line}");
        assert!(line.contains(says), "{key}: {line}");
        // Every refusal says how to get a valid file; a key that needs the bridge, in the
        // same words on the listener and on the pool.
        assert!(line.contains("remove") || line.contains("static"), "{key}: {line}");
        if *says == needs {
            assert!(line.contains(&format!("{needs}; remove it, or `direct`")), "{key}: {line}");
        }
    }
}

#[test]
fn direct_refuses_scgi_routes_commands_and_a_shared_pool() {
    let scgi = Tree::new("direct-scgi")
        .file("10-pool.yaml", "pools:\n  app:\n    app: ../app/app.py\n")
        .file("20-listen.yaml", "listeners:\n  front:\n    scgi: 127.0.0.1:9000\n    pool: app\n    direct: true\n")
        .error();
    assert!(
        scgi.contains("conf.d/20-listen.yaml:3:")
            && scgi.contains("listeners.front.scgi: a `direct` listener speaks FastCGI only"),
        "{scgi}"
    );

    let routes = Tree::new("direct-routes")
        .file("10-pool.yaml", "pools:\n  app:\n    app: ../app/app.py\n")
        .file("20-listen.yaml", "listeners:\n  front:\n    fastcgi: 127.0.0.1:9000\n    direct: true\n    routes:\n      - {prefix: /a, pool: app}\n")
        .error();
    assert!(
        routes.contains("listeners.front.routes: a `direct` listener serves one pool: name it with `pool:`"),
        "{routes}"
    );

    let command = Tree::new("direct-command")
        .file("10-pool.yaml", "pools:\n  app:\n    command: [/bin/true]\n")
        .file("20-listen.yaml", "listeners:\n  front:\n    fastcgi: 127.0.0.1:9000\n    pool: app\n    direct: true\n")
        .error();
    assert!(
        command.contains("pools.app.command: a `direct` listener's pool runs the native worker: write `app:`"),
        "{command}"
    );

    let template = Tree::new("direct-template")
        .file("10-pool.yaml", "pools:\n  sites:\n    app: /srv/{host}/app.py\n    template:\n")
        .file(
            "20-listen.yaml",
            "listeners:\n  front:\n    fastcgi: 127.0.0.1:9000\n    pool: sites\n    direct: true\n",
        )
        .error();
    assert!(template.contains("listeners.front.pool: \"sites\" is a template"), "{template}");

    // The listener's refusals do not hide the pool's.
    let both = direct_tree("direct-both", "    queue-size: 10\n", "    body-timeout: 10s\n").error();
    assert!(both.contains("pools.app.queue-size: queue-size needs the bridge"), "{both}");
    assert!(both.contains("listeners.front.body-timeout: body-timeout needs the bridge"), "{both}");

    let shared = direct_tree("direct-shared", "", "  other:\n    fastcgi: 127.0.0.1:9001\n    pool: app\n").error();
    assert!(
        shared.contains("conf.d/20-listen.yaml:4:")
            && shared.contains("listeners.front.pool: pool \"app\" is also a route target of listener other"),
        "{shared}"
    );
}

#[test]
fn check_shows_the_keys_a_direct_listener_ignores_as_comments() {
    let c = direct_tree("direct-check", "", "    header-timeout: 5s\n").config();
    let out = crate::cli::check::render(&c, "conf.d", None);
    for inert in ["queue-size: 1024", "queue-timeout: ", "pipeline: true", "max-connections: ", "body-timeout: "] {
        let line = out.lines().find(|l| l.contains(inert)).unwrap_or_else(|| panic!("{inert}: {out}"));
        assert!(
            line.starts_with("    # ")
                && line.ends_with("has no effect: a `direct` listener's workers take its connections"),
            "{line}"
        );
    }
    // What does apply stays a key.
    for live in ["    header-timeout: 5s", "    graceful-timeout: ", "    backlog: "] {
        assert!(out.lines().any(|l| l.starts_with(live)), "{live}: {out}");
    }
}

/// A valid tree whose pool runs `app` (from conf.d) with `python` when given, and a script
/// `app/app.fcgi` that starts with `first_line`.
fn flup_tree(name: &str, first_line: &str, app: &str, python: Option<&str>) -> Tree {
    let tree = Tree::new(name).file("20-listen.yaml", LISTENER);
    let line = first_line.replace("ROOT", &tree.root.display().to_string());
    let script = format!("{line}\nfrom flup.server.fcgi import WSGIServer\nWSGIServer(app).run()\n");
    fs::write(tree.root.join("app/app.fcgi"), &script).unwrap();
    fs::write(tree.root.join("app/main.py"), &script).unwrap();
    let python = python.map(|p| format!("    python: {p}\n")).unwrap_or_default();
    tree.file("10-pool.yaml", &format!("pools:\n  demo:\n    app: {app}\n{python}"))
}

/// An executable stand-in at `root/rel`.
fn stand_in(tree: &Tree, rel: &str) -> PathBuf {
    let path = tree.root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, "#!/bin/sh\n").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The one pool's interpreter, where the probe says it came from, and the warnings (the
/// scratch root shown as `ROOT`).
fn python_of(tree: &Tree) -> (PathBuf, String, Vec<String>) {
    let config = tree.config();
    let root = tree.root.display().to_string();
    let pool = &config.pools[0];
    let at = format!("{} {}", pool.python_at.at, pool.python_at.chosen_by.as_deref().unwrap_or("-"));
    (pool.python.clone(), at.replace(&root, "ROOT"), config.warnings.iter().map(|w| w.replace(&root, "ROOT")).collect())
}

const BY_SHEBANG: &str = "ROOT/app/app.fcgi:1 the app file's shebang, as python: is not set";

#[test]
fn a_flup_scripts_shebang_names_the_pools_python_when_python_is_not_written() {
    // An absolute path: a virtualenv's interpreter, run as the shebang names it.
    let tree = flup_tree("shebang-abs", "#!ROOT/venv/bin/python3 -u", "../app/app.fcgi", None);
    let venv = stand_in(&tree, "venv/bin/python3");
    assert_eq!(python_of(&tree), (venv, BY_SHEBANG.to_owned(), vec![]));

    // `env NAME`: looked up on PATH, as the default python3 is.
    let tree = flup_tree("shebang-env", "#!/usr/bin/env python3.11", "../app/app.fcgi", None);
    let on_path = stand_in(&tree, "bin/python3.11");
    assert_eq!(python_of(&tree), (on_path, BY_SHEBANG.to_owned(), vec![]));

    // `env -S` with arguments after the name, which are not the interpreter's.
    let tree = flup_tree("shebang-env-args", "#!/usr/bin/env -S python3.11 -u -W ignore", "../app/app.fcgi", None);
    let on_path = stand_in(&tree, "bin/python3.11");
    assert_eq!(python_of(&tree), (on_path, BY_SHEBANG.to_owned(), vec![]));

    // A .py file run as the main script (`:__main__`) reads its shebang too.
    let tree = flup_tree("shebang-main", "#!ROOT/venv/bin/python3", "../app/main.py:__main__", None);
    let venv = stand_in(&tree, "venv/bin/python3");
    let at = BY_SHEBANG.replace("app.fcgi", "main.py");
    assert_eq!(python_of(&tree), (venv, at, vec![]));
}

#[test]
fn a_shebang_is_not_read_where_python_is_written_or_the_file_is_imported() {
    // `python:` written: it is the interpreter, whatever the shebang says (even one missing).
    let tree = flup_tree("shebang-written", "#!/nonexistent/venv/bin/python3", "../app/app.fcgi", Some("python3"));
    let python3 = tree.root.join("bin/python3");
    let at = python_of(&tree).1;
    assert!(at.starts_with("ROOT/conf.d/10-pool.yaml:4:") && at.ends_with(" -"), "{at}");
    assert_eq!(python_of(&tree).0, python3);
    assert_eq!(python_of(&tree).2, Vec::<String>::new());

    // A .py file imported as a module: its shebang never ran it.
    let tree = flup_tree("shebang-module", "#!/nonexistent/venv/bin/python3", "../app/main.py", None);
    assert_eq!(python_of(&tree).0, tree.root.join("bin/python3"));
    assert_eq!(python_of(&tree).2, Vec::<String>::new());

    // A shebang naming no Python: the default, nothing to say.
    for line in ["#!/bin/sh", "#!/usr/bin/env bash", "# no shebang"] {
        let tree = flup_tree("shebang-other", line, "../app/app.fcgi", None);
        let (python, at, warnings) = python_of(&tree);
        assert_eq!(python, tree.root.join("bin/python3"), "{line}");
        assert!(at.ends_with(" -"), "{line}: {at}");
        assert_eq!(warnings, Vec::<String>::new(), "{line}");
    }
}

#[test]
fn a_shebang_naming_a_python_that_cannot_be_used_is_a_warning_and_the_default_runs() {
    let then = "the pool runs ROOT/bin/python3 (python3 from PATH) instead; set `python:` to the interpreter the \
                script needs";
    let cases = [
        ("#!ROOT/venv/bin/python3", "ROOT/venv/bin/python3 does not exist"),
        ("#!/usr/bin/env python3.99", "\"python3.99\" was not found on PATH"),
        (
            "#!/usr/bin/env python",
            "ROOT/bin/python may be Python 2 (it is no Python 3 virtualenv's, nor a link to python3.N)",
        ),
    ];
    for (line, why) in cases {
        let tree = flup_tree("shebang-unusable", line, "../app/app.fcgi", None);
        stand_in(&tree, "bin/python");
        let (python, at, warnings) = python_of(&tree);
        assert_eq!((python, at.ends_with(" -")), (tree.root.join("bin/python3"), true), "{line}");
        let want = format!(
            "ROOT/app/app.fcgi:1: warning: pools.demo.python: the app file's shebang `{line}` names a Python that \
             cannot be used: {why}; {then}"
        );
        assert_eq!(warnings, vec![want], "{line}");
    }
}

#[test]
fn a_shebangs_env_name_is_looked_up_on_the_pools_own_path_when_it_sets_one() {
    // mod_fcgid's `FcgidInitialEnv PATH` (spawn-fcgi's PATH=…) is the pool's `env: PATH`:
    // `env python3` found the virtualenv's there, not the bridge's python3.
    let tree = flup_tree("shebang-env-path", "#!/usr/bin/env python3", "../app/app.fcgi", None);
    let venv = stand_in(&tree, "venv/bin/python3");
    let env = format!("    env: {{PATH: \"{}:/usr/bin:/bin\"}}\n", venv.parent().unwrap().display());
    let pool = fs::read_to_string(tree.root.join("conf.d/10-pool.yaml")).unwrap();
    let tree = tree.file("10-pool.yaml", &format!("{pool}{env}"));
    assert_eq!(python_of(&tree), (venv, BY_SHEBANG.to_owned(), vec![]));
    // A name not on it is said as such; the default still comes from the bridge's PATH.
    fs::write(tree.root.join("app/app.fcgi"), "#!/usr/bin/env python3.99\n").unwrap();
    let (python, _, warnings) = python_of(&tree);
    assert_eq!(python, tree.root.join("bin/python3"));
    assert!(warnings.len() == 1 && warnings[0].contains("\"python3.99\" was not found on PATH"), "{warnings:?}");
}

#[test]
fn a_script_whose_shebang_cannot_be_read_is_a_warning() {
    // The pool's user may read what the bridge cannot (NFS root_squash): the default runs,
    // and the operator is told why the shebang was not used.
    let tree = flup_tree("shebang-unreadable", "#!ROOT/venv/bin/python3", "../app/app.fcgi", None);
    stand_in(&tree, "venv/bin/python3");
    fs::set_permissions(tree.root.join("app/app.fcgi"), fs::Permissions::from_mode(0o000)).unwrap();
    // Root reads anything: this thread's file-system uid is made another's, which drops its
    // CAP_DAC_OVERRIDE as root_squash does (the uid is per thread, gone with it). The tree
    // stays this thread's, which may remove it.
    let (python, at, warnings) = std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setfsuid changes only this thread's file-system credentials.
            if unsafe { libc::geteuid() } == 0 {
                unsafe { libc::setfsuid(65534) };
            }
            python_of(&tree)
        })
        .join()
        .unwrap()
    });
    assert_eq!((python.ends_with("bin/python3"), at.ends_with(" -")), (true, true), "{python:?} {at}");
    assert_eq!(
        warnings,
        vec!["ROOT/app/app.fcgi:1: warning: pools.demo.python: cannot read the app file to read its shebang \
              (Permission denied); the pool runs ROOT/bin/python3 (python3 from PATH) instead; set \
              `python:` to the interpreter the script needs"
            .to_owned()]
    );
}

#[test]
fn a_chroot_pool_does_not_read_its_scripts_shebang_on_the_host() {
    // spawn-fcgi -c JAIL ran `#!/usr/bin/python3` as the jail's; the bridge does not resolve it
    // on the host (nor a host path into the jail the kernel never saw): `python:` is needed.
    for line in ["#!/usr/bin/python3", "#!ROOT/jail/venv/bin/python3"] {
        let tree = Tree::new("shebang-chroot").file("20-listen.yaml", LISTENER);
        fs::create_dir_all(tree.root.join("jail/app")).unwrap();
        stand_in(&tree, "jail/venv/bin/python3");
        let first = line.replace("ROOT", &tree.root.display().to_string());
        fs::write(tree.root.join("jail/app/app.fcgi"), format!("{first}\nimport sys\n")).unwrap();
        let pool = "pools:\n  demo:\n    app: ../jail/app/app.fcgi\n    chroot: ../jail\n";
        let err = tree.file("10-pool.yaml", pool).error();
        let want = format!(
            "pools.demo.python: not set, and python3 from PATH (ROOT/bin/python3) is outside the chroot; the shebang \
             `{line}` at ROOT/jail/app/app.fcgi:1 is not used for a chroot: pool"
        );
        assert!(err.contains(&want), "{line}: {err}");
    }
}

#[test]
fn a_shebang_choosing_the_python_is_said_once_per_pool() {
    let tree = flup_tree("shebang-said", "#!ROOT/venv/bin/python3", "../app/app.fcgi", None);
    let venv = stand_in(&tree, "venv/bin/python3");
    let config = tree.config();
    let said = config.pools[0].python_from_shebang().unwrap();
    let want = format!("pool demo: python {} from {}:1 (its shebang; python: not set)", venv.display(), {
        tree.root.join("app/app.fcgi").display()
    });
    assert_eq!(said, want);
    // `python:` written: nothing to say.
    let tree = flup_tree("shebang-unsaid", "#!ROOT/venv/bin/python3", "../app/app.fcgi", Some("python3"));
    assert_eq!(tree.config().pools[0].python_from_shebang(), None);
}

#[test]
fn a_warning_logged_at_warn_says_warning_once() {
    let w = "/srv/app/app.fcgi:1: warning: pools.app.python: the app file's shebang `#!/x` names a Python that cannot \
             be used";
    let want =
        "/srv/app/app.fcgi:1: pools.app.python: the app file's shebang `#!/x` names a Python that cannot be used";
    assert_eq!(logged_warning(w), want);
    assert_eq!(logged_warning("warning: cannot open the log"), "cannot open the log");
    // Only the marker: a message that mentions a warning keeps it.
    assert_eq!(logged_warning("a: warning: b: a warning: c"), "a: b: a warning: c");
    assert_eq!(logged_warning("no marker"), "no marker");
}

#[test]
fn a_log_level_that_names_no_level_is_refused_not_read_as_a_target() {
    // tracing reads a bare word that is no level as a target name: the daemon would log
    // nothing else.
    let cases = [
        ("warning", "\"warning\" is not a level (tracing would read it as a target name and log nothing else); did you mean \"warn\"?"),
        ("WARNING", "did you mean \"warn\"?"),
        ("notice", "did you mean \"info\"?"),
        ("verbose", "did you mean \"debug\"?"),
        ("info,verbose", "\"verbose\" is not a level"),
        ("fcgibridge", "\"fcgibridge\" is not a level (tracing would read it as a target name and log nothing else); write a level (error, warn, info, debug, trace or off), or TARGET=LEVEL: fcgibridge=debug"),
        ("debug=", "\"debug=\" has no level after '='; write TARGET=LEVEL, e.g. debug=debug, or a level alone"),
        ("warn, fcgibridge=debug", "\" fcgibridge=debug\" starts or ends with a space"),
        ("warn, debug", "\" debug\" starts or ends with a space"),
        ("", "is empty: nothing would be logged"),
        (",", "is empty: nothing would be logged"),
    ];
    for (level, want) in cases {
        let text = format!("bridge:\n  log-level: {level:?}\n");
        let lines = error_lines(&valid("log-level").file("30-x.yaml", &text));
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(lines[0].starts_with("2:3: bridge.log-level: ") && lines[0].contains(want), "{level:?}: {}", lines[0]);
    }
    // Levels in any case, target=level directives and comma lists are filters.
    for level in [
        "warn",
        "INFO",
        "Debug",
        "off",
        "trace",
        "error",
        "warn,fcgibridge=debug",
        "info,fcgibridge::listen=trace",
        "3",
        // Span filters, with a level or without (every level inside the span).
        "info,[request]=debug",
        "warn,[request]",
        "fcgibridge[request{pool=app}]",
    ] {
        let text = format!("bridge:\n  log-level: {level:?}\n");
        let config = valid("log-level-ok").file("30-x.yaml", &text).config();
        assert_eq!(config.global.log_level, level);
    }
}

#[test]
fn an_ipv6_wildcard_listener_clashes_with_ipv4_addresses_on_its_port() {
    // Linux binds `[::]` for IPv4 too (net.ipv6.bindv6only=0): `run` could not bind both.
    let text = "listeners:\n  a: {fastcgi: \"[::]:9400\", pool: demo}\n  b: {fastcgi: 0.0.0.0:9400, pool: demo}\n  c: {fastcgi: 127.0.0.1:9400, pool: demo}\n  d: {fastcgi: \"[::]:9400\", pool: demo}\n";
    let lines = error_lines(&valid("v6-wildcard").file("30-x.yaml", text));
    let why = "([::] is an IPv6 wildcard, which Linux binds for IPv4 too)";
    assert_eq!(
        lines,
        [
            format!(
                "3:7: listeners.b.fastcgi: address already used by listener \"a\" at ROOT/conf.d/30-x.yaml:2:7 {why}"
            ),
            format!(
                "4:7: listeners.c.fastcgi: address already used by listener \"a\" at ROOT/conf.d/30-x.yaml:2:7 {why}"
            ),
            "5:7: listeners.d.fastcgi: address already used by listener \"a\" at ROOT/conf.d/30-x.yaml:2:7".to_owned(),
        ]
    );
    // The status listener too, either way round.
    let text = "bridge:\n  status: {listen: 127.0.0.1:9401}\nlisteners:\n  l: {fastcgi: \"[::]:9401\", pool: demo}\n";
    let lines = error_lines(&valid("v6-wildcard-status").file("30-x.yaml", text));
    assert_eq!(
        lines,
        [format!("4:7: listeners.l.fastcgi: address already used by the status listener (bridge.status.listen at ROOT/conf.d/30-x.yaml:2:12) {why}")]
    );
    // Another port, or a specific IPv6 address beside an IPv4 one, is no clash.
    let text = "listeners:\n  a: {fastcgi: \"[::]:9402\", pool: demo}\n  b: {fastcgi: 0.0.0.0:9403, pool: demo}\n  c: {fastcgi: \"[::1]:9404\", pool: demo}\n  d: {fastcgi: 127.0.0.1:9404, pool: demo}\n";
    assert!(valid("v6-wildcard-ok").file("30-x.yaml", text).load().is_ok());
}

#[test]
fn an_ipv4_mapped_listener_clashes_with_its_ipv4_address() {
    // `[::ffff:127.0.0.1]` binds 127.0.0.1: `run` could not bind both.
    let text = "listeners:\n  a: {fastcgi: 127.0.0.1:9410, pool: demo}\n  b: {fastcgi: \"[::ffff:127.0.0.1]:9410\", pool: demo}\n  c: {fastcgi: \"[::ffff:0.0.0.0]:9411\", pool: demo}\n  d: {fastcgi: 127.0.0.2:9411, pool: demo}\n  e: {fastcgi: \"[::]:9412\", pool: demo}\n  f: {fastcgi: \"[::ffff:127.0.0.1]:9412\", pool: demo}\n";
    let lines = error_lines(&valid("v4-mapped").file("30-x.yaml", text));
    let why = "([::ffff:a.b.c.d] is the IPv4 address a.b.c.d)";
    let wildcard = "([::] is an IPv6 wildcard, which Linux binds for IPv4 too)";
    assert_eq!(
        lines,
        [
            format!("3:7: listeners.b.fastcgi: address already used by listener \"a\" at ROOT/conf.d/30-x.yaml:2:7 {why}"),
            format!("5:7: listeners.d.fastcgi: address already used by listener \"c\" at ROOT/conf.d/30-x.yaml:4:7 {why}"),
            format!("7:7: listeners.f.fastcgi: address already used by listener \"e\" at ROOT/conf.d/30-x.yaml:6:7 {wildcard}"),
        ]
    );
    // Another mapped address on the port is no clash.
    let text = "listeners:\n  a: {fastcgi: 127.0.0.1:9413, pool: demo}\n  b: {fastcgi: \"[::ffff:127.0.0.2]:9413\", pool: demo}\n";
    assert!(valid("v4-mapped-ok").file("30-x.yaml", text).load().is_ok());
}

#[test]
fn a_listener_or_bridge_key_in_a_pool_says_where_it_goes() {
    // Not a look-alike pool key ("did you mean queue-timeout?" for header-timeout).
    let keys = [
        "header-timeout: 5s",
        "send-timeout: 5s",
        "max-params: 1MiB",
        "max-connections: 9",
        "body-timeout: 5s",
        "backlog: 9",
        "socket-mode: '0660'",
        "fastcgi: 127.0.0.1:9100",
    ];
    for key_value in keys {
        let key = key_value.split(':').next().unwrap();
        let text = format!("pools:\n  x:\n    app: x\n    {key_value}\n");
        let lines = error_lines(&valid("listener-key-in-pool").file("30-x.yaml", &text));
        let want = format!("4:5: pools.x.{key}: unknown key; {key} is a listener key: put it under listeners.NAME");
        assert_eq!(lines, [want]);
    }
    // In a template's own keys, and a bridge key in a pool or a listener.
    let text = "pools:\n  x:\n    app: /srv/{host}/app.py\n    template:\n      header-timeout: 5s\n";
    let lines = error_lines(&valid("listener-key-in-template").file("30-x.yaml", text));
    assert_eq!(lines, ["5:7: pools.x.template.header-timeout: unknown key; header-timeout is a listener key: put it under listeners.NAME"]);
    let text = "pools:\n  x:\n    app: x\n    log-level: debug\n";
    let lines = error_lines(&valid("bridge-key-in-pool").file("30-x.yaml", text));
    assert_eq!(lines, ["4:5: pools.x.log-level: unknown key; log-level is a bridge key: put it under bridge"]);
    let text = "listeners:\n  l:\n    fastcgi: 127.0.0.1:9100\n    pool: demo\n    access-log: /tmp/a.log\n";
    let lines = error_lines(&valid("bridge-key-in-listener").file("30-x.yaml", text));
    assert_eq!(lines, ["5:5: listeners.l.access-log: unknown key; access-log is a bridge key: put it under bridge"]);
    // A pool key under a listener is still named as one.
    let text = "listeners:\n  l:\n    fastcgi: 127.0.0.1:9100\n    pool: demo\n    max-body: 1MiB\n";
    let lines = error_lines(&valid("pool-key-in-listener").file("30-x.yaml", text));
    assert!(lines[0].starts_with("5:5: listeners.l.max-body: unknown key; max-body is a pool key"), "{lines:#?}");
}

#[test]
fn a_memory_limit_pasted_from_mod_wsgi_in_bytes_is_warned_of() {
    // WSGIDaemonProcess memory-limit=500000000: bytes, and a hard limit there; here bytes of
    // RSS and a graceful recycle, which the warning says, with what to write.
    let text = "pools:\n  x:\n    app: x\n    memory-limit: 500000000\n";
    let config = valid("memory-limit-bare").file("30-x.yaml", text).config();
    let x = config.pools.iter().find(|p| p.name == "x").unwrap();
    assert_eq!(x.supervision.memory_limit, Some(500_000_000));
    let warnings: Vec<&str> = config.warnings.iter().map(|w| w.split_once("30-x.yaml:").unwrap().1).collect();
    assert_eq!(
        warnings,
        ["4:5: warning: pools.x.memory-limit: 500000000 without a unit is bytes, about 477MiB: a worker whose RSS \
          passes it is recycled gracefully (sampled every second). mod_wsgi's memory-limit=500000000 was a hard limit \
          instead (RLIMIT_DATA: an allocation past it fails), nearest here the pool key rlimit-as; write a unit \
          (`memory-limit: 477MiB`) and this warning goes"]
    );
    // With a unit, nothing to say; quoted, a number is still without one.
    for (written, warned) in [("477MiB", false), ("500MB", false), ("\"500000000\"", true)] {
        let text = format!("pools:\n  x:\n    app: x\n    memory-limit: {written}\n");
        let config = valid("memory-limit-unit").file("30-x.yaml", &text).config();
        let said = config.warnings.iter().any(|w| w.contains("memory-limit"));
        assert_eq!(said, warned, "{written}: {:?}", config.warnings);
    }
}

#[test]
fn a_memory_limit_under_1mib_is_refused_in_words_that_fit_a_unit_too() {
    let text = "pools:\n  x:\n    app: x\n    memory-limit: 1MB\n";
    let lines = error_lines(&valid("memory-limit-unit").file("30-x.yaml", text));
    assert_eq!(
        lines,
        ["4:5: pools.x.memory-limit: 1000000 bytes is less than 1MiB, the smallest limit; write e.g. \"512MiB\" (a \
          number without a unit counts bytes)"]
    );
    let text = "pools:\n  x:\n    app: x\n    memory-limit: 512\n";
    let lines = error_lines(&valid("memory-limit-bytes").file("30-x.yaml", text));
    assert!(
        lines[0].starts_with("4:5: pools.x.memory-limit: 512 bytes is less than 1MiB, the smallest limit"),
        "{lines:#?}"
    );
}

#[test]
fn a_relative_file_map_path_is_refused_and_the_doc_says_so() {
    // Unlike the other paths, file-map's are not resolved against the file's directory.
    let text = "listeners:\n  l:\n    fastcgi: 127.0.0.1:9100\n    pool: demo\n    file-handoff: translate\n    file-map: {files: /p}\n";
    let lines = error_lines(&valid("file-map-relative").file("30-x.yaml", text));
    assert_eq!(lines, ["6:5: listeners.l.file-map: entries map an absolute filesystem path to an absolute URI path, e.g. /srv/files: /protected"]);
    let doc = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md")).expect("the doc");
    let row = doc.lines().find(|l| l.starts_with("| `file-map` |")).expect("the file-map row");
    assert!(row.contains("a relative path is refused"), "{row}");
}

#[test]
fn touch_reload_is_a_path_or_a_list_made_absolute() {
    let pool = |value: &str| format!("pools:\n  x:\n    app: ../app/app.py\n    touch-reload: {value}\n");
    let watched =
        |tree: &Tree| tree.config().pools.iter().find(|p| p.name == "x").expect("pool x").touch_reload.clone();
    // Relative to the file's directory; a file that does not exist yet is fine.
    let tree = valid("touch-reload-one").file("30-x.yaml", &pool("reload.txt"));
    assert_eq!(watched(&tree), [tree.root.join("conf.d/reload.txt")]);
    let tree = valid("touch-reload-list").file("30-x.yaml", &pool("[../app/app.py, /srv/deploy/stamp]"));
    assert_eq!(watched(&tree), [tree.root.join("app/app.py"), PathBuf::from("/srv/deploy/stamp")]);
    assert!(valid("touch-reload-none").config().pools[0].touch_reload.is_empty());
    let err = valid("touch-reload-empty").file("30-x.yaml", &pool("\"\"")).error();
    assert!(err.contains("30-x.yaml:4:5: pools.x.touch-reload: an empty path; name the file"), "{err}");
    let err = valid("touch-reload-map").file("30-x.yaml", &pool("{a: b}")).error();
    assert!(err.contains("pools.x.touch-reload") && err.contains("a path, or a list of paths"), "{err}");
}

#[test]
fn trusted_proxies_believe_the_forwarded_for_chain_and_the_scheme_unless_told() {
    let listen = |extra: &str| {
        format!("listeners:\n  front:\n    fastcgi: 127.0.0.1:9420\n    pool: demo\n    trusted-proxies: [10.0.0.0/8]\n{extra}")
    };
    let c = valid("proxy-default").file("30-x.yaml", &listen("")).config();
    let front = c.listeners.iter().find(|l| l.name == "front").and_then(|l| l.trusted_proxies.clone());
    assert_eq!(front.map(|t| t.headers), Some(super::ProxyHeader::DEFAULT.to_vec()));
    assert_eq!(c.warnings, Vec::<String>::new());
    // Two headers that set the same thing: a warning each, where the list is.
    let extra = "    trusted-proxy-headers: [X-Forwarded-For, X-Real-IP, Forwarded, X-Forwarded-Host]\n";
    let c = valid("proxy-overlap").file("30-x.yaml", &listen(extra)).config();
    let root = c.warnings.first().and_then(|w| w.split("/conf.d/").next()).unwrap_or_default().to_owned();
    let warnings: Vec<String> = c.warnings.iter().map(|w| w.replace(&root, "ROOT")).collect();
    let tail = "a proxy sets one, and a client can write another, which may win: list only the header your proxy writes (docs/trusted-proxies.md)";
    assert_eq!(
        warnings,
        [
            format!("ROOT/conf.d/30-x.yaml:6:5: warning: listeners.front.trusted-proxy-headers: X-Forwarded-For and X-Real-IP and Forwarded all set REMOTE_ADDR; {tail}"),
            format!("ROOT/conf.d/30-x.yaml:6:5: warning: listeners.front.trusted-proxy-headers: X-Forwarded-Host and Forwarded both set HTTP_HOST; {tail}"),
        ]
    );
}

#[test]
fn an_error_in_a_merged_anchor_is_placed_where_the_anchor_has_it() {
    // serde places a bad value that `<<: *defaults` brings at the alias (7:9): the loader
    // places it at the value, named as the pool's key.
    let text = "x-defaults: &defaults\n  threads: 4\n  processes: lots\n  queue-timeout: 5s\npools:\n  x:\n    <<: *defaults\n    app: x\n";
    assert_eq!(
        error_lines(&valid("merge-value").file("30-x.yaml", text)),
        ["3:14: pools.x.processes: expected a whole number from 1 to 4294967295 (in &defaults, merged here at line 7)"]
    );
    // An unknown key of the anchor, checks made after parsing (threads, for each pool it
    // reaches), an alias for a whole entry and a mapping merged as written.
    let text = "x-d: &d\n  app: x\n  threads: 0\n  harakiri: 3\npools:\n  a:\n    <<: *d\n  b: *d\n  c:\n    <<: {app: x, processes: lots}\n";
    let lines = error_lines(&valid("merge-more").file("30-x.yaml", text));
    assert_eq!(
        lines,
        [
            "3:3: x-d.threads: must be 1 or more (in &d, merged into pool a at line 7; used in pool b at line 8)",
            "4:3: x-d.harakiri: unknown key; uWSGI's harakiri (PHP-FPM's request_terminate_timeout) is the pool key \
             request-timeout, a duration such as 30s (in &d, merged into pool a at line 7; used in pool b at line 8)",
            "10:29: pools.c.processes: expected a whole number from 1 to 4294967295 (in the mapping merged here at line 10)",
        ]
    );
}

#[test]
fn a_bad_value_in_an_anchor_merged_into_several_pools_is_reported_once() {
    // One mistake, one line: placed in the anchor, naming every pool it reaches. A wrong
    // type (found by serde), an unknown key, and a check made after parsing.
    let pools = "pools:\n  a:\n    <<: *defaults\n    app: x\n  b:\n    <<: *defaults\n    app: x\n  c:\n    <<: *defaults\n    app: x\n";
    let text = format!("x-defaults: &defaults\n  processes: lots\n  harakiri: 30\n{pools}");
    let reached = "(in &defaults, merged into pools a at line 6, b at line 9 and c at line 12)";
    assert_eq!(
        error_lines(&valid("merge-many-serde").file("30-x.yaml", &text)),
        [
            format!("2:14: x-defaults.processes: expected a whole number from 1 to 4294967295 {reached}"),
            format!(
                "3:3: x-defaults.harakiri: unknown key; uWSGI's harakiri (PHP-FPM's request_terminate_timeout) is \
                 the pool key request-timeout, a duration such as 30s {reached}"
            ),
        ]
    );
    let text = format!("x-defaults: &defaults\n  threads: 0\n  queue-size: 10\n{pools}");
    assert_eq!(
        error_lines(&valid("merge-many-checked").file("30-x.yaml", &text)),
        [format!("2:3: x-defaults.threads: must be 1 or more {reached}")]
    );
    // A pool that writes the key itself is not reached; one that is the anchor's home says so.
    let text = "pools:\n  a: &base\n    app: x\n    processes: lots\n  b:\n    <<: *base\n  c:\n    <<: *base\n    processes: 2\n";
    assert_eq!(
        error_lines(&valid("merge-home").file("30-x.yaml", text)),
        ["4:16: pools.a.processes: expected a whole number from 1 to 4294967295 (also merged into pool b at line 6)"]
    );
}

#[test]
fn mistakes_carried_over_from_other_servers_say_what_to_write() {
    let pool = |extra: &str| format!("pools:\n  x:\n    app: ../app/app.py\n{extra}");
    let cases = [
        // Duplicate keys: an ini file's last one wins; here, say where the first one is.
        (pool("    threads: 2\n    threads: 8\n"), "5:5: pools.x.threads: defined twice in this file (first at line 4)"),
        // A single value where a list goes: PHP-FPM's comma list, a command line.
        (
            "listeners:\n  l:\n    fastcgi: 127.0.0.1:9100\n    pool: demo\n    allowed-clients: 127.0.0.1, 10.0.0.1 # php-fpm\n".into(),
            "5:22: listeners.l.allowed-clients: expected a list (`- item` lines or `[a, b]`); write [127.0.0.1, 10.0.0.1]",
        ),
        (
            "pools:\n  x:\n    command: php-cgi -c /etc/php.ini\n".into(),
            "3:14: pools.x.command: expected a list (`- item` lines or `[a, b]`); write [php-cgi, -c, /etc/php.ini]",
        ),
        // Entries written as list items.
        (
            "pools:\n  - x:\n    app: ../app/app.py\n".into(),
            "2:3: pools: expected a mapping (indented `key: value` lines or `{key: value}`); pools are named: each pool \
             is a key (`demo:`) with its settings indented under it, not a list item (`- demo:`)",
        ),
        (
            "listeners:\n  l:\n    - fastcgi: 127.0.0.1:9100\n    - pool: demo\n".into(),
            "3:5: listeners.l: expected a mapping (indented `key: value` lines or `{key: value}`); its keys are \
             `key: value` lines indented under its name, not list items (`- key: value`)",
        ),
        // Durations with spaces, capitals or words.
        (pool("    request-timeout: 30 sec\n"), "4:22: pools.x.request-timeout: invalid duration \"30 sec\"; write \"30s\""),
        (pool("    idle-timeout: 30S\n    mode: dynamic\n"), "4:19: pools.x.idle-timeout: invalid duration \"30S\"; write \"30s\""),
        (pool("    queue-timeout: 1h 30m\n"), "4:20: pools.x.queue-timeout: invalid duration \"1h 30m\"; write \"1h30m\""),
        // Words in other servers' spelling: capitals, Debian's name for Apache.
        (pool("    interface: ASGI\n"), "4:5: pools.x.interface: \"ASGI\": expected wsgi, asgi or auto; did you mean \"asgi\"?"),
        (
            "listeners:\n  l:\n    fastcgi: 127.0.0.1:9100\n    pool: demo\n    dialect: apache2\n".into(),
            "5:5: listeners.l.dialect: unknown web server \"apache2\"; one of nginx, lighttpd, apache, caddy, h2o, \
             haproxy, generic; did you mean \"apache\"?",
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        assert_eq!(error_lines(&valid(&format!("carried-{i}")).file("30-x.yaml", text)), [*expected]);
    }
    // A key pasted one level too deep, under a key with a value; user:group; a fraction of
    // a size; a directory for the app.
    let cases = [
        (
            pool("    user: nobody\n      processes: 4\n"),
            "5:7: `processes` is indented more than `user` above it, which already has a value: line it up with \
             `user` (the rest of this file is not checked until this is fixed)",
        ),
        (
            "pools:\n  x:\n    app: ../app/app.py\n    user: \"root:root\"\n".into(),
            "4:5: pools.x.user: no such user \"root:root\" on this system; write the group apart: `user: root` and \
             `group: root`",
        ),
        (
            pool("    memory-limit: 1.5G\n"),
            "4:19: pools.x.memory-limit: invalid size \"1.5G\": no fractions; write \"1536M\"",
        ),
        (
            "pools:\n  x:\n    app: ../app/\n".into(),
            "3:5: pools.x.app: ROOT/app is a directory; name the app file in it, e.g. ROOT/app/app.py",
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        assert_eq!(error_lines(&valid(&format!("carried-more-{i}")).file("30-x.yaml", text)), [*expected]);
    }
    // A template's placeholder in uWSGI's or nginx's syntax.
    let template = |app: &str| format!("pools:\n  x:\n    template:\n    app: {app}\n");
    for (app, expected) in [
        ("/srv/%(host)s/app.py", "4:5: pools.x.app: \"/srv/%(host)s/app.py\": uWSGI's %(host)s is written {host} here"),
        ("/srv/$host/app.py", "4:5: pools.x.app: \"/srv/$host/app.py\": nginx's $host is written {host} here"),
    ] {
        assert_eq!(error_lines(&valid("carried-template").file("30-x.yaml", &template(app))), [expected]);
    }
    // Addresses as PHP-FPM, gunicorn or a URL write them.
    let listen = |address: &str| format!("listeners:\n  l:\n    fastcgi: \"{address}\"\n    pool: demo\n");
    for (address, what) in [
        ("9000", "a port alone; write \"127.0.0.1:9000\" (this host only) or \"*:9000\" (every address)"),
        ("10.0.0.5", "no port; write e.g. \"10.0.0.5:9000\""),
        ("tcp://127.0.0.1:9000", "no scheme; write \"127.0.0.1:9000\""),
        ("127.0.0.1:90000", "port 90000 is above 65535"),
        ("app.internal:9000", "\"app.internal\" is a host name; write its IP address"),
    ] {
        let lines = error_lines(&valid("carried-address").file("30-x.yaml", &listen(address)));
        let head = format!("3:5: listeners.l.fastcgi: {address:?} is not an address: {what}");
        assert!(lines.len() == 1 && lines[0].starts_with(&head), "{lines:?}");
    }
}
