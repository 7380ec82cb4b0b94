//! `libshunt_layer.so`: the LD_PRELOAD library of `shunt exec`.
//!
//! `shunt exec` starts the developer's program with this library preloaded and
//! `SHUNT_LAYER_SOCKET` naming the CLI's Unix socket. The library interposes libc's
//! socket functions (the real ones come from `dlsym(RTLD_NEXT, …)`) and asks the CLI,
//! one short blocking connection per question (see [`client`]):
//!
//! - `listen`: reports TCP listeners, so the CLI delivers the session's stolen requests
//!   to them; `accept`/`accept4` and `getpeername` show the original client's address
//!   for connections the CLI made on behalf of a pod, where the CLI knows it;
//! - `connect`: a TCP connection to a non-loopback address may be diverted: the CLI
//!   opens it from a pod of the target through the outbound tunnel and hands the
//!   program a loopback port to connect to instead; `getpeername` then shows the address
//!   the program asked for;
//! - `getaddrinfo`/`gethostbyname`: names resolve with the pod's resolver; lists this
//!   library allocated are freed by its `freeaddrinfo`, libc's by libc's;
//! - `socket`, `close`, `dup`, `dup2`, `dup3`, `fcntl(F_DUPFD…)`: keep the per-descriptor bookkeeping
//!   ([`fds`]) right.
//!
//! Rules every hook keeps (it runs inside somebody else's process): no panic crosses
//! the FFI boundary ([`guard`]), a hook entered from inside a hook on the same thread
//! calls the real function ([`guard`]), any internal failure falls back to the real
//! call, questions to the CLI time out, the CLI is reached with raw system calls (never
//! through these hooks), and the state is lock-free atomics so `fork` needs no hook:
//! a child has a copy of the table and no lock can be held across the fork. Without
//! `SHUNT_LAYER_SOCKET` every hook is the real function.
//!
//! Not hooked, on purpose: `bind` and `getsockname` (a program's own addresses are its
//! local ones; nothing to translate), `fork` (see above), UDP (passed through: DNS goes
//! through `getaddrinfo`) and non-IP families.
//! Programs that make system calls without libc (Go, static binaries) are not seen at
//! all; `shunt exec` refuses them before starting them.

pub mod addr;
pub mod client;
pub mod dns;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub mod fcntl;
pub mod fds;
pub mod guard;
pub mod hooks;
pub mod real;

/// Runs when the library is loaded, before the program's `main`: reads
/// `SHUNT_LAYER_SOCKET` once (a program may change its environment later).
extern "C" fn on_load() {
    let _ = guard::quietly(client::init);
}

/// Places [`on_load`] in the ELF `.init_array`, which the dynamic loader runs.
#[used]
#[link_section = ".init_array"]
static ON_LOAD: extern "C" fn() = on_load;
