//! `shunt exec TARGET -- PROGRAM ARGS`: runs a local program as if it were in the
//! target's pod. One steal session (filter `--header`, default `auto`) takes the
//! developer's requests off every pod; the program runs with `libshunt_layer.so`
//! preloaded, which reports its listeners (the session's requests go to them, see
//! [`inbound`]), sends its outgoing TCP connections and DNS through the pod (see
//! [`server`]), and the program gets the target container's environment ([`env`]).
//!
//! Before starting anything, [`program`] refuses programs the layer cannot serve
//! (static, Go). The exit code is the program's; Ctrl-C ends the program (it gets the
//! terminal's SIGINT itself; a SIGTERM to the CLI is passed on) and the session.

pub mod env;
pub mod inbound;
pub mod program;
pub mod server;
pub mod target;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use futures_util::future::BoxFuture;
use kube::api::{DeleteParams, DynamicObject, PostParams};
use serde_json::{json, Value};
use shunt_proto::names::DEFAULT_IDENTITY_HEADER;
use shunt_proto::policy::glob::Glob;
use shunt_proto::session::{SessionPort, SessionSpec};
use shunt_proto::{Filter, Mode, TargetRef};
use tokio::sync::watch;

use crate::cluster::{explain, Cluster};
use crate::intercept::{ended_on_purpose, recreate, session_name, shutdown_signal};
use crate::outbound::Outbound;
use crate::tunnel;
use server::{LocalRule, Remote, Shared};

/// Arguments of `exec`.
#[derive(Debug, Args, Clone)]
pub struct ExecArgs {
    /// The workload: deployment/NAME, statefulset/NAME, replicaset/NAME, daemonset/NAME,
    /// rollout/NAME or service/NAME.
    pub target: TargetRef,
    /// Which requests the program gets: a filter such as `x-user: alice`; `auto` =
    /// `x-shunt-user: <you>`.
    #[arg(long, default_value = "auto")]
    pub header: String,
    /// App port in the pods, optionally `:local port` the program listens on
    /// (default: every containerPort of the target's container, same number locally).
    #[arg(short, long = "port", value_parser = crate::args::parse_port)]
    pub ports: Vec<(u16, u16)>,
    /// The target's container whose env and ports the program takes (default: the
    /// first one that is not shunt's sidecar).
    #[arg(short, long)]
    pub container: Option<String>,
    /// Only environment variables matching this glob (repeatable).
    #[arg(long = "env-include", value_name = "GLOB", value_parser = parse_glob)]
    pub env_include: Vec<Glob>,
    /// Leave out environment variables matching this glob (repeatable).
    #[arg(long = "env-exclude", value_name = "GLOB", value_parser = parse_glob)]
    pub env_exclude: Vec<Glob>,
    /// Keep connections to ADDR on this machine: an IP, a network (192.168.0.0/16) or
    /// IP:PORT (repeatable). Loopback always stays local.
    #[arg(long = "local", value_name = "ADDR")]
    pub local: Vec<LocalRule>,
    /// The program and its arguments.
    #[arg(last = true, required = true, value_name = "PROGRAM")]
    pub command: Vec<String>,
}

fn parse_glob(text: &str) -> Result<Glob, String> {
    Glob::new(text).map_err(|e| e.to_string())
}

/// The program exited with a non-zero code (or by a signal: 128 + its number); the
/// `shunt` process exits with the same code.
#[derive(Debug, thiserror::Error)]
#[error("the program exited with code {0}")]
pub struct ProgramExit(pub u8);

/// Runs the program until it exits; `Err(ProgramExit)` carries a non-zero exit code.
pub async fn run(cluster: &Cluster, args: &ExecArgs) -> anyhow::Result<()> {
    let ns = cluster.namespace.clone();
    let program = program::check(&args.command[0])?;
    let layer = program::layer_path()?;
    let target = target::load(cluster, &args.target, args.container.as_deref()).await?;
    let ports: Vec<(u16, u16)> = if args.ports.is_empty() {
        target.ports().into_iter().map(|p| (p, p)).collect()
    } else {
        args.ports.clone()
    };
    anyhow::ensure!(
        !ports.is_empty(),
        "container {} of {} declares no TCP containerPort: say which with --port APP_PORT[:LOCAL_PORT]",
        target.container.name,
        args.target
    );
    let filter_text = match args.header.as_str() {
        "auto" => format!("{DEFAULT_IDENTITY_HEADER}: {}", cluster.whoami().await?),
        other => other.to_owned(),
    };
    let filter = Filter::parse(&filter_text).with_context(|| format!("invalid --header {filter_text:?}"))?;
    let name = session_name(
        &cluster.whoami().await.unwrap_or_else(|_| "shunt".into()),
        &args.target.name,
    );
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "api.shunt.dev/v1", "kind": "Session",
        "metadata": {"name": name, "namespace": ns},
        "spec": SessionSpec {
            target: args.target.clone(),
            mode: Mode::Steal,
            filter: Some(filter),
            ports: ports.iter().map(|(port, _)| SessionPort { port: *port }).collect(),
        },
    }))?;
    let api = cluster.sessions(Some(&ns));
    let created = api
        .create(&PostParams::default(), &object)
        .await
        .map_err(explain)
        .with_context(|| format!("cannot start a session on {} in namespace {ns}", args.target))?;
    let mapping: Vec<String> = ports.iter().map(|(r, l)| format!("{r} → local {l}")).collect();
    eprintln!(
        "session {ns}/{name}: requests matching `{filter_text}` to {} ports {} go to {}",
        args.target,
        mapping.join(", "),
        args.command[0]
    );

    let result = run_session(
        cluster,
        args,
        &program,
        &layer,
        &target,
        ports,
        &object,
        created.data.get("status"),
    )
    .await;
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => eprintln!("session {ns}/{name} ended"),
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => eprintln!(
            "cannot delete session {ns}/{name} ({:#}): `shunt sessions kill {name}`",
            explain(e)
        ),
    }
    result
}

/// Everything between creating and deleting the session.
#[allow(clippy::too_many_arguments)] // one call site; the pieces are all different
async fn run_session(
    cluster: &Cluster,
    args: &ExecArgs,
    program: &std::path::Path,
    layer: &std::path::Path,
    target: &target::TargetPod,
    ports: Vec<(u16, u16)>,
    object: &DynamicObject,
    status: Option<&Value>,
) -> anyhow::Result<()> {
    let vars = environment(cluster, args, target, status).await;
    let remote = remote(cluster, object).await;
    let shared = Shared::new(ports, args.local.clone(), remote);
    let dir = SocketDir::create()?;
    let listener = tokio::net::UnixListener::bind(dir.socket())
        .with_context(|| format!("cannot listen on {}", dir.socket().display()))?;
    let layer_server = tokio::spawn(server::serve(listener, shared.clone()));
    let (done_tx, mut done) = watch::channel(None::<String>);
    let tunnel = tokio::spawn(keep_tunnel(cluster.clone(), object.clone(), shared, done_tx));

    let preload = match std::env::var_os("LD_PRELOAD") {
        Some(existing) if !existing.is_empty() => {
            let mut value = layer.as_os_str().to_owned();
            value.push(":");
            value.push(existing);
            value
        }
        _ => layer.as_os_str().to_owned(),
    };
    let mut child = tokio::process::Command::new(program)
        .arg0(&args.command[0])
        .args(&args.command[1..])
        .envs(vars)
        .env("LD_PRELOAD", preload)
        .env("SHUNT_LAYER_SOCKET", dir.socket())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    let pid = child.id();
    let outcome = tokio::select! {
        status = child.wait() => Ok(status?),
        () = shutdown_signal() => {
            // The terminal's Ctrl-C reached the program too; a SIGTERM only us: pass it on.
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
            }
            match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
                Ok(status) => Ok(status?),
                Err(_) => {
                    eprintln!("shunt exec: the program did not stop within 10 s; killing it");
                    let _ = child.kill().await;
                    Ok(child.wait().await?)
                }
            }
        }
        _ = done.changed() => {
            let why = done.borrow().clone().unwrap_or_default();
            let _ = child.kill().await;
            Err(anyhow::anyhow!("{why}; the program was stopped"))
        }
    };
    tunnel.abort();
    layer_server.abort();
    let status = outcome?;
    let code = status
        .code()
        .or_else(|| std::os::unix::process::ExitStatusExt::signal(&status).map(|s| 128 + s))
        .unwrap_or(1);
    match u8::try_from(code) {
        Ok(0) => Ok(()),
        Ok(code) => Err(ProgramExit(code).into()),
        Err(_) => Err(ProgramExit(1).into()),
    }
}

/// The variables the program gets from the pod, after every filter; says what was
/// left out.
async fn environment(
    cluster: &Cluster,
    args: &ExecArgs,
    target: &target::TargetPod,
    status: Option<&Value>,
) -> Vec<(String, String)> {
    let status = status.cloned().unwrap_or_default();
    let blocked = status["envBlocked"] == true;
    let mut exclude = args.env_exclude.clone();
    exclude.extend(
        status["envExclude"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| Glob::new(g.as_str()?).ok()),
    );
    let objects = env::fetch(cluster, &target.container).await;
    let pod_env = env::compute(&target.container, target.pod.as_ref(), &cluster.namespace, &objects);
    let filter = env::EnvFilter {
        include: args.env_include.clone(),
        exclude,
        blocked,
    };
    let (vars, left_out) = filter.apply(pod_env.vars);
    if blocked {
        eprintln!("env: a policy blocks the pod's environment; the program gets none of it");
    } else {
        eprintln!("env: {} variables from container {}", vars.len(), target.container.name);
        if !left_out.is_empty() {
            eprintln!(
                "env: left out (--env-include/--env-exclude, policies): {}",
                left_out.join(", ")
            );
        }
    }
    for skipped in &pod_env.skipped {
        eprintln!("env: not available: {skipped}");
    }
    vars
}

/// The pod's network through the session's outbound tunnel; `None` (everything
/// stays local) if it cannot be opened.
async fn remote(cluster: &Cluster, object: &DynamicObject) -> Option<Arc<dyn Remote>> {
    let name = object.metadata.name.clone().unwrap_or_default();
    match Outbound::open(cluster, &cluster.namespace, &name).await {
        Ok(outbound) => Some(Arc::new(outbound)),
        Err(e) => {
            eprintln!("shunt exec: no outbound tunnel ({e:#}); the program's connections and DNS stay local");
            None
        }
    }
}

impl Remote for Outbound {
    fn connect<'a>(&'a self, authority: &'a str) -> BoxFuture<'a, Result<server::RemoteStream, String>> {
        Box::pin(async move {
            Outbound::connect(self, authority)
                .await
                .map(|stream| Box::new(stream) as server::RemoteStream)
                .map_err(|e| e.to_string())
        })
    }

    fn resolve<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<std::net::IpAddr>, String>> {
        Box::pin(async move { Outbound::resolve(self, name).await.map_err(|e| e.to_string()) })
    }
}

/// The inbound tunnel, reopened with back-off like `intercept`'s; `done` gets why
/// when the session ends elsewhere.
async fn keep_tunnel(
    cluster: Cluster,
    object: DynamicObject,
    shared: Arc<Shared>,
    done: watch::Sender<Option<String>>,
) {
    let ns = cluster.namespace.clone();
    let name = object.metadata.name.clone().unwrap_or_default();
    let mut backoff = Duration::from_millis(200);
    loop {
        match tunnel::open(&cluster.client, &ns, &name).await {
            Ok(t) => {
                let shared = shared.clone();
                let service = hyper::service::service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, std::convert::Infallible>(inbound::forward(shared, req).await) }
                });
                let served = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .timer(hyper_util::rt::TokioTimer::new())
                    .keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(20))
                    .serve_connection(hyper_util::rt::TokioIo::new(t), service)
                    .await;
                tracing::info!(?served, "the inbound tunnel closed; reopening");
                backoff = Duration::from_millis(200);
            }
            Err(kube::Error::Api(s)) if s.code == 404 && !ended_on_purpose(&s.message) => {
                if let Some(why) = recreate(&cluster, &object).await {
                    done.send_replace(Some(format!("session {ns}/{name}: {why}")));
                    return;
                }
                continue;
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 403 => {
                done.send_replace(Some(format!("session {ns}/{name} ended: {}", s.message)));
                return;
            }
            Err(e) => tracing::info!(error = %e, "cannot open the inbound tunnel; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// A private directory (0700) for the layer socket, removed on drop.
struct SocketDir(PathBuf);

impl SocketDir {
    fn create() -> anyhow::Result<SocketDir> {
        use std::os::unix::fs::DirBuilderExt as _;
        let suffix: u32 = rand::random();
        let dir = std::env::temp_dir().join(format!("shunt-exec-{}-{suffix:08x}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(SocketDir(dir))
    }

    fn socket(&self) -> PathBuf {
        self.0.join("layer.sock")
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
