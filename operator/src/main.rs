//! `shunt-operator` binary: everything is in [`shunt_operator::cli_main`], which the
//! `shunt __operator` command shares.

use std::process::ExitCode;

fn main() -> ExitCode {
    shunt_operator::cli_main::main_with(std::env::args_os(), std::future::pending())
}
