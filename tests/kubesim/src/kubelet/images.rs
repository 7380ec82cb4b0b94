//! The image registry: what a container's `image` runs. kubesim pulls nothing; an image
//! name (tag and digest ignored) maps to a local argv prefix, from `Options.images` or
//! `kubesim up --images FILE`. One image is built in: `kubesim/echo`, the echo server
//! (`kubesim echo`), run by re-executing the kubesim binary.
//!
//! The `--images` file is either JSON (`{"shunt/sidecar": ["/path/shunt-sidecar"],
//! "busybox": "sh"}`, a list or a space-separated string per image) or lines of
//! `image=command args…` (`#` starts a comment).
//!
//! Finding the kubesim binary for the echo image: `$KUBESIM_BIN` if set; else the running
//! executable if it is `kubesim`; else `kubesim` beside it or in its parent directory
//! (an integration test runs from `target/<profile>/deps/`, cargo builds the binary into
//! `target/<profile>/`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

/// The built-in echo image.
pub const ECHO_IMAGE: &str = "kubesim/echo";

/// Environment variable naming the kubesim binary (for the echo image).
pub const KUBESIM_BIN: &str = "KUBESIM_BIN";

/// Image name → argv prefix.
#[derive(Clone, Debug, Default)]
pub struct Images {
    map: BTreeMap<String, Vec<String>>,
}

/// The repository part of an image reference: no digest, no tag.
pub fn image_name(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    match image.rfind(':') {
        Some(colon) if !image[colon..].contains('/') => &image[..colon],
        _ => image,
    }
}

impl Images {
    /// A registry with `map` (image name without tag → argv prefix) besides the built-ins.
    pub fn new(map: BTreeMap<String, Vec<String>>) -> Images {
        Images { map }
    }

    /// The argv prefix of `image`, or what to tell the user.
    pub fn resolve(&self, image: &str) -> Result<Vec<String>, String> {
        let name = image_name(image);
        let short = name
            .strip_prefix("docker.io/library/")
            .or_else(|| name.strip_prefix("docker.io/"))
            .unwrap_or(name);
        if let Some(argv) = self
            .map
            .get(name)
            .or_else(|| self.map.get(short))
            .filter(|a| !a.is_empty())
        {
            return Ok(argv.clone());
        }
        if name == ECHO_IMAGE {
            let bin = kubesim_binary()?;
            return Ok(vec![bin.to_string_lossy().into_owned(), "echo".into()]);
        }
        Err(format!(
            "image {image:?} is not in kubesim's image registry (known: {ECHO_IMAGE}{}); map it to a local command with Options.images or `kubesim up --images FILE`",
            self.map.keys().map(|k| format!(", {k}")).collect::<String>()
        ))
    }
}

/// Parses an `--images` file (JSON object, or `image=command args` lines).
pub fn parse_images(text: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let split = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    if text.trim_start().starts_with('{') {
        let doc: Value = serde_json::from_str(text).map_err(|e| format!("the images file is not valid JSON: {e}"))?;
        let mut out = BTreeMap::new();
        for (image, argv) in doc.as_object().into_iter().flatten() {
            let argv = match argv {
                Value::String(s) => split(s),
                Value::Array(items) => items
                    .iter()
                    .map(|i| {
                        i.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| format!("image {image:?}: every argv item must be a string"))
                    })
                    .collect::<Result<_, _>>()?,
                _ => return Err(format!("image {image:?}: expected a command string or an argv list")),
            };
            if argv.is_empty() {
                return Err(format!("image {image:?}: empty command"));
            }
            out.insert(image_name(image).to_owned(), argv);
        }
        return Ok(out);
    }
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (image, command) = line.split_once('=').ok_or_else(|| {
            format!(
                "images file line {}: expected `image=command args`, got {line:?}",
                n + 1
            )
        })?;
        let argv = split(command);
        if argv.is_empty() {
            return Err(format!("images file line {}: empty command for {image:?}", n + 1));
        }
        out.insert(image_name(image.trim()).to_owned(), argv);
    }
    Ok(out)
}

/// The kubesim binary (see the module docs for the search order).
pub fn kubesim_binary() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os(KUBESIM_BIN) {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("${KUBESIM_BIN} is {}, which is not a file", bin.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the running executable: {e}"))?;
    if exe.file_name().is_some_and(|n| n == "kubesim") {
        return Ok(exe);
    }
    let candidates: Vec<PathBuf> = exe.ancestors().skip(1).take(2).map(|dir| dir.join("kubesim")).collect();
    candidates.iter().find(|c| c.is_file()).cloned().ok_or_else(|| {
        format!(
            "the {ECHO_IMAGE} image runs the kubesim binary, which is not at {}; build it (`cargo build -p kubesim`) or set ${KUBESIM_BIN}",
            candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(" or ")
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_tags_and_digests_but_not_registry_ports() {
        assert_eq!(image_name("shunt/sidecar:1.2"), "shunt/sidecar");
        assert_eq!(image_name("reg:5000/x/y"), "reg:5000/x/y");
        assert_eq!(image_name("reg:5000/x/y:v1@sha256:ab"), "reg:5000/x/y");
    }

    #[test]
    fn images_files_parse_in_both_forms() {
        let lines = parse_images("# demo\nshunt/sidecar=/bin/sidecar --flag\nbusybox:1.36 = sh\n").unwrap();
        assert_eq!(lines["shunt/sidecar"], ["/bin/sidecar", "--flag"]);
        assert_eq!(lines["busybox"], ["sh"]);
        let json = parse_images(r#"{"a": ["x", "y z"], "b": "sleep 5"}"#).unwrap();
        assert_eq!(json["a"], ["x", "y z"]);
        assert_eq!(json["b"], ["sleep", "5"]);
        assert!(parse_images("nonsense").is_err());
        let images = Images::new(json);
        assert_eq!(images.resolve("docker.io/library/b:latest").unwrap(), ["sleep", "5"]);
        assert!(images.resolve("unknown").unwrap_err().contains("--images"));
    }
}
