//! `shunt` as a kubectl plugin: installed as `kubectl-shunt` on PATH, the real `kubectl`
//! finds it and `kubectl shunt …` runs it; help names the command `kubectl shunt`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;
use std::process::Command;

/// A directory holding `kubectl-shunt` → the built `shunt`, removed on drop.
struct PluginDir(PathBuf);

impl Drop for PluginDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn plugin_dir() -> PluginDir {
    let dir = std::env::temp_dir().join(format!("shunt-plugin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_shunt"), dir.join("kubectl-shunt")).unwrap();
    PluginDir(dir)
}

fn kubectl(dir: &PluginDir, args: &[&str]) -> (bool, String) {
    let path = format!("{}:{}", dir.0.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("kubectl")
        .args(args)
        .env("PATH", path)
        .output()
        .expect("kubectl is needed for this test (scripts/setup installs the tools)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn kubectl_finds_the_plugin_and_help_names_kubectl_shunt() {
    let dir = plugin_dir();
    let (ok, list) = kubectl(&dir, &["plugin", "list"]);
    assert!(list.contains("kubectl-shunt"), "{ok} {list}");

    let (ok, help) = kubectl(&dir, &["shunt", "--help"]);
    assert!(ok, "{help}");
    assert!(help.contains("Usage: kubectl shunt"), "{help}");
    assert!(help.contains("intercept"), "{help}");

    let (ok, help) = kubectl(&dir, &["shunt", "sessions", "--help"]);
    assert!(ok, "{help}");
    assert!(help.contains("Usage: kubectl shunt sessions"), "{help}");

    // A usage error names the plugin command too and fails.
    let (ok, error) = kubectl(&dir, &["shunt", "intercept"]);
    assert!(!ok, "{error}");
    assert!(error.contains("kubectl shunt intercept"), "{error}");
}

#[test]
fn run_as_shunt_help_names_shunt() {
    let out = Command::new(env!("CARGO_BIN_EXE_shunt"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && help.contains("Usage: shunt"), "{help}");
}
