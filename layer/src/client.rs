//! Questions to the `shunt exec` CLI over its Unix socket (`SHUNT_LAYER_SOCKET`).
//!
//! One short connection per question: the layer writes one JSON line, the CLI answers
//! one JSON line and closes. Blocking, with a deadline per question (`SO_SNDTIMEO`
//! bounds the connect and the write, `SO_RCVTIMEO` the read), so a hook never waits
//! forever; any failure is `None`, and the hook then does what the real function does.
//! Every call here is a raw system call: the layer's own I/O never passes through the
//! layer's hooks (nor through anybody else's).

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The environment variable naming the CLI's socket.
pub const SOCKET_ENV: &str = "SHUNT_LAYER_SOCKET";
/// Set to `1` to have the layer say on stderr when it cannot reach the CLI.
pub const DEBUG_ENV: &str = "SHUNT_LAYER_DEBUG";

/// A question.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Question {
    /// The program listens on TCP `port` at `addr`.
    Listen {
        /// Local port.
        port: u16,
        /// The address it is bound to (`0.0.0.0`, `::`, `127.0.0.1`, …).
        addr: String,
    },
    /// Resolve `name` with the pod's resolver.
    Resolve {
        /// A host name.
        name: String,
    },
    /// The program connects to `addr` (`ip:port`).
    Connect {
        /// The destination the program asked for.
        addr: String,
    },
    /// Who is the original client of the CLI's connection from local port `port`?
    Peer {
        /// The peer port the accepted socket sees.
        port: u16,
    },
}

/// An answer; fields not given are absent.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Answer {
    /// `connect`: connect to this loopback port instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `listen`: the port is one of the session's (its accepted sockets may get a peer).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub session: bool,
    /// `connect`/`resolve`: do what the program asked, locally.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub local: bool,
    /// `resolve`: the pod resolver's addresses (empty: the name does not exist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<String>>,
    /// `peer`: the original client as `ip:port` (port 0 when unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// `connect`: fail the call with this errno.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    /// Why, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The socket address, read once.
struct Config {
    path: libc::sockaddr_un,
    len: libc::socklen_t,
    debug: bool,
}

static CONFIG: OnceLock<Option<Config>> = OnceLock::new();
static WARNED: AtomicBool = AtomicBool::new(false);

fn env(name: &str) -> Option<Vec<u8>> {
    let key = std::ffi::CString::new(name).ok()?;
    // SAFETY: `key` is NUL-terminated; getenv's answer is read at once, before
    // anything could change the environment on this thread.
    let value = unsafe { libc::getenv(key.as_ptr()) };
    if value.is_null() {
        return None;
    }
    // SAFETY: getenv returns a NUL-terminated string.
    Some(unsafe { std::ffi::CStr::from_ptr(value) }.to_bytes().to_vec())
}

fn load() -> Option<Config> {
    let path = env(SOCKET_ENV).filter(|p| !p.is_empty())?;
    // SAFETY: all-zero bytes are a valid sockaddr_un.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if path.len() >= addr.sun_path.len() {
        return None;
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(&path) {
        *dst = *src as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + path.len() + 1) as libc::socklen_t;
    Some(Config {
        path: addr,
        len,
        debug: env(DEBUG_ENV).is_some_and(|v| v == b"1"),
    })
}

/// Reads the configuration (at load time; later calls keep the first answer).
pub fn init() {
    CONFIG.get_or_init(load);
}

/// Whether the layer is active (a CLI socket is configured).
pub fn active() -> bool {
    CONFIG.get_or_init(load).is_some()
}

/// A message on stderr, written with a raw `write` (when `SHUNT_LAYER_DEBUG=1`, or once
/// for the first failure to reach the CLI).
fn say(message: &str) {
    let line = format!("shunt-layer[{}]: {message}\n", std::process::id());
    // SAFETY: writes the bytes of `line`, which outlives the call.
    unsafe { libc::syscall(libc::SYS_write, 2, line.as_ptr(), line.len()) };
}

/// Closes the descriptor when dropped.
struct RawFd(c_int);

impl Drop for RawFd {
    fn drop(&mut self) {
        // SAFETY: closes a descriptor this module opened and nobody else knows.
        unsafe { libc::syscall(libc::SYS_close, self.0) };
    }
}

fn timeout_option(fd: c_int, option: c_int, timeout: Duration) -> bool {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros() as i32),
    };
    // SAFETY: `tv` is a valid timeval for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_setsockopt,
            fd,
            libc::SOL_SOCKET,
            option,
            std::ptr::addr_of!(tv),
            std::mem::size_of::<libc::timeval>(),
        )
    };
    rc == 0
}

fn errno_is_eintr() -> bool {
    crate::guard::errno() == libc::EINTR
}

/// Asks one question; `None` if the CLI cannot be reached or answers nonsense in time.
pub fn ask(question: &Question, timeout: Duration) -> Option<Answer> {
    let config = CONFIG.get_or_init(load).as_ref()?;
    match exchange(config, question, timeout) {
        Ok(answer) => {
            if config.debug {
                say(&format!("{question:?} -> {answer:?}"));
            }
            Some(answer)
        }
        Err(why) => {
            if config.debug || !WARNED.swap(true, Ordering::Relaxed) {
                say(&format!(
                    "no answer from the shunt CLI ({why}); this call stays local (is `shunt exec` still running?)"
                ));
            }
            None
        }
    }
}

fn exchange(config: &Config, question: &Question, timeout: Duration) -> Result<Answer, String> {
    let mut line = serde_json::to_vec(question).map_err(|e| e.to_string())?;
    line.push(b'\n');
    // SAFETY: plain socket creation; the descriptor is owned by `fd` below.
    let raw = unsafe {
        libc::syscall(
            libc::SYS_socket,
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(format!("socket: errno {}", crate::guard::errno()));
    }
    let fd = RawFd(raw as c_int);
    if !timeout_option(fd.0, libc::SO_SNDTIMEO, timeout) || !timeout_option(fd.0, libc::SO_RCVTIMEO, timeout) {
        return Err("cannot set socket timeouts".into());
    }
    // SAFETY: `config.path` is a valid sockaddr_un of `config.len` bytes.
    let rc = unsafe { libc::syscall(libc::SYS_connect, fd.0, std::ptr::addr_of!(config.path), config.len) };
    if rc < 0 {
        return Err(format!("connect: errno {}", crate::guard::errno()));
    }
    let mut sent = 0;
    while sent < line.len() {
        // SAFETY: the slice `line[sent..]` is valid for reads.
        let n = unsafe { libc::syscall(libc::SYS_write, fd.0, line[sent..].as_ptr(), line.len() - sent) };
        match n {
            n if n > 0 => sent += n as usize,
            _ if errno_is_eintr() => {}
            _ => return Err(format!("write: errno {}", crate::guard::errno())),
        }
    }
    let mut answer = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    while !answer.contains(&b'\n') {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::syscall(libc::SYS_read, fd.0, buf.as_mut_ptr(), buf.len()) };
        match n {
            0 => break,
            n if n > 0 => answer.extend_from_slice(&buf[..n as usize]),
            _ if errno_is_eintr() => {}
            _ => return Err(format!("read: errno {} (timed out?)", crate::guard::errno())),
        }
        if answer.len() > 1 << 20 {
            return Err("answer too long".into());
        }
    }
    decode_answer(&answer)
}

/// Decodes the CLI's reply: the JSON of its first line (up to the first `\n`, or all of
/// `bytes` without one). Public so the fuzz targets reach it; the layer calls it for
/// every answer.
#[doc(hidden)]
pub fn decode_answer(bytes: &[u8]) -> Result<Answer, String> {
    let end = bytes.iter().position(|b| *b == b'\n').unwrap_or(bytes.len());
    serde_json::from_slice(&bytes[..end]).map_err(|e| format!("bad answer: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn questions_and_answers_have_a_stable_json_form() {
        let q = Question::Connect {
            addr: "10.96.0.12:8080".into(),
        };
        assert_eq!(
            serde_json::to_string(&q).unwrap(),
            r#"{"op":"connect","addr":"10.96.0.12:8080"}"#
        );
        let q = Question::Listen {
            port: 3000,
            addr: "0.0.0.0".into(),
        };
        assert_eq!(
            serde_json::to_string(&q).unwrap(),
            r#"{"op":"listen","port":3000,"addr":"0.0.0.0"}"#
        );
        let a: Answer = serde_json::from_str(r#"{"port": 41000}"#).unwrap();
        assert_eq!(a.port, Some(41000));
        let a: Answer = serde_json::from_str(r#"{"local": true}"#).unwrap();
        assert!(a.local);
    }
}
