//! Test "pods": a network namespace with a veth pair, an address inside
//! (`10.213.x.y/30`) and one on the host side, so clients in the root namespace reach
//! the pod and the pod reaches servers bound to [`Pod::host_ip`]. Processes started
//! through [`Pod::spawn`] and the namespace itself are removed when the `Pod` drops,
//! also when a test fails (drop runs while unwinding).
//!
//! Namespaces are named `shunt-t<index>`; creating the name is the allocation, so
//! parallel test processes never share an index. A pid file per namespace lets a later
//! run remove namespaces whose owner was killed before it could clean up.

use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const MAX_PODS: u32 = 16_000;
const OWNER_DIR: &str = "/run/shunt-test-netns";

/// True when running as root (namespaces, veth and nftables need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether a root-only test can run here. When not root: fails the test if
/// `SHUNT_REQUIRE_ROOT=1` (CI), otherwise says so and returns false.
pub fn root_available(test: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var("SHUNT_REQUIRE_ROOT").as_deref() != Ok("1"),
        "{test} needs root (network namespaces, nftables) and SHUNT_REQUIRE_ROOT=1 is set"
    );
    eprintln!("{test}: not root, so this netns test does not run here (CI runs it as root)");
    false
}

/// A network namespace with a veth link to the root namespace.
pub struct Pod {
    /// Namespace name (`ip netns`).
    pub name: String,
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// The host side's address, reachable from inside the pod.
    pub host_ip: Ipv4Addr,
    children: Mutex<Vec<Child>>,
}

fn ip(args: &[&str]) -> io::Result<Output> {
    Command::new("ip").args(args).stdin(Stdio::null()).output()
}

fn check(out: Output, what: &str) -> io::Result<Output> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(io::Error::other(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl Pod {
    /// Creates a new pod namespace with its veth pair and addresses.
    pub fn create() -> io::Result<Pod> {
        remove_orphans();
        for index in 0..MAX_PODS {
            let name = format!("shunt-t{index}");
            if !ip(&["netns", "add", &name])?.status.success() {
                continue; // taken by another test (or another process)
            }
            let _ = fs::create_dir_all(OWNER_DIR);
            let _ = fs::write(owner_file(&name), std::process::id().to_string());
            let base = index * 4;
            let octets = |n: u32| Ipv4Addr::new(10, 213, (n >> 8) as u8, (n & 0xff) as u8);
            let pod = Pod {
                name,
                ip: octets(base + 2),
                host_ip: octets(base + 1),
                children: Mutex::new(Vec::new()),
            };
            pod.wire(index)?;
            return Ok(pod);
        }
        Err(io::Error::other("no free test namespace index"))
    }

    fn wire(&self, index: u32) -> io::Result<()> {
        let host_if = format!("shh{index}");
        let (pod_cidr, host_cidr) = (format!("{}/30", self.ip), format!("{}/30", self.host_ip));
        // The peer gets a unique name first (parallel tests create pairs at once) and is
        // renamed to eth0 inside the pod.
        let pod_if = format!("shp{index}");
        let _ = ip(&["link", "del", &host_if]); // left over from a killed run
        check(
            ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", &pod_if, "netns", &self.name,
            ])?,
            "veth",
        )?;
        check(ip(&["addr", "add", &host_cidr, "dev", &host_if])?, "host address")?;
        check(ip(&["link", "set", &host_if, "up"])?, "host link up")?;
        let ns = |args: &[&str]| {
            let mut full = vec!["netns", "exec", &self.name, "ip"];
            full.extend_from_slice(args);
            check(ip(&full)?, "pod network")
        };
        ns(&["link", "set", &pod_if, "name", "eth0"])?;
        ns(&["addr", "add", &pod_cidr, "dev", "eth0"])?;
        ns(&["link", "set", "eth0", "up"])?;
        ns(&["link", "set", "lo", "up"])?;
        ns(&["route", "add", "default", "via", &self.host_ip.to_string()])?;
        Ok(())
    }

    /// A command that runs `program` inside the pod's network namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Starts `cmd` (from [`Pod::command`]) and keeps it to kill when the pod drops.
    /// Returns its pid (`ip netns exec` execs the program, so it is the program's pid).
    pub fn spawn(&self, mut cmd: Command) -> io::Result<u32> {
        let child = cmd.stdin(Stdio::null()).spawn()?;
        let pid = child.id();
        self.children.lock().unwrap_or_else(|p| p.into_inner()).push(child);
        Ok(pid)
    }

    /// Kills a process started with [`Pod::spawn`] with SIGKILL and reaps it.
    pub fn kill9(&self, pid: u32) {
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = children.iter().position(|c| c.id() == pid) {
            let mut child = children.swap_remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM to a spawned process and waits for it to exit.
    pub fn terminate(&self, pid: u32) -> io::Result<std::process::ExitStatus> {
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        let i = children
            .iter()
            .position(|c| c.id() == pid)
            .ok_or_else(|| io::Error::other("not a child of this pod"))?;
        let mut child = children.swap_remove(i);
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        child.wait()
    }

    /// Runs a command inside the pod and returns its stdout (error on failure).
    pub fn run(&self, program: &str, args: &[&str]) -> io::Result<String> {
        let out = self.command(program).args(args).stdin(Stdio::null()).output()?;
        let out = check(out, &format!("{program} {}", args.join(" ")))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The pod's nftables ruleset, as `nft list ruleset` prints it.
    pub fn nft_ruleset(&self) -> io::Result<String> {
        self.run("nft", &["list", "ruleset"])
    }

    /// Binds a TCP listener inside the pod (non-blocking, ready for tokio).
    pub fn bind(&self, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
        let path = PathBuf::from("/var/run/netns").join(&self.name);
        // A socket belongs to the namespace of the thread that creates it, for life:
        // a short-lived thread enters the namespace, binds, and hands the socket back.
        std::thread::spawn(move || {
            let ns = fs::File::open(&path)?;
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            let listener = std::net::TcpListener::bind(addr)?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
        .join()
        .map_err(|_| io::Error::other("bind thread panicked"))?
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let children = std::mem::take(&mut *self.children.lock().unwrap_or_else(|p| p.into_inner()));
        for mut child in children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = ip(&["netns", "del", &self.name]);
        let _ = fs::remove_file(owner_file(&self.name));
    }
}

fn owner_file(name: &str) -> PathBuf {
    PathBuf::from(OWNER_DIR).join(format!("{name}.pid"))
}

/// Removes test namespaces whose owning process is gone (a killed test run).
fn remove_orphans() {
    let Ok(entries) = fs::read_dir(OWNER_DIR) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            continue;
        };
        let pid: Option<i32> = fs::read_to_string(&path).ok().and_then(|s| s.trim().parse().ok());
        let alive = pid.is_some_and(|pid| kill(Pid::from_raw(pid), None).is_ok());
        if !alive {
            let _ = ip(&["netns", "del", &name]);
            let _ = fs::remove_file(&path);
        }
    }
}
