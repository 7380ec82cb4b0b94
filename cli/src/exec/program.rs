//! What `shunt exec` checks before it starts a program: that it exists, and that the
//! layer can work in it. The layer is loaded by the dynamic loader, so a statically
//! linked program (no `PT_INTERP`) would never see it; Go programs make their socket
//! system calls without libc, so the layer would not see their traffic. Both are
//! refused with a message that says what to use instead. Scripts (`#!`) are checked
//! through their interpreter.

use std::path::{Path, PathBuf};

/// Why a program cannot run under `shunt exec`.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    /// Not on `PATH` / no such file.
    #[error("{0}: command not found (not a path and not on PATH)")]
    NotFound(String),
    /// Could not be read.
    #[error("cannot read {path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A static ELF.
    #[error("{0} is statically linked: shunt exec works through the dynamic loader (LD_PRELOAD) and cannot see its sockets; use `shunt intercept` and run the program yourself")]
    Static(PathBuf),
    /// A Go binary.
    #[error("{0} is a Go program: Go makes its socket calls without libc, so shunt exec cannot give it the pod's traffic, network or DNS; use `shunt intercept TARGET --port P:L` and run it yourself (only its environment would work here)")]
    Go(PathBuf),
}

/// The program's path after a `PATH` lookup, checked.
pub fn check(program: &str) -> Result<PathBuf, ProgramError> {
    let path = find(program).ok_or_else(|| ProgramError::NotFound(program.to_owned()))?;
    check_file(&path, 0)?;
    Ok(path)
}

fn find(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| is_executable(p))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn check_file(path: &Path, depth: u8) -> Result<(), ProgramError> {
    let bytes = std::fs::read(path).map_err(|source| ProgramError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    if let Some(line) = bytes.strip_prefix(b"#!") {
        let line = line.split(|b| *b == b'\n').next().unwrap_or_default();
        let text = String::from_utf8_lossy(line);
        let mut words = text.split_whitespace();
        let interpreter = words.next().unwrap_or_default();
        // `#!/usr/bin/env python3`: the program that runs is the one env finds.
        let interpreter = match (Path::new(interpreter).file_name(), words.next()) {
            (Some(name), Some(real)) if name == "env" && !real.starts_with('-') => real.to_owned(),
            _ => interpreter.to_owned(),
        };
        return match (depth < 4).then(|| find(&interpreter)).flatten() {
            Some(next) => check_file(&next, depth + 1),
            None => Ok(()), // the kernel reports a missing interpreter clearly enough
        };
    }
    match inspect(&bytes) {
        Some(Elf { dynamic: false, .. }) => Err(ProgramError::Static(path.to_owned())),
        Some(Elf { go: true, .. }) => Err(ProgramError::Go(path.to_owned())),
        _ => Ok(()),
    }
}

/// What matters about an ELF file.
#[derive(Debug, PartialEq, Eq)]
pub struct Elf {
    /// Has a `PT_INTERP` program header (runs through the dynamic loader).
    pub dynamic: bool,
    /// Has Go's build info section (`.go.buildinfo`) or build id note.
    pub go: bool,
}

/// Reads the program and section headers of a little-endian ELF; `None` if `bytes` is
/// not one.
pub fn inspect(bytes: &[u8]) -> Option<Elf> {
    if bytes.get(..4)? != b"\x7fELF" || *bytes.get(5)? != 1 {
        return None;
    }
    let wide = match bytes.get(4)? {
        1 => false,
        2 => true,
        _ => return None,
    };
    let u16_at = |at: usize| bytes.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let word_at = |at: usize| -> Option<usize> {
        if wide {
            let b = bytes.get(at..at + 8)?;
            usize::try_from(u64::from_le_bytes(b.try_into().ok()?)).ok()
        } else {
            u32_at(at)
        }
    };
    let (phoff, shoff, rest) = if wide {
        (word_at(0x20)?, word_at(0x28)?, 0x36)
    } else {
        (word_at(0x1c)?, word_at(0x20)?, 0x2a)
    };
    let (phentsize, phnum) = (u16_at(rest)?, u16_at(rest + 2)?);
    let (shentsize, shnum, shstrndx) = (u16_at(rest + 4)?, u16_at(rest + 6)?, u16_at(rest + 8)?);
    const PT_INTERP: usize = 3;
    let dynamic = (0..phnum).any(|i| u32_at(phoff + i * phentsize) == Some(PT_INTERP));
    let section = |i: usize| -> Option<(usize, usize, usize)> {
        let base = shoff + i * shentsize;
        if wide {
            Some((u32_at(base)?, word_at(base + 0x18)?, word_at(base + 0x20)?))
        } else {
            Some((u32_at(base)?, u32_at(base + 0x10)?, u32_at(base + 0x14)?))
        }
    };
    let names = section(shstrndx).map(|(_, off, _)| off);
    let go = names.is_some_and(|names| {
        (0..shnum).filter_map(section).any(|(name, _, _)| {
            let start = names + name;
            let end = bytes
                .get(start..)
                .and_then(|b| b.iter().position(|c| *c == 0))
                .map(|n| start + n);
            matches!(
                end.and_then(|end| bytes.get(start..end)),
                Some(b".go.buildinfo" | b".note.go.buildid")
            )
        })
    });
    Some(Elf { dynamic, go })
}

/// Where `libshunt_layer.so` is: `$SHUNT_LAYER_PATH`, else next to the `shunt` binary
/// (a release archive, or `target/<profile>/` after `cargo build`), else in its `deps/`
/// (where `cargo test` leaves it), the newest of those.
pub fn layer_path() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("SHUNT_LAYER_PATH") {
        let path = PathBuf::from(path);
        anyhow::ensure!(path.is_file(), "SHUNT_LAYER_PATH={} is not a file", path.display());
        return Ok(path);
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidates = [
        dir.join("libshunt_layer.so"),
        dir.join("deps/libshunt_layer.so"),
        dir.join("../lib/shunt/libshunt_layer.so"),
    ];
    candidates
        .iter()
        .filter_map(|p| Some((std::fs::metadata(p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p.clone())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "libshunt_layer.so is not next to {} (build it with `cargo build -p shunt-layer`, or set SHUNT_LAYER_PATH)",
                exe.display()
            )
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_programs_pass_and_missing_ones_are_named() {
        let sh = check("sh").unwrap();
        assert!(inspect(&std::fs::read(&sh).unwrap()).is_some_and(|e| e.dynamic && !e.go));
        assert!(matches!(check("no-such-program-here"), Err(ProgramError::NotFound(_))));
        let err = check("no-such-program-here").unwrap_err().to_string();
        assert!(err.contains("command not found"), "{err}");
        assert_eq!(inspect(b"#!/bin/sh\n"), None);
    }

    #[test]
    fn static_and_go_elves_are_recognised() {
        // A minimal 64-bit ELF header with no program headers (static) and one section
        // named `.go.buildinfo`.
        let mut elf = vec![0u8; 0x200];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let names = b"\0.go.buildinfo\0";
        elf[0x100..0x100 + names.len()].copy_from_slice(names);
        elf[0x28..0x30].copy_from_slice(&0x140u64.to_le_bytes()); // shoff
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes()); // shentsize
        elf[0x3c..0x3e].copy_from_slice(&2u16.to_le_bytes()); // shnum
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes()); // shstrndx
                                                              // section 0: name offset 1 (".go.buildinfo"); section 1: the names table at 0x100
        elf[0x140..0x144].copy_from_slice(&1u32.to_le_bytes());
        elf[0x180 + 0x18..0x180 + 0x20].copy_from_slice(&0x100u64.to_le_bytes());
        assert_eq!(
            inspect(&elf),
            Some(Elf {
                dynamic: false,
                go: true
            })
        );
        let dir = std::env::temp_dir().join(format!("shunt-exec-static-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("prog");
        std::fs::write(&file, &elf).unwrap();
        let err = check(file.to_str().unwrap()).unwrap_err().to_string();
        assert!(
            err.contains("statically linked") && err.contains("shunt intercept"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
