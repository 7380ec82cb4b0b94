//! The hub protocol between sidecars and the operator.
//!
//! The sidecar dials the operator's hub endpoint over TLS and speaks HTTP/2 as the
//! **client** (the side that sends requests is the client, whoever dialled):
//!
//! 1. `GET` [`ROUTES_PATH`] with `authorization: Bearer <projected token>` (audience
//!    [`crate::names::SIDECAR_TOKEN_AUDIENCE`]) and [`HEADER_POD`] `namespace/name`.
//!    The operator checks the token with a TokenReview, that the token is bound to that
//!    pod, and that the pod is live and labelled `shunt.dev/injected=true`; anything else
//!    gets 401/403 with a Status-like JSON body. The answer (200,
//!    `application/x-ndjson`) never ends while the sidecar is wanted: each line is a full
//!    routes document ([`crate::route::RouteSet::from_json`] form) replacing the previous
//!    one, like a Kubernetes watch; a line `{"routes": []}` makes the sidecar dormant.
//!    Routes of sessions have `upstream: "hub"`.
//! 2. Each request a `hub` route steals or mirrors is sent as its own HTTP/2 request on
//!    the same connection: the original method, path, query, headers, body and trailers,
//!    plus [`crate::names::HOP_HEADER_SESSION`] (the route id = session name) and
//!    [`crate::names::HOP_HEADER_POD`]. The operator relays it to the session's CLI and
//!    streams the answer back. If the session has no CLI connected, the operator answers
//!    503 with [`HEADER_UNAVAILABLE`] *before reading the body*, and the sidecar serves
//!    the request from the app if it still has the body (fail-open).
//!
//! 3. Outbound (`shunt exec`): while a line of the routes stream says `"outbound": true`,
//!    the sidecar keeps a **second** TLS connection to the hub up (ALPN `http/1.1`): it
//!    sends `GET` [`REVERSE_PATH`] with `Connection: Upgrade`, `Upgrade:`
//!    [`REVERSE_UPGRADE`] and the same token and [`HEADER_POD`] as the routes watch; the
//!    operator authenticates it exactly like the watch and answers 101. From then on the
//!    sidecar is the HTTP/2 **server** on that connection and the operator the client:
//!    - `CONNECT host:port` → 200 and a byte stream the sidecar dialled in the pod's
//!      network; 502 with a JSON `{"message"}` saying why the pod could not connect;
//!      503 when the sidecar is at its limit of open connections;
//!    - `GET` [`DNS_PATH`]`?name=<percent-encoded name>` → 200
//!      `{"addresses": ["10.96.0.12"]}` from the pod's resolver, 404 `{"message"}` when
//!      the name does not resolve.
//!
//!    When the flag goes back to `false` the sidecar closes the reverse connection.
//!
//! The HTTP/2 connection's own keep-alive PINGs detect a dead peer; the sidecar redials
//! with back-off and keeps its routes only until their lease runs out (a sidecar cut off
//! from the operator drifts back to dormant by itself).

/// Path of the route watch.
pub const ROUTES_PATH: &str = "/hub/v1/routes";
/// Request header naming the sidecar's pod as `namespace/name`.
pub const HEADER_POD: &str = "shunt-pod";
/// Response header on a 503 that means "nobody takes this session's requests now; the
/// body was not read: serve it from the app".
pub const HEADER_UNAVAILABLE: &str = "shunt-unavailable";
/// Version of this protocol, sent by both sides as [`HEADER_PROTOCOL`].
pub const PROTOCOL_VERSION: &str = "1";
/// Header carrying [`PROTOCOL_VERSION`].
pub const HEADER_PROTOCOL: &str = "shunt-protocol";
/// Default port of the operator's hub endpoint.
pub const DEFAULT_HUB_PORT: u16 = 15443;
/// Path of the reverse connection's upgrade request (see the module docs, step 3).
pub const REVERSE_PATH: &str = "/hub/v1/reverse";
/// The `Upgrade` protocol token of the reverse connection.
pub const REVERSE_UPGRADE: &str = "shunt-reverse";
/// Path of DNS questions on the reverse connection and on the CLI's outbound tunnel.
pub const DNS_PATH: &str = "/dns";

/// Percent-encodes `value` for a query string (everything but unreserved characters).
pub fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The decoded value of query parameter `key` (`+` is a space), if present and valid UTF-8.
pub fn query_value(query: &str, key: &str) -> Option<String> {
    let raw = query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))?;
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_round_trip() {
        for name in ["reviews", "reviews.shop.svc.cluster.local", "a b&c=d%", "ünï"] {
            let query = format!("x=1&name={}", encode_query_value(name));
            assert_eq!(query_value(&query, "name").as_deref(), Some(name), "{query}");
        }
        assert_eq!(query_value("name=a+b", "name").as_deref(), Some("a b"));
        assert_eq!(query_value("names=a", "name"), None);
        assert_eq!(query_value("name=%zz", "name"), None);
        assert_eq!(query_value("name=%4", "name"), None);
    }
}
