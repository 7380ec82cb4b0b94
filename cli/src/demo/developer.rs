//! A developer of the demo: a local echo server named after them (their "laptop app")
//! and the real `shunt intercept` or `shunt mirror` as a child process with their own
//! kubeconfig, ended (SIGKILL) when dropped.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tokio::io::AsyncBufReadExt as _;

use super::stack::{poll, Stack, NS};

/// What the developer's session does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `shunt intercept`.
    Intercept,
    /// `shunt mirror`.
    Mirror,
}

/// The developer's local app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalApp {
    /// An echo server named after the developer.
    Echo,
    /// A server that accepts connections and never reads or answers (a hung debugger, a
    /// stalled mirror consumer); its counter counts accepted connections.
    Stalled,
}

/// A running developer.
pub struct Developer {
    /// Their user name (also the `served_by` of their local app).
    pub name: String,
    /// Their local app (counts what it served).
    pub app: shunt_echo::Echo,
    /// The CLI process.
    pub cli: tokio::process::Child,
    log: Arc<Mutex<String>>,
}

impl Developer {
    /// Starts the local app and `shunt <kind> deployment/api --port 8080:<app> [--header H]`
    /// as `name`, and waits until the session is Active.
    pub async fn start(
        stack: &Stack,
        shunt: &Path,
        name: &str,
        kind: Kind,
        header: Option<&str>,
    ) -> anyhow::Result<Developer> {
        Developer::start_with(stack, shunt, name, kind, header, LocalApp::Echo).await
    }

    /// [`Developer::start`] with the given local app.
    pub async fn start_with(
        stack: &Stack,
        shunt: &Path,
        name: &str,
        kind: Kind,
        header: Option<&str>,
        local: LocalApp,
    ) -> anyhow::Result<Developer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let app = match local {
            LocalApp::Echo => shunt_echo::spawn(listener, name)?,
            LocalApp::Stalled => stalled(listener)?,
        };
        let kubeconfig = stack.kubeconfig(name)?;
        let verb = match kind {
            Kind::Intercept => "intercept",
            Kind::Mirror => "mirror",
        };
        let mut cmd = tokio::process::Command::new(shunt);
        cmd.arg("--kubeconfig")
            .arg(&kubeconfig)
            .args([
                verb,
                "deployment/api",
                "--port",
                &format!("8080:{}", app.addr.port()),
                "-n",
                NS,
            ])
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(header) = header {
            cmd.args(["--header", header]);
        }
        let mut cli = cmd.spawn().with_context(|| format!("cannot run {}", shunt.display()))?;
        let log: Arc<Mutex<String>> = Arc::default();
        if let Some(stderr) = cli.stderr.take() {
            let log = log.clone();
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(mut log) = log.lock() {
                        log.push_str(&line);
                        log.push('\n');
                    }
                }
            });
        }
        let mut developer = Developer {
            name: name.to_owned(),
            app,
            cli,
            log,
        };
        let what = format!("{name}'s session to become Active");
        let waited = poll(&what, std::time::Duration::from_secs(30), async || {
            if let Ok(Some(status)) = developer.cli.try_wait() {
                return Some(Err(anyhow::anyhow!(
                    "{name}'s shunt exited ({status}):\n{}",
                    developer.log()
                )));
            }
            let sessions = stack.sessions().await.ok()?;
            let active = sessions
                .iter()
                .any(|s| s["status"]["user"] == name && s["status"]["phase"] == "Active");
            active.then_some(Ok(()))
        })
        .await;
        match waited {
            Ok(Ok(())) => Ok(developer),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(e.context(format!("{name}'s shunt said:\n{}", developer.log()))),
        }
    }

    /// What the CLI printed so far (stderr).
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Requests the local app served.
    pub fn served(&self) -> u64 {
        self.app.count()
    }
}

/// Accepts connections and holds them open without reading a byte (see [`LocalApp::Stalled`]).
fn stalled(listener: tokio::net::TcpListener) -> std::io::Result<shunt_echo::Echo> {
    let app = shunt_echo::Echo {
        addr: listener.local_addr()?,
        requests: Arc::default(),
    };
    let accepted = app.requests.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream);
        }
    });
    Ok(app)
}
