//! Service-account tokens: issued through the TokenRequest subresource (with audiences,
//! an expiry and an optional bound pod) and answered by TokenReview. Tokens have the shape
//! of kube-apiserver's (a JWT whose claims say who, for whom and until when, so clients
//! that read `exp` to plan a renewal or a re-review work as on a cluster); the signature
//! is random and nothing here verifies it: a token is valid because it is kept in memory,
//! and what matters to clients is the review's answer.
//!
//! A token stays known after it expires or its pod is deleted, so a review can say
//! *why* it no longer authenticates, with kube-apiserver's words.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use base64::Engine;
use rand::Rng;
use serde_json::json;

/// What a token stands for.
#[derive(Clone, Debug)]
pub struct TokenInfo {
    /// Namespace of the service account.
    pub namespace: String,
    /// Service account name.
    pub service_account: String,
    /// Service account UID.
    pub sa_uid: String,
    /// Audiences the token is valid for (empty: the API server's own).
    pub audiences: Vec<String>,
    /// Expiry.
    pub expires: SystemTime,
    /// Bound pod (name, uid), if any.
    pub pod: Option<(String, String)>,
}

/// Why a token does not authenticate (messages as kube-apiserver's token authenticator).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Never issued here (or garbage).
    #[error("invalid bearer token")]
    Unknown,
    /// Past its `expirationTimestamp`.
    #[error("service account token has expired")]
    Expired,
    /// Bound to a pod that has been deleted.
    #[error("service account token has been invalidated")]
    Invalidated,
    /// Its service account was deleted.
    #[error("serviceaccounts {0:?} not found")]
    ServiceAccountGone(String),
    /// Its service account was deleted and created again.
    #[error("service account UID ({now}) does not match claim ({claim})")]
    ServiceAccountReplaced {
        /// The UID the service account has now.
        now: String,
        /// The UID the token was issued for.
        claim: String,
    },
    /// Issued for other audiences than the ones asked for.
    #[error("token audiences {token} is invalid for the target audiences {target}")]
    Audience {
        /// The token's audiences, Go `%q` style (`["a" "b"]`).
        token: String,
        /// The audiences asked for.
        target: String,
    },
}

#[derive(Debug)]
struct Entry {
    info: TokenInfo,
    revoked: bool,
}

/// The issued tokens.
#[derive(Default)]
pub struct Tokens {
    tokens: Mutex<HashMap<String, Entry>>,
}

/// How long a dead token is remembered (to explain why it fails) before it is forgotten.
const REMEMBER_DEAD: Duration = Duration::from_secs(3600);

impl Tokens {
    /// Issues a token valid for `lifetime`.
    pub fn issue(&self, mut info: TokenInfo, lifetime: Duration) -> (String, SystemTime) {
        let now = SystemTime::now();
        info.expires = now + lifetime;
        let token = jwt(&info, now);
        let expires = info.expires;
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        // Forget tokens long dead, so a long-running cluster does not grow without bound.
        tokens.retain(|_, e| e.info.expires + REMEMBER_DEAD > now);
        tokens.insert(token.clone(), Entry { info, revoked: false });
        (token, expires)
    }

    /// The token's facts if it exists, has not expired and its pod still exists.
    pub fn lookup(&self, token: &str) -> Option<TokenInfo> {
        self.check(token).ok()
    }

    /// The token's facts, or why it does not authenticate.
    pub fn check(&self, token: &str) -> Result<TokenInfo, TokenError> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let entry = tokens.get(token).ok_or(TokenError::Unknown)?;
        if entry.info.expires <= SystemTime::now() {
            return Err(TokenError::Expired);
        }
        if entry.revoked {
            return Err(TokenError::Invalidated);
        }
        Ok(entry.info.clone())
    }

    /// Invalidates every token bound to pod `uid` (the pod was deleted).
    pub fn revoke_pod(&self, uid: &str) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        for entry in tokens.values_mut() {
            if entry.info.pod.as_ref().is_some_and(|(_, u)| u == uid) {
                entry.revoked = true;
            }
        }
    }
}

/// A token shaped like kube-apiserver's: `header.claims.signature`, base64url without
/// padding, with the claims of a projected service-account token and a random signature.
fn jwt(info: &TokenInfo, issued: SystemTime) -> String {
    let seconds = |t: SystemTime| t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut kubernetes = json!({
        "namespace": info.namespace,
        "serviceaccount": {"name": info.service_account, "uid": info.sa_uid},
    });
    if let Some((name, uid)) = &info.pod {
        kubernetes["pod"] = json!({"name": name, "uid": uid});
    }
    let claims = json!({
        "aud": info.audiences,
        "exp": seconds(info.expires),
        "iat": seconds(issued),
        "nbf": seconds(issued),
        "iss": crate::server::API_AUDIENCE,
        "sub": format!("system:serviceaccount:{}:{}", info.namespace, info.service_account),
        "kubernetes.io": kubernetes,
    });
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let signature: [u8; 32] = rand::rng().random();
    format!(
        "{}.{}.{}",
        b64(br#"{"alg":"RS256","kid":"kubesim"}"#),
        b64(claims.to_string().as_bytes()),
        b64(&signature)
    )
}

/// `["a" "b"]`: a string list the way Go's `%q` prints it (kube-apiserver's messages).
pub fn go_quoted(list: &[String]) -> String {
    let quoted: Vec<String> = list.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(" "))
}

/// Checks that a token for `token_auds` (empty: the API server's) is good for one of
/// `wanted`; returns the audiences both share.
pub fn audiences_match(
    token_auds: &[String],
    wanted: &[String],
    api_audience: &str,
) -> Result<Vec<String>, TokenError> {
    let token_auds: Vec<String> = if token_auds.is_empty() {
        vec![api_audience.to_owned()]
    } else {
        token_auds.to_vec()
    };
    let shared: Vec<String> = wanted.iter().filter(|w| token_auds.contains(w)).cloned().collect();
    if shared.is_empty() {
        return Err(TokenError::Audience {
            token: go_quoted(&token_auds),
            target: go_quoted(wanted),
        });
    }
    Ok(shared)
}

/// The user a service-account token authenticates as.
pub fn user_of(info: &TokenInfo) -> crate::api::User {
    let mut extra = std::collections::BTreeMap::new();
    if let Some((pod, uid)) = &info.pod {
        extra.insert("authentication.kubernetes.io/pod-name".to_owned(), vec![pod.clone()]);
        extra.insert("authentication.kubernetes.io/pod-uid".to_owned(), vec![uid.clone()]);
    }
    crate::api::User {
        name: format!("system:serviceaccount:{}:{}", info.namespace, info.service_account),
        groups: vec![
            "system:serviceaccounts".to_owned(),
            format!("system:serviceaccounts:{}", info.namespace),
            "system:authenticated".to_owned(),
        ],
        uid: info.sa_uid.clone(),
        extra,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn info(pod: Option<(&str, &str)>) -> TokenInfo {
        TokenInfo {
            namespace: "shop".into(),
            service_account: "web".into(),
            sa_uid: "sa-uid".into(),
            audiences: vec!["shunt.dev/sidecar".into()],
            expires: SystemTime::now(),
            pod: pod.map(|(n, u)| (n.into(), u.into())),
        }
    }

    #[test]
    fn tokens_die_for_the_right_reason() {
        let tokens = Tokens::default();
        let (live, _) = tokens.issue(info(Some(("p", "pod-uid"))), Duration::from_secs(600));
        let (expired, _) = tokens.issue(info(None), Duration::ZERO);
        assert_eq!(tokens.check(&live).unwrap().service_account, "web");
        let claims = live.split('.').nth(1).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
        let exp = claims["exp"].as_u64().unwrap();
        let in_ten_minutes = SystemTime::now() + Duration::from_secs(600);
        let expected = in_ten_minutes.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert!(exp.abs_diff(expected) <= 2, "exp {exp}, expected about {expected}");
        assert_eq!(claims["kubernetes.io"]["pod"]["name"], "p");
        assert_eq!(tokens.check(&expired).unwrap_err(), TokenError::Expired);
        assert_eq!(tokens.check("nope").unwrap_err(), TokenError::Unknown);
        tokens.revoke_pod("pod-uid");
        assert_eq!(tokens.check(&live).unwrap_err(), TokenError::Invalidated);
        assert!(tokens.lookup(&live).is_none());
    }

    #[test]
    fn audiences_are_checked_like_kube_apiserver() {
        let api = "https://kubernetes.default.svc.cluster.local";
        let wanted = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(
            audiences_match(&["b".into()], &wanted, api).unwrap(),
            vec!["b".to_owned()]
        );
        let err = audiences_match(&["c".into()], &wanted, api).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"token audiences ["c"] is invalid for the target audiences ["a" "b"]"#
        );
        assert!(audiences_match(&[], &[api.to_owned()], api).is_ok());
    }
}
