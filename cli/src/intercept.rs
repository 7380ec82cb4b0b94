//! `shunt intercept` and `shunt mirror`: create the session, keep its inbound tunnel open
//! (reconnecting with back-off, the session survives), show a live status line, and end
//! the session on Ctrl-C.

use std::io::IsTerminal as _;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kube::api::{DeleteParams, DynamicObject, PostParams};
use rand::Rng as _;
use serde_json::{json, Value};
use shunt_proto::names::DEFAULT_IDENTITY_HEADER;
use shunt_proto::session::{SessionPort, SessionSpec};
use shunt_proto::{Filter, Mode};
use tokio::sync::watch;

use crate::args::SessionArgs;
use crate::cluster::{explain, Cluster};
use crate::forward::Forwarder;
use crate::{curl, tunnel};

/// Runs a session until Ctrl-C (or until it is ended elsewhere, which is an error).
pub async fn run(cluster: &Cluster, args: &SessionArgs, mode: Mode) -> anyhow::Result<()> {
    let ns = cluster.namespace.clone();
    let me = cluster.whoami().await;
    let filter_text = match args.header.as_deref() {
        Some("auto") => Some(format!(
            "{DEFAULT_IDENTITY_HEADER}: {}",
            me.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?
        )),
        other => other.map(str::to_owned),
    };
    let filter = filter_text
        .as_deref()
        .map(Filter::parse)
        .transpose()
        .with_context(|| format!("invalid --header {:?}", filter_text.as_deref().unwrap_or("")))?;
    let spec = SessionSpec {
        target: args.target.clone(),
        mode,
        filter,
        ports: args.ports.iter().map(|(port, _)| SessionPort { port: *port }).collect(),
    };
    let name = session_name(me.as_deref().unwrap_or("shunt"), &args.target.name);
    let api = cluster.sessions(Some(&ns));
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "api.shunt.dev/v1", "kind": "Session",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))?;
    api.create(&PostParams::default(), &object)
        .await
        .map_err(explain)
        .with_context(|| format!("cannot start a {mode} session on {} in namespace {ns}", args.target))?;

    let mapping: Vec<String> = args
        .ports
        .iter()
        .map(|(r, l)| format!("{r} → {}:{l}", args.local_host))
        .collect();
    let what = filter_text
        .as_deref()
        .map_or_else(|| "every request".to_owned(), |f| format!("requests matching `{f}`"));
    eprintln!(
        "session {ns}/{name}: {mode} {} ports {}, {what}",
        args.target,
        mapping.join(", ")
    );
    if let Some(example) = curl::example(cluster, &args.target, args.ports[0].0, filter_text.as_deref()).await {
        eprintln!("try (from inside the cluster): {example}");
    }
    eprintln!("Ctrl-C ends the session.");

    let forwarder = match mode {
        Mode::Mirror => Forwarder::for_mirror(&args.local_host, &args.ports),
        Mode::Steal => Forwarder::new(&args.local_host, &args.ports),
    };
    let (done_tx, mut done) = watch::channel(None::<String>);
    let connected = watch::channel(false);
    let status = tokio::spawn(status_line(
        cluster.clone(),
        name.clone(),
        forwarder.clone(),
        connected.1,
        done_tx.clone(),
    ));
    let tunnels = tokio::spawn(keep_tunnel(
        cluster.clone(),
        object.clone(),
        forwarder,
        connected.0,
        done_tx,
    ));
    let outcome = tokio::select! {
        _ = shutdown_signal() => None,
        _ = done.changed() => done.borrow().clone(),
    };
    status.abort();
    tunnels.abort();
    eprintln!();
    match outcome {
        Some(reason) => Err(anyhow::anyhow!("{reason}")),
        None => {
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => eprintln!("session {ns}/{name} ended"),
                Err(kube::Error::Api(s)) if s.code == 404 => eprintln!("session {ns}/{name} was already gone"),
                Err(e) => {
                    return Err(explain(e)).context(format!(
                        "cannot delete session {ns}/{name}: `shunt sessions kill {name}`"
                    ))
                }
            }
            Ok(())
        }
    }
}

/// `<user>-<target>-<5 random>`, a valid object name.
pub(crate) fn session_name(user: &str, target: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect()
    };
    let suffix: String = (0..5)
        .map(|_| char::from(b"bcdfghjklmnpqrstvwxz2456789"[rand::rng().random_range(0..27)]))
        .collect();
    let mut base = format!("{}-{}", clean(user), clean(target));
    base.truncate(56);
    format!("{}-{suffix}", base.trim_matches('-'))
}

pub(crate) async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

/// What a 404 for our own session means: the operator ended it on purpose (its message
/// says `ended`: deleted, grace period over, a policy) or it does not know the session,
/// as after an operator restart, which forgets every session.
pub(crate) fn ended_on_purpose(message: &str) -> bool {
    message.contains("ended")
}

/// Creates the session again after an operator restart lost it; `None` when it is back.
pub(crate) async fn recreate(cluster: &Cluster, object: &DynamicObject) -> Option<String> {
    let api = cluster.sessions(Some(&cluster.namespace));
    match api.create(&PostParams::default(), object).await {
        Ok(_) => None,
        Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists" => None,
        Err(e) => Some(format!(
            "the operator lost the session and it cannot be created again: {:#}",
            explain(e)
        )),
    }
}

/// Opens the tunnel and serves it; on loss, reconnects with back-off (0.2 s doubling to
/// 10 s). A session ended on purpose, or a tunnel that may not be opened, ends the CLI; a
/// session the operator lost (restart) is created again.
async fn keep_tunnel(
    cluster: Cluster,
    object: DynamicObject,
    forwarder: Forwarder,
    connected: watch::Sender<bool>,
    done: watch::Sender<Option<String>>,
) {
    let ns = cluster.namespace.clone();
    let name = object.metadata.name.clone().unwrap_or_default();
    let mut backoff = Duration::from_millis(200);
    loop {
        match tunnel::open(&cluster.client, &ns, &name).await {
            Ok(t) => {
                let since = Instant::now();
                connected.send_replace(true);
                let result = tunnel::serve(t, forwarder.clone()).await;
                connected.send_replace(false);
                let msg = match result {
                    Ok(()) => "the tunnel closed".to_owned(),
                    Err(e) => format!("the tunnel broke: {e}"),
                };
                *forwarder.stats.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg);
                if since.elapsed() > Duration::from_secs(10) {
                    backoff = Duration::from_millis(200);
                }
            }
            Err(kube::Error::Api(s)) if s.code == 404 && !ended_on_purpose(&s.message) => {
                *forwarder.stats.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some("the operator lost the session (restarted?); creating it again".to_owned());
                if let Some(why) = recreate(&cluster, &object).await {
                    done.send_replace(Some(format!("session {ns}/{name}: {why}")));
                    return;
                }
                continue;
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 403 => {
                let why = if s.code == 404 {
                    "the session was ended elsewhere (shunt sessions kill or kubectl delete)"
                } else {
                    "the tunnel was refused"
                };
                done.send_replace(Some(format!("session {ns}/{name}: {why}: {}", s.message)));
                return;
            }
            Err(e) => {
                *forwarder.stats.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("cannot open the tunnel: {e}"));
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Every second: the session's pods (from its status), requests routed, the last error.
async fn status_line(
    cluster: Cluster,
    name: String,
    forwarder: Forwarder,
    connected: watch::Receiver<bool>,
    done: watch::Sender<Option<String>>,
) {
    let tty = std::io::stderr().is_terminal();
    let ns = cluster.namespace.clone();
    let api = cluster.sessions(Some(&ns));
    let mut last = String::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let pods = match api.get(&name).await {
            Ok(obj) => pods_reached(obj.data.get("status")),
            // Not ended on purpose: the operator lost it; the tunnel task creates it again.
            Err(kube::Error::Api(s)) if s.code == 404 && !ended_on_purpose(&s.message) => "pods ?".to_owned(),
            Err(kube::Error::Api(s)) if s.code == 404 => {
                // The operator says why when a policy ended the session.
                let why = if s.message.contains("ended by policy") {
                    format!("was ended: {}", s.message)
                } else {
                    "was ended elsewhere (shunt sessions kill or kubectl delete)".to_owned()
                };
                done.send_replace(Some(format!("session {ns}/{name} {why}")));
                return;
            }
            Err(_) => "pods ?".to_owned(),
        };
        let tunnel = if *connected.borrow() {
            "tunnel up"
        } else {
            "tunnel reconnecting"
        };
        let routed = forwarder.stats.routed.load(Ordering::Relaxed);
        let dropped = match forwarder.stats.dropped.load(Ordering::Relaxed) {
            0 => String::new(),
            n => format!(" ({n} copies dropped: the local app is not keeping up)"),
        };
        let error = forwarder
            .stats
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let line = format!(
            "{tunnel} · {pods} · {routed} requests routed{dropped} · last error: {}",
            error.as_deref().unwrap_or("none")
        );
        if tty {
            eprint!("\r\x1b[K{line}");
        } else if line != last {
            eprintln!("{line}");
        }
        last = line;
    }
}

/// `pods reached 2/3` from a session status (`connected` of `injected` pods of all).
fn pods_reached(status: Option<&Value>) -> String {
    let pods = status.and_then(|s| s["pods"].as_array()).cloned().unwrap_or_default();
    let connected = pods.iter().filter(|p| p["connected"] == true).count();
    let not_injected = pods.iter().filter(|p| p["injected"] != true).count();
    let mut text = format!("pods reached {connected}/{}", pods.len());
    if not_injected > 0 {
        text.push_str(&format!(" ({not_injected} without sidecar: label the namespace shunt.dev/injection=enabled and restart the workload)"));
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_objects_and_pods_are_counted() {
        let name = session_name("system:serviceaccount:dev:Alice", "api");
        assert!(name.starts_with("system-serviceaccount-dev-alice-api-"), "{name}");
        assert!(
            name.len() <= 63
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        let status =
            json!({"pods": [{"name": "a", "injected": true, "connected": true}, {"name": "b", "injected": false}]});
        assert_eq!(pods_reached(Some(&status)), "pods reached 1/2 (1 without sidecar: label the namespace shunt.dev/injection=enabled and restart the workload)");
        assert_eq!(pods_reached(None), "pods reached 0/0");
    }
}
