//! The nftables table `inet shunt` in the pod's own network namespace.
//!
//! ```text
//! table inet shunt {
//!   set steal_ports { type inet_service; flags timeout; }
//!   chain prerouting { type nat hook prerouting priority dstnat; policy accept;
//!                      tcp flags & (syn | ack) == syn tcp dport @steal_ports
//!                        redirect to :PROXY_PORT }
//! }
//! ```
//! Only a connection's opening SYN is redirected: when the table first appears (the
//! sidecar starts next to an app already serving) the kernel starts tracking and picks
//! up open connections mid-stream as if new; redirecting such an ACK or data segment
//! would land it on the proxy port, where no such connection exists. The table then
//! stays until the sidecar's clean shutdown (see [`super`] for why).
//! The rule is inert unless the set holds the port, and every element carries a
//! timeout: if the sidecar stops renewing (it died, it hangs), the kernel drops the
//! element and new connections reach the app again. No cleanup step is needed.
//!
//! Renewal is one atomic transaction: `flush set` + `add element … timeout`. Adding an
//! element that exists does not reset its timeout, and deleting then adding in two steps
//! would leave a gap; inside one batch the kernel switches generations at once, so a
//! packet sees either the old or the new elements, never none.
//!
//! Scripts go to `nft -f -`; they are built only from integers of our own (ports,
//! seconds), so no outside text reaches nft.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use shunt_proto::names::NFT_TABLE;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Name of the port set.
pub const SET: &str = "steal_ports";

/// An `nft` invocation that failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// `nft` could not be started.
    #[error("cannot run {nft}: {source}; install nftables in the sidecar image")]
    Spawn {
        /// The executable.
        nft: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `nft` rejected the script.
    #[error("nft failed ({status}): {stderr}; the sidecar needs CAP_NET_ADMIN in the pod's network namespace")]
    Failed {
        /// Exit status.
        status: String,
        /// What nft said.
        stderr: String,
    },
}

/// Drives `nft` for one table.
#[derive(Clone, Debug)]
pub struct Nft {
    nft: PathBuf,
    proxy_port: u16,
    lease: Duration,
}

impl Nft {
    /// `nft` is the executable; redirected connections go to `proxy_port`; elements live `lease`.
    pub fn new(nft: PathBuf, proxy_port: u16, lease: Duration) -> Nft {
        Nft { nft, proxy_port, lease }
    }

    /// Script that removes the table if it exists (`add` first makes `delete` never fail).
    pub fn remove_script() -> String {
        format!("add table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n")
    }

    /// Script that (re)creates the table, replacing any stale one, with `ports` leased.
    pub fn install_script(&self, ports: &[u16]) -> String {
        let mut s = Nft::remove_script();
        let _ = write!(
            s,
            "table inet {NFT_TABLE} {{\n  set {SET} {{ type inet_service; flags timeout; }}\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    tcp flags & (syn | ack) == syn tcp dport @{SET} redirect to :{}\n  }}\n}}\n",
            self.proxy_port
        );
        s.push_str(&self.elements(ports));
        s
    }

    /// Script that renews the lease of exactly `ports`, atomically.
    pub fn renew_script(&self, ports: &[u16]) -> String {
        format!("flush set inet {NFT_TABLE} {SET}\n{}", self.elements(ports))
    }

    fn elements(&self, ports: &[u16]) -> String {
        if ports.is_empty() {
            return String::new();
        }
        let secs = self.lease.as_secs();
        let list: Vec<String> = ports.iter().map(|p| format!("{p} timeout {secs}s")).collect();
        format!("add element inet {NFT_TABLE} {SET} {{ {} }}\n", list.join(", "))
    }

    /// Removes the table (start-up cleanup and clean shutdown).
    pub async fn remove(&self) -> Result<(), NftError> {
        self.run(&Nft::remove_script()).await
    }

    /// Creates the table with `ports` leased.
    pub async fn install(&self, ports: &[u16]) -> Result<(), NftError> {
        self.run(&self.install_script(ports)).await
    }

    /// Renews the lease of `ports`.
    pub async fn renew(&self, ports: &[u16]) -> Result<(), NftError> {
        self.run(&self.renew_script(ports)).await
    }

    async fn run(&self, script: &str) -> Result<(), NftError> {
        let spawn_error = |source| NftError::Spawn {
            nft: self.nft.display().to_string(),
            source,
        };
        let mut child = Command::new(&self.nft)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_error)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(script.as_bytes()).await.map_err(spawn_error)?;
        }
        let out = child.wait_with_output().await.map_err(spawn_error)?;
        if out.status.success() {
            Ok(())
        } else {
            Err(NftError::Failed {
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_one_flush_and_add_batch() {
        let nft = Nft::new("nft".into(), 15080, Duration::from_secs(3));
        assert_eq!(
            nft.renew_script(&[8080, 9090]),
            "flush set inet shunt steal_ports\nadd element inet shunt steal_ports { 8080 timeout 3s, 9090 timeout 3s }\n"
        );
        let install = nft.install_script(&[8080]);
        assert!(install.starts_with("add table inet shunt\ndelete table inet shunt\n"));
        assert!(install.contains("tcp flags & (syn | ack) == syn tcp dport @steal_ports redirect to :15080"));
        assert!(install.contains("flags timeout"));
    }
}
