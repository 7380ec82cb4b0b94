//! `shunt exec` refuses what it cannot serve before it touches the cluster: a program
//! that does not exist, and a statically linked one (the layer is loaded by the dynamic
//! loader, which a static program never runs). The end-to-end runs of `shunt exec` on
//! kubesim are in the netns e2e tests.
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::Command;

fn shunt_exec(program: &str) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shunt"))
        .args([
            "--kubeconfig",
            "/nonexistent/kubeconfig",
            "exec",
            "deploy/api",
            "--",
            program,
        ])
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_missing_program_is_named() {
    let (code, err) = shunt_exec("no-such-program-for-shunt");
    assert_eq!(code, Some(1));
    assert!(err.contains("no-such-program-for-shunt: command not found"), "{err}");
}

#[test]
fn a_static_program_is_refused_with_what_to_do_instead() {
    // Debian's ldconfig is statically linked; elsewhere, a minimal static ELF header.
    let dir = std::env::temp_dir().join(format!("shunt-exec-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let real_static = std::fs::read("/sbin/ldconfig")
        .ok()
        .and_then(|b| shunt_cli::exec::program::inspect(&b))
        .is_some_and(|elf| !elf.dynamic);
    let program = match real_static {
        true => "/sbin/ldconfig".to_owned(),
        false => {
            let mut elf = vec![0u8; 0x80];
            elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
            let path = dir.join("static-prog");
            std::fs::write(&path, &elf).unwrap();
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path.display().to_string()
        }
    };
    let (code, err) = shunt_exec(&program);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("is statically linked") && err.contains("shunt intercept"),
        "{err}"
    );
}
