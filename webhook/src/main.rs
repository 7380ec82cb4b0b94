//! `shunt-webhook` binary: everything is in [`shunt_webhook::cli_main`], which the
//! `shunt __webhook` command shares; the binary only picks the allocator.

use std::process::ExitCode;

/// Reviews are allocation-bound (JSON in, JSON out): mimalloc roughly halves their cost
/// against glibc malloc under the multi-threaded runtime.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    shunt_webhook::cli_main::main_with(std::env::args_os(), std::future::pending())
}
