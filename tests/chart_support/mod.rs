//! Rendering the chart with helm for the chart tests (`tests/chart.rs`,
//! `tests/chart_render.rs`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::tool;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn chart() -> PathBuf {
    repo().join("charts/portico")
}

/// Run helm; `Ok(stdout)` or `Err(stderr)`.
pub fn run_helm(args: &[&str]) -> Result<String, String> {
    let output = Command::new(tool("helm"))
        .args(args)
        .output()
        .expect("run helm");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

pub fn values_files() -> Vec<Option<PathBuf>> {
    let mut files: Vec<Option<PathBuf>> = vec![None];
    let mut ci: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))
        .expect("charts/portico/ci")
        .map(|e| e.expect("entry").path())
        .collect();
    ci.sort();
    files.extend(ci.into_iter().map(Some));
    files
}

/// `helm template` of the chart as `release` in `namespace` with `args`.
pub fn template(release: &str, namespace: &str, args: &[&str]) -> Result<Vec<Value>, String> {
    let chart = chart();
    let mut all = vec![
        "template",
        release,
        chart.to_str().expect("utf-8"),
        "--namespace",
        namespace,
    ];
    all.extend(args);
    let out = run_helm(&all)?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&out) {
        let value = Value::deserialize(doc).map_err(|e| e.to_string())?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// `helm template` as release `portico` in `portico-system`, with a values
/// file and `--set`s.
pub fn render(values: Option<&Path>, set: &[&str]) -> Result<Vec<Value>, String> {
    let values = values.map(|v| v.to_string_lossy().into_owned());
    let mut args = Vec::new();
    if let Some(v) = &values {
        args.extend(["-f", v.as_str()]);
    }
    for s in set {
        args.extend(["--set", s]);
    }
    template("portico", "portico-system", &args)
}

/// Parse into the k8s-openapi type and back: a field the type does not
/// know (a typo, a wrong level) is lost on the way and fails the comparison.
pub fn typed<K: DeserializeOwned + serde::Serialize>(doc: &Value) -> K {
    let object: K = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{} {}: {e}", doc["kind"], doc["metadata"]["name"]));
    let back = serde_json::to_value(&object).expect("serialize");
    assert_eq!(
        &strip_nulls(back),
        &strip_nulls(doc.clone()),
        "{} {} has fields its type does not know",
        doc["kind"],
        doc["metadata"]["name"]
    );
    object
}

pub fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

pub fn find<'a>(docs: &'a [Value], kind: &str) -> Option<&'a Value> {
    docs.iter().find(|d| d["kind"] == kind)
}

/// The NOTES helm prints after `helm install` (a client-side dry run: no
/// cluster needed).
pub fn notes(set: &[&str]) -> String {
    let chart = chart();
    let mut args = vec![
        "install",
        "portico",
        chart.to_str().expect("utf-8"),
        "--namespace",
        "portico-system",
        "--dry-run=client",
    ];
    for s in set {
        args.extend(["--set", s]);
    }
    let out = run_helm(&args).unwrap_or_else(|e| panic!("helm install --dry-run {set:?}: {e}"));
    out.split_once("NOTES:\n")
        .unwrap_or_else(|| panic!("no NOTES in: {out}"))
        .1
        .to_string()
}

/// `rendered` lies within `live`: every field the chart rendered is on the
/// server with the same value (the server adds defaults, drops nothing).
pub fn held_as_rendered(rendered: &Value, live: &Value, path: &str) -> Result<(), String> {
    match (rendered, live) {
        (Value::Object(r), Value::Object(l)) => {
            for (key, value) in r.iter().filter(|(_, v)| !v.is_null()) {
                let at = format!("{path}.{key}");
                let on_server = l
                    .get(key)
                    .ok_or_else(|| format!("{at}: not on the server"))?;
                held_as_rendered(value, on_server, &at)?;
            }
            Ok(())
        }
        (Value::Array(r), Value::Array(l)) if r.len() == l.len() => r
            .iter()
            .zip(l)
            .enumerate()
            .try_for_each(|(i, (r, l))| held_as_rendered(r, l, &format!("{path}[{i}]"))),
        (r, l) if r == l => Ok(()),
        (r, l) => Err(format!("{path}: rendered {r}, on the server {l}")),
    }
}
