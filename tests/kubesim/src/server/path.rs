//! Request paths → what they address, like kube-apiserver's RequestInfoFactory.

use std::collections::HashMap;

/// What a request URL addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestInfo {
    /// True for `/api/...` and `/apis/...` resource requests.
    pub is_resource: bool,
    /// API group ("" for core).
    pub group: String,
    /// Version.
    pub version: String,
    /// Namespace, if the URL names one.
    pub namespace: String,
    /// Resource (plural).
    pub resource: String,
    /// Object name.
    pub name: String,
    /// Subresource.
    pub subresource: String,
    /// The RBAC verb.
    pub verb: String,
    /// Path segments after `/api` or `/apis` (for discovery and aggregation).
    pub segments: Vec<String>,
}

/// Decoded query parameters.
pub fn query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Percent-decoding (`+` as space, as in forms).
pub fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `path` with `method` and whether the query asks to watch.
pub fn parse(method: &http::Method, path: &str, watch_param: bool) -> RequestInfo {
    let parts: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(decode)
        .collect();
    let mut info = RequestInfo {
        segments: parts.clone(),
        ..RequestInfo::default()
    };
    let rest: &[String] = match parts.first().map(String::as_str) {
        Some("api") if parts.len() >= 2 => {
            info.version = parts[1].clone();
            &parts[2..]
        }
        Some("apis") if parts.len() >= 3 => {
            info.group = parts[1].clone();
            info.version = parts[2].clone();
            &parts[3..]
        }
        _ => return info,
    };
    let mut rest = rest.to_vec();
    let mut watch = watch_param;
    if rest.first().map(String::as_str) == Some("watch") {
        watch = true;
        rest.remove(0);
    }
    if rest.is_empty() {
        return info; // group-version discovery
    }
    info.is_resource = true;
    // `namespaces/{ns}/{resource}…` scopes a resource; `namespaces/{name}[/status|/finalize]`
    // is the namespace object itself.
    if rest[0] == "namespaces" && rest.len() >= 3 && !matches!(rest[2].as_str(), "status" | "finalize") {
        info.namespace = rest[1].clone();
        rest.drain(..2);
    }
    info.resource = rest[0].clone();
    if let Some(name) = rest.get(1) {
        info.name = name.clone();
    }
    if rest.len() > 2 {
        info.subresource = rest[2..].join("/");
    }
    if info.resource == "namespaces" && rest.len() >= 2 {
        info.namespace = info.name.clone();
    }
    info.verb = match *method {
        http::Method::GET | http::Method::HEAD if watch => "watch",
        http::Method::GET | http::Method::HEAD if info.name.is_empty() => "list",
        http::Method::GET | http::Method::HEAD => "get",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE if info.name.is_empty() => "deletecollection",
        http::Method::DELETE => "delete",
        _ => "",
    }
    .to_owned();
    info
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn parses_like_kube_apiserver() {
        let i = parse(&Method::GET, "/api/v1/namespaces/default/pods/p1/log", false);
        assert_eq!(
            (
                i.group.as_str(),
                i.namespace.as_str(),
                i.resource.as_str(),
                i.name.as_str(),
                i.subresource.as_str(),
                i.verb.as_str()
            ),
            ("", "default", "pods", "p1", "log", "get")
        );
        let i = parse(&Method::GET, "/apis/apps/v1/deployments", true);
        assert_eq!(
            (i.group.as_str(), i.resource.as_str(), i.verb.as_str()),
            ("apps", "deployments", "watch")
        );
        let i = parse(&Method::GET, "/api/v1/namespaces/shop", false);
        assert_eq!(
            (
                i.resource.as_str(),
                i.name.as_str(),
                i.namespace.as_str(),
                i.verb.as_str()
            ),
            ("namespaces", "shop", "shop", "get")
        );
        let i = parse(&Method::DELETE, "/apis/api.shunt.dev/v1/namespaces/a/sessions", false);
        assert_eq!((i.resource.as_str(), i.verb.as_str()), ("sessions", "deletecollection"));
        let i = parse(&Method::GET, "/api/v1/watch/namespaces/a/pods", false);
        assert_eq!(i.verb, "watch");
        assert!(!parse(&Method::GET, "/apis/apps/v1", false).is_resource);
        assert_eq!(decode("a%3Db+c"), "a=b c");
    }
}
