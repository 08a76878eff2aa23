//! Whom the dashboard answers: its own page, opened from the address it printed, and nothing
//! else. Listening on 127.0.0.1 is not enough: any web page the user visits can make the
//! browser send requests there, a page whose name an attacker rebinds to 127.0.0.1 (DNS
//! rebinding) can even read the answers, and other users of the machine can connect too. The
//! answers carry jobs, events and worker logs read with the user's credentials, so:
//!
//! - the Host header must be `127.0.0.1:PORT` or `localhost:PORT`, PORT the one bound: a
//!   rebound name arrives with its own name in Host;
//! - every request carries the run's token: `?token=` (the printed address) or the cookie the
//!   page gets when it loads from that address (HttpOnly: no script reads it; SameSite=Strict:
//!   no other site's page makes the browser send it).

use std::{fmt, io::Read};

use hyper::{Request, header};

/// Bytes of randomness in a token (hex in the address: twice as many characters).
const TOKEN_BYTES: usize = 32;

/// The checks of one dashboard run: its port and token.
pub struct Guard {
    port: u16,
    token: String,
}

/// How a request showed the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// The cookie: the page's own requests.
    Cookie,
    /// `?token=` in the address: the answer sets the cookie, so the page's requests carry it.
    Query,
}

/// Why a request is refused; the text is the answer's body, for the user who sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Host missing or naming something else: another site's page (DNS rebinding).
    Host { host: Option<String>, port: u16 },
    /// No token, or not this run's.
    Token { port: u16 },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Host { host: None, port } => write!(
                f,
                "refused: no Host header. The dashboard answers only http://127.0.0.1:{port}/ and http://localhost:{port}/."
            ),
            Refusal::Host { host: Some(host), port } => write!(
                f,
                "refused: Host {host:?}. The dashboard answers only http://127.0.0.1:{port}/ and \
                 http://localhost:{port}/, so that no other site's page can read it."
            ),
            Refusal::Token { port } => write!(
                f,
                "refused: this request carries no token, or not the one of this dashboard run. Open the \
                 address `kubectl nightshift dashboard` printed (http://127.0.0.1:{port}/?token=...); after \
                 a restart it prints a new one."
            ),
        }
    }
}

impl Guard {
    /// A guard for `port` with a fresh random token.
    pub fn new(port: u16) -> std::io::Result<Self> {
        let mut bytes = [0u8; TOKEN_BYTES];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        let token = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self::with_token(port, token))
    }

    pub fn with_token(port: u16, token: String) -> Self {
        Self { port, token }
    }

    /// The address to print for the user: the only place the token is shown.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/?token={}", self.port, self.token)
    }

    /// The cookie's name carries the port: cookies are shared by every port of a host, and two
    /// dashboards (two namespaces, say) must not overwrite each other's.
    fn cookie_name(&self) -> String {
        format!("nightshift-dashboard-{}", self.port)
    }

    /// The Set-Cookie value for an answer to a request that brought the token in its address.
    /// A session cookie: it goes when the browser closes, and the token dies with the run anyway.
    pub fn set_cookie(&self) -> String {
        format!("{}={}; Path=/; HttpOnly; SameSite=Strict", self.cookie_name(), self.token)
    }

    /// Whether the dashboard answers `request`: the Host first (a foreign page learns nothing,
    /// not even whether it guessed the token), then the token.
    pub fn check<B>(&self, request: &Request<B>) -> Result<Pass, Refusal> {
        let host = request.headers().get(header::HOST).map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned());
        // A request in absolute form (`GET http://name/ HTTP/1.1`) names its host in the URI too.
        let authority = request.uri().authority().map(|a| a.as_str());
        let allowed = |host: &str| host_allowed(host, self.port);
        if !host.as_deref().is_some_and(allowed) || !authority.is_none_or(allowed) {
            return Err(Refusal::Host { host: host.or(authority.map(String::from)), port: self.port });
        }
        let name = self.cookie_name();
        let cookies = request.headers().get_all(header::COOKIE).iter().filter_map(|h| h.to_str().ok());
        if cookies.flat_map(|h| cookie_values(h, &name)).any(|value| same(value, &self.token)) {
            return Ok(Pass::Cookie);
        }
        if request.uri().query().and_then(query_token).is_some_and(|value| same(value, &self.token)) {
            return Ok(Pass::Query);
        }
        Err(Refusal::Token { port: self.port })
    }
}

/// `127.0.0.1:PORT` or `localhost:PORT` (host names are case-insensitive), the port required:
/// a browser sends it for any port but 80, and the dashboard never has 80.
fn host_allowed(host: &str, port: u16) -> bool {
    let Some((name, given)) = host.rsplit_once(':') else { return false };
    given == port.to_string() && (name == "127.0.0.1" || name.eq_ignore_ascii_case("localhost"))
}

/// The value of `token=` in a query string (the token is hex: nothing to decode).
fn query_token(query: &str) -> Option<&str> {
    query.split('&').find_map(|pair| pair.strip_prefix("token="))
}

/// The values of the cookie `name` in a Cookie header (`a=1; b=2`).
fn cookie_values<'a>(header: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    header.split(';').filter_map(move |pair| pair.trim().strip_prefix(name)?.strip_prefix('='))
}

/// Equal strings, compared in a time that does not depend on where they differ: a token must
/// not be guessable a character at a time from how fast refusals come.
fn same(given: &str, token: &str) -> bool {
    given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123abcd";

    fn guard() -> Guard {
        Guard::with_token(43117, TOKEN.into())
    }

    fn request(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn only_the_loopback_names_with_the_bound_port_pass() {
        for host in ["127.0.0.1:43117", "localhost:43117", "LocalHost:43117"] {
            assert!(host_allowed(host, 43117), "{host}");
        }
        for host in [
            "evil.example:43117",
            "127.0.0.1",
            "localhost",
            "127.0.0.1:8080",
            "127.0.0.1:431170",
            "127.0.0.2:43117",
            "localhost.evil.example:43117",
            "[::1]:43117",
            "",
        ] {
            assert!(!host_allowed(host, 43117), "{host}");
        }
    }

    #[test]
    fn a_foreign_or_missing_host_is_refused_even_with_the_token() {
        let with_token = format!("/?token={TOKEN}");
        let foreign = request(&with_token, &[("host", "evil.example:43117")]);
        let refusal = guard().check(&foreign).unwrap_err();
        assert_eq!(refusal, Refusal::Host { host: Some("evil.example:43117".into()), port: 43117 });
        assert!(refusal.to_string().contains("http://127.0.0.1:43117/"), "{refusal}");
        assert!(matches!(guard().check(&request(&with_token, &[])), Err(Refusal::Host { host: None, .. })));
        // An absolute-form request naming another host, whatever its Host header says.
        let absolute = request(&format!("http://evil.example:43117{with_token}"), &[("host", "127.0.0.1:43117")]);
        assert!(matches!(guard().check(&absolute), Err(Refusal::Host { .. })));
    }

    #[test]
    fn the_token_comes_in_the_address_or_in_the_cookie() {
        let host = ("host", "127.0.0.1:43117");
        assert_eq!(guard().check(&request(&format!("/?token={TOKEN}"), &[host])), Ok(Pass::Query));
        assert_eq!(guard().check(&request(&format!("/api/jobs?x=1&token={TOKEN}"), &[host])), Ok(Pass::Query));
        let cookie = format!("other=1; nightshift-dashboard-43117={TOKEN}");
        assert_eq!(guard().check(&request("/events", &[host, ("cookie", &cookie)])), Ok(Pass::Cookie));
    }

    #[test]
    fn a_missing_or_wrong_token_is_refused_with_where_to_go() {
        let host = ("host", "localhost:43117");
        let refused = [
            request("/", &[host]),
            request("/api/jobs", &[host]),
            request("/?token=", &[host]),
            request("/?token=0123abce", &[host]),
            request(&format!("/?token={TOKEN}0"), &[host]),
            request(&format!("/?xtoken={TOKEN}"), &[host]),
            // Another dashboard's cookie (another port), or ours with another value.
            request("/", &[host, ("cookie", &format!("nightshift-dashboard-8080={TOKEN}"))]),
            request("/", &[host, ("cookie", "nightshift-dashboard-43117=0123abce")]),
        ];
        for request in refused {
            let refusal = guard().check(&request).unwrap_err();
            assert_eq!(refusal, Refusal::Token { port: 43117 }, "{}", request.uri());
            assert!(refusal.to_string().contains("Open the address"), "{refusal}");
            assert!(!refusal.to_string().contains(TOKEN), "the refusal never shows the token: {refusal}");
        }
    }

    #[test]
    fn tokens_are_random_and_the_cookie_is_strict() {
        let (a, b) = (Guard::new(1).unwrap(), Guard::new(1).unwrap());
        assert_eq!(a.token.len(), 2 * TOKEN_BYTES);
        assert!(a.token.bytes().all(|c| c.is_ascii_hexdigit()), "{}", a.token);
        assert_ne!(a.token, b.token);
        assert_eq!(a.url(), format!("http://127.0.0.1:1/?token={}", a.token));
        assert_eq!(
            guard().set_cookie(),
            format!("nightshift-dashboard-43117={TOKEN}; Path=/; HttpOnly; SameSite=Strict")
        );
    }

    #[test]
    fn comparison_needs_every_byte() {
        assert!(same("abc", "abc"));
        assert!(!same("abd", "abc"));
        assert!(!same("ab", "abc"));
        assert!(!same("", "abc"));
    }
}
