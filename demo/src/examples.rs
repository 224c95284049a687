//! The Service manifests the demo applies: `examples/`, built into the
//! binary, or another directory.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Service;
use serde::Deserialize;

use crate::Error;

/// The manifests of `examples/`, built into the binary so `portico demo`
/// works from any directory.
const BUILT_IN_EXAMPLES: [(&str, &str); 5] = [
    (
        "api-local.yaml",
        include_str!("../../examples/api-local.yaml"),
    ),
    ("dns.yaml", include_str!("../../examples/dns.yaml")),
    ("game.yaml", include_str!("../../examples/game.yaml")),
    (
        "intranet.yaml",
        include_str!("../../examples/intranet.yaml"),
    ),
    ("web.yaml", include_str!("../../examples/web.yaml")),
];

/// The Services the demo applies: from `dir` when given, else built in.
pub fn examples(dir: Option<&Path>) -> Result<Vec<Service>, Error> {
    match dir {
        Some(dir) => load_examples(dir),
        None => {
            let mut out = Vec::new();
            for (name, text) in BUILT_IN_EXAMPLES {
                out.extend(parse_services(Path::new(name), text)?);
            }
            Ok(out)
        }
    }
}

/// Services from every `*.yaml`/`*.yml` file in `dir`, in file name order.
pub fn load_examples(dir: &Path) -> Result<Vec<Service>, Error> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| {
            Error::Step(format!(
                "reading {}: {e} (run from the repository root or pass --examples)",
                dir.display()
            ))
        })?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| Error::Step(format!("reading {}: {e}", file.display())))?;
        out.extend(parse_services(&file, &text)?);
    }
    if out.is_empty() {
        return Err(Error::Step(format!(
            "no Service manifests in {}",
            dir.display()
        )));
    }
    Ok(out)
}

/// The Services of one manifest file (anything but a Service is an error).
fn parse_services(file: &Path, text: &str) -> Result<Vec<Service>, Error> {
    let mut out = Vec::new();
    {
        for doc in serde_yaml::Deserializer::from_str(text) {
            let value = serde_yaml::Value::deserialize(doc)
                .map_err(|e| Error::Step(format!("{}: {e}", file.display())))?;
            if value.is_null() {
                continue;
            }
            let kind = value
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or_default();
            if kind != "Service" {
                return Err(Error::Step(format!(
                    "{}: kind {kind:?} is not a Service",
                    file.display()
                )));
            }
            let svc: Service = serde_yaml::from_value(value)
                .map_err(|e| Error::Step(format!("{}: {e}", file.display())))?;
            out.push(svc);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_examples_are_the_examples_directory() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let from_disk = load_examples(&dir).expect("examples/");
        let built_in = examples(None).expect("built in");
        assert_eq!(
            built_in, from_disk,
            "BUILT_IN_EXAMPLES must list every file of examples/ (the demo works from any directory)"
        );
    }

    #[test]
    fn a_manifest_of_another_kind_is_refused_by_name() {
        let err = parse_services(
            Path::new("x.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n",
        )
        .expect_err("not a Service");
        assert!(
            err.to_string()
                .contains("x.yaml: kind \"Pod\" is not a Service"),
            "{err}"
        );
    }
}
