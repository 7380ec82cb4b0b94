//! The layer in real programs (Python under `LD_PRELOAD`) against a fake `shunt exec`
//! CLI: a Unix socket server in this test that records every question and answers
//! from a table. No root, no cluster.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

/// The freshest `libshunt_layer.so` of this build: `target/<profile>/deps/` (where
/// `cargo test` puts it) or `target/<profile>/` (where `cargo build` copies it).
fn layer() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let candidates = [
        deps.join("libshunt_layer.so"),
        deps.parent().unwrap().join("libshunt_layer.so"),
    ];
    let newest = candidates
        .iter()
        .filter_map(|p| Some((std::fs::metadata(p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p.clone());
    newest.unwrap_or_else(|| {
        panic!(
            "libshunt_layer.so is missing next to {}: build it with `cargo build -p shunt-layer`",
            deps.display()
        )
    })
}

/// A fake CLI: answers questions by `op` (and `name`/`addr`), records them all.
struct FakeCli {
    dir: PathBuf,
    questions: Arc<Mutex<Vec<Value>>>,
}

impl FakeCli {
    fn start(answers: HashMap<String, Value>) -> FakeCli {
        let dir = std::env::temp_dir().join(format!("shunt-layer-test-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let listener = UnixListener::bind(dir.join("layer.sock")).unwrap();
        let questions = Arc::new(Mutex::new(Vec::new()));
        let seen = questions.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut line = String::new();
                if BufReader::new(&conn).read_line(&mut line).is_err() {
                    continue;
                }
                let q: Value = serde_json::from_str(&line).unwrap();
                let key = match q["op"].as_str().unwrap() {
                    "resolve" => format!("resolve {}", q["name"].as_str().unwrap()),
                    "connect" => format!("connect {}", q["addr"].as_str().unwrap()),
                    op => op.to_owned(),
                };
                seen.lock().unwrap().push(q);
                let answer = answers.get(&key).cloned().unwrap_or(json!({"local": true}));
                let _ = writeln!(conn, "{answer}");
            }
        });
        FakeCli { dir, questions }
    }

    fn python(&self, script: &str) -> String {
        self.python_with(script, &self.dir.join("layer.sock"))
    }

    fn python_with(&self, script: &str, socket: &std::path::Path) -> String {
        let out = Command::new("python3")
            .args(["-c", script])
            .env("LD_PRELOAD", layer())
            .env("SHUNT_LAYER_SOCKET", socket)
            .output()
            .expect("python3 must be installed for the layer tests");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "python failed: {}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn ops(&self, op: &str) -> Vec<Value> {
        self.questions
            .lock()
            .unwrap()
            .iter()
            .filter(|q| q["op"] == op)
            .cloned()
            .collect()
    }
}

impl Drop for FakeCli {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish()
}

/// A loopback echo server standing in for the CLI's one-connection relay.
fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn listeners_are_reported_and_accepted_sockets_show_the_pod_client() {
    let cli = FakeCli::start(HashMap::from([
        ("listen".into(), json!({"session": true})),
        ("peer".into(), json!({"addr": "10.244.0.9:0"})),
    ]));
    let out = cli.python(
        "import socket\n\
         s = socket.socket(); s.bind(('0.0.0.0', 0)); s.listen(); port = s.getsockname()[1]\n\
         c = socket.create_connection(('127.0.0.1', port))\n\
         a, addr = s.accept()\n\
         print(port, addr[0], a.getpeername()[0])\n",
    );
    let fields: Vec<&str> = out.split_whitespace().collect();
    let listens = cli.ops("listen");
    assert_eq!(listens.len(), 1, "{listens:?}");
    assert_eq!(listens[0]["port"].to_string(), fields[0]);
    assert_eq!(listens[0]["addr"], "0.0.0.0");
    assert_eq!(
        &fields[1..],
        ["10.244.0.9", "10.244.0.9"],
        "accept and getpeername show the pod's client"
    );
    assert_eq!(cli.ops("peer").len(), 1);
}

#[test]
fn names_resolve_in_the_pod_and_unknown_ones_locally() {
    let cli = FakeCli::start(HashMap::from([
        (
            "resolve reviews".into(),
            json!({"addresses": ["10.96.0.12", "10.96.0.13"]}),
        ),
        (
            "resolve missing.shop.svc.cluster.local".into(),
            json!({"addresses": []}),
        ),
    ]));
    let out = cli.python(
        "import socket, ctypes\n\
         infos = socket.getaddrinfo('reviews', 8080, type=socket.SOCK_STREAM)\n\
         print(sorted({i[4] for i in infos}))\n\
         try:\n    socket.getaddrinfo('missing.shop.svc.cluster.local', 80)\n    print('found')\nexcept socket.gaierror as e:\n    print('gaierror', e.errno == socket.EAI_NONAME)\n\
         print(socket.getaddrinfo('localhost', 80, socket.AF_INET, socket.SOCK_STREAM)[0][4])\n\
         libc = ctypes.CDLL(None)\n\
         libc.gethostbyname.restype = ctypes.c_void_p\n\
         h = libc.gethostbyname(b'reviews')\n\
         addrs = ctypes.cast(h + 24, ctypes.POINTER(ctypes.POINTER(ctypes.POINTER(ctypes.c_ubyte))))[0]\n\
         print('.'.join(str(addrs[0][i]) for i in range(4)))\n",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "[('10.96.0.12', 8080), ('10.96.0.13', 8080)]");
    assert_eq!(lines[1], "gaierror True");
    assert_eq!(lines[2], "('127.0.0.1', 80)", "localhost never asks the CLI");
    assert_eq!(lines[3], "10.96.0.12", "gethostbyname answers from the pod");
    let names: Vec<Value> = cli.ops("resolve").iter().map(|q| q["name"].clone()).collect();
    assert_eq!(
        names,
        [
            json!("reviews"),
            json!("missing.shop.svc.cluster.local"),
            json!("reviews")
        ]
    );
}

#[test]
fn connections_are_diverted_and_keep_their_address_through_dup_and_fork() {
    let relay = echo_server();
    let cli = FakeCli::start(HashMap::from([
        ("connect 10.96.0.12:8080".into(), json!({"port": relay})),
        (
            "connect 10.96.0.66:80".into(),
            json!({"errno": 111, "error": "blocked by policy shop/no-out"}),
        ),
    ]));
    let out = cli.python(
        "import socket, os\n\
         c = socket.create_connection(('10.96.0.12', 8080))\n\
         c.sendall(b'ping'); print(c.recv(4).decode(), c.getpeername())\n\
         os.dup2(c.fileno(), 57)\n\
         d = socket.socket(fileno=os.dup(c.fileno()))\n\
         print(socket.socket(fileno=57).getpeername(), d.getpeername())\n\
         pid = os.fork()\n\
         if pid == 0:\n\
         \x20   ok = c.getpeername() == ('10.96.0.12', 8080)\n\
         \x20   e = socket.create_connection(('10.96.0.12', 8080)); e.sendall(b'kid!'); ok = ok and e.recv(4) == b'kid!'\n\
         \x20   os._exit(0 if ok else 3)\n\
         print('child', os.waitpid(pid, 0)[1])\n\
         try:\n    socket.create_connection(('10.96.0.66', 80))\nexcept ConnectionRefusedError:\n    print('refused')\n\
         c.close()\n",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "ping ('10.96.0.12', 8080)");
    assert_eq!(
        lines[1], "('10.96.0.12', 8080) ('10.96.0.12', 8080)",
        "dup2 and dup keep the address"
    );
    assert_eq!(
        lines[2], "child 0",
        "a fork child keeps the bookkeeping and can divert itself"
    );
    assert_eq!(lines[3], "refused", "an errno answer fails the connect");
    assert_eq!(cli.ops("connect").len(), 3);
}

#[test]
fn local_traffic_udp_and_a_missing_cli_are_left_alone() {
    let cli = FakeCli::start(HashMap::new());
    let out = cli.python(
        "import socket\n\
         s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1024)\n\
         port = s.getsockname()[1]; n = 0\n\
         for _ in range(1000):\n\
         \x20   c = socket.create_connection(('127.0.0.1', port)); a, _ = s.accept()\n\
         \x20   c.sendall(b'x'); n += len(a.recv(1)); a.close(); c.close()\n\
         u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.connect(('10.96.0.10', 53))\n\
         print(n)\n",
    );
    assert_eq!(out.trim(), "1000");
    assert!(cli.ops("connect").is_empty(), "loopback and UDP never ask");
    assert_eq!(cli.ops("listen").len(), 1);
    assert!(
        cli.ops("peer").is_empty(),
        "a listener on no session port never asks about its clients"
    );

    let gone = cli.dir.join("nobody.sock");
    let out = cli.python_with(
        "import socket\n\
         s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n\
         print(socket.getaddrinfo('localhost', 1)[0][4][0])\n",
        &gone,
    );
    assert_eq!(out.trim(), "127.0.0.1", "without a CLI every call is local");
}
