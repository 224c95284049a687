//! The cloud's limits on request fields, defined once: the server's
//! validation (`state/validate.rs`, `api/request.rs`), the OpenAPI document
//! (`openapi.rs`, the schemas in `model.rs`) and the provider's annotation
//! parsing all read them from here, and a test checks the document against
//! the validation at each bound.

/// An inclusive range of integers a field takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub min: u32,
    pub max: u32,
}

impl Bounds {
    pub const fn contains(self, value: u32) -> bool {
        value >= self.min && value <= self.max
    }
}

/// Characters of a name (balancer, group, ACL); it must not be blank.
pub const NAME_MAX_CHARS: usize = 80;
/// Characters of a description (listener, server, ACL entry).
pub const DESCRIPTION_MAX_CHARS: usize = 256;
/// Tags on one object.
pub const MAX_TAGS: usize = 20;
/// Characters of a tag key (at least one).
pub const TAG_KEY_MAX_CHARS: usize = 128;
/// Characters of a tag value.
pub const TAG_VALUE_MAX_CHARS: usize = 256;

/// A port (listener, backend server, health check).
pub const PORT: Bounds = Bounds {
    min: 1,
    max: u16::MAX as u32,
};
/// A backend server's weight; 0 takes no new traffic (the server drains).
pub const WEIGHT: Bounds = Bounds { min: 0, max: 100 };
/// Client-IP stickiness, in seconds.
pub const STICKY_SECONDS: Bounds = Bounds {
    min: 1,
    max: 86_400,
};

/// Seconds between two health checks of a backend.
pub const HEALTH_INTERVAL_SECONDS: Bounds = Bounds { min: 1, max: 50 };
/// Seconds one health check may take.
pub const HEALTH_TIMEOUT_SECONDS: Bounds = Bounds { min: 1, max: 300 };
/// Checks in a row that turn a backend healthy, or unhealthy.
pub const HEALTH_THRESHOLD: Bounds = Bounds { min: 2, max: 10 };
/// Characters of an http health check's path.
pub const HEALTH_PATH_MAX_CHARS: usize = 200;

/// Characters of an `x-client-token`, each visible ASCII (`!`..=`~`).
pub const CLIENT_TOKEN_MAX_CHARS: usize = 64;

/// Whether `path` is an http health check path: `/` and then visible
/// ASCII (`!`..=`~`, so no space), at most [`HEALTH_PATH_MAX_CHARS`] in
/// all. The document's pattern is [`HEALTH_PATH_PATTERN`].
pub fn is_health_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() <= HEALTH_PATH_MAX_CHARS
        && path.bytes().all(|b| (b'!'..=b'~').contains(&b))
}

/// [`is_health_path`] as a JSON Schema pattern (with `maxLength`).
pub const HEALTH_PATH_PATTERN: &str = "^/[!-~]*$";

/// Whether a name is blank: nothing but whitespace, as the document's
/// pattern ([`NAME_PATTERN`]) sees it: Rust's whitespace and the
/// separators U+001C..=U+001F, which the `\s` of Python's `re` (what
/// schemathesis checks with) counts as space too.
pub fn is_blank(name: &str) -> bool {
    name.chars()
        .all(|c| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// A name that is not blank: at least one character `\s` does not match.
pub const NAME_PATTERN: &str = r"\S";

/// Whether `token` is an `x-client-token`: 1..=[`CLIENT_TOKEN_MAX_CHARS`]
/// visible ASCII characters. The document's pattern is
/// [`CLIENT_TOKEN_PATTERN`].
pub fn is_client_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= CLIENT_TOKEN_MAX_CHARS
        && token.bytes().all(|b| (b'!'..=b'~').contains(&b))
}

/// [`is_client_token`] as a JSON Schema pattern (with the lengths).
pub const CLIENT_TOKEN_PATTERN: &str = "^[!-~]+$";

/// One hex group of an IPv6 address.
const H: &str = "[0-9a-fA-F]{1,4}";
/// An IPv4 address's octet, without leading zeros (which Rust refuses).
const OCTET: &str = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";

/// A CIDR the server takes, IPv4 (`10.0.0.0/8`) or IPv6 (`fd00::/8`,
/// every `::` shortening; not the forms with an embedded IPv4 address,
/// which the server also takes: the document is narrower there, so still
/// true). Checked against the server's parser in `openapi.rs`'s tests.
pub fn cidr_pattern() -> String {
    let v4 = format!("({OCTET}\\.){{3}}{OCTET}/(3[0-2]|[12]?[0-9])");
    let v6_forms = [
        format!("({H}:){{7}}{H}"),
        format!("({H}:){{1,7}}:"),
        format!("({H}:){{1,6}}:{H}"),
        format!("({H}:){{1,5}}(:{H}){{1,2}}"),
        format!("({H}:){{1,4}}(:{H}){{1,3}}"),
        format!("({H}:){{1,3}}(:{H}){{1,4}}"),
        format!("({H}:){{1,2}}(:{H}){{1,5}}"),
        format!("{H}:(:{H}){{1,6}}"),
        format!(":((:{H}){{1,7}}|:)"),
    ];
    let v6 = format!("({})/(12[0-8]|1[01][0-9]|[1-9]?[0-9])", v6_forms.join("|"));
    format!("^({v4}|{v6})$")
}
