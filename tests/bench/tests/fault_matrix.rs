//! The fault matrix in CI: `shunt-bench faults --check` on the debug build, netns mode
//! (root). Each of the nine faults runs on a fresh stack of `shunt demo`; the run fails
//! if a request that no session matched failed, a request reached the wrong developer,
//! or a fault did not recover by itself. The table is printed with the test's output
//! (`.config/nextest.toml` shows it on success too and runs this test alone, since its
//! 5 s request timeouts should not compete with the rest of the suite for two cores).
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::Command;

#[test]
fn the_fault_matrix_fails_no_unmatched_request_and_misroutes_nothing() {
    if !shunt_netns::root_available("fault matrix") {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_shunt-bench"))
        .args(["faults", "--check"])
        .output()
        .expect("shunt-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "shunt-bench faults --check: {}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("Checks passed"), "{stdout}\n{stderr}");
}
