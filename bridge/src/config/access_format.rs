//! `access-log-format:`: the access log line as a template of `$variables`, as nginx's
//! log_format writes it. Unknown variables are configuration errors; literal text is kept
//! (logging/access_format.rs writes the lines).

/// The variables a template may use, in the order the docs list them.
pub const VARIABLES: &[&str] = &[
    "remote_addr",
    "method",
    "uri",
    "status",
    "bytes",
    "duration",
    "duration_ms",
    "queue_ms",
    "app_ms",
    "pool",
    "pid",
    "request_id",
    "web_request_id",
    "time",
];

/// Literal text, or the index of a variable in [`VARIABLES`].
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    Var(usize),
}

/// A compiled template.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessFormat {
    pieces: Vec<Piece>,
    needs: Needs,
}

/// What the access line needs of each request beyond what every request has, so that a
/// request does no work for variables nobody logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// `$queue_ms`, `$app_ms`: clock reads around the wait for a worker and the exchange.
    pub times: bool,
    /// `$web_request_id`: a look through the request's params.
    pub web_request_id: bool,
}

impl Needs {
    /// Every field (the main log's access events carry them all).
    pub const ALL: Self = Self { times: true, web_request_id: true };
}

/// Check a template (for config validation); the message names the unknown variable.
pub fn check(template: &str) -> Result<(), String> {
    AccessFormat::parse(template).map(|_| ())
}

impl AccessFormat {
    /// Compile `template`: `$name` or `${name}`; `$$` is a literal dollar.
    pub fn parse(template: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = template;
        while let Some(i) = rest.find('$') {
            text.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            if let Some(r) = rest.strip_prefix('$') {
                text.push('$');
                rest = r;
                continue;
            }
            let (name, after) = if let Some(r) = rest.strip_prefix('{') {
                let end = r.find('}').ok_or_else(|| format!("unclosed ${{ in {template:?}"))?;
                (&r[..end], &r[end + 1..])
            } else {
                let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            };
            let index = VARIABLES
                .iter()
                .position(|v| *v == name)
                .ok_or_else(|| format!("unknown variable ${name}; the access log knows ${}", VARIABLES.join(" $")))?;
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(Piece::Var(index));
            rest = after;
        }
        text.push_str(rest);
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        let uses = |names: &[&str]| pieces.iter().any(|p| matches!(p, Piece::Var(i) if names.contains(&VARIABLES[*i])));
        let needs = Needs { times: uses(&["queue_ms", "app_ms"]), web_request_id: uses(&["web_request_id"]) };
        Ok(Self { pieces, needs })
    }

    /// The template's pieces in order.
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// What its lines need of each request.
    pub fn needs(&self) -> Needs {
        self.needs
    }
}
