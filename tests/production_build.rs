//! The production image holds the controller and nothing meant for another
//! audience: the build the Dockerfile runs leaves out the demo
//! (`portico-demo`), the Kubernetes API stand-in it pulls in
//! (`kube-standin`) and the test builders (feature `testing`), while the
//! default build still has the demo. Checked on the resolved dependency tree
//! (`cargo tree`, offline: Cargo.lock is committed), so no build is needed.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// Crates that belong to the demo and the tests, never to `portico run`.
const NOT_FOR_PRODUCTION: [&str; 2] = ["portico-demo", "kube-standin"];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The arguments of the Dockerfile's `cargo build` that choose features.
fn dockerfile_feature_flags() -> Vec<String> {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).expect("Dockerfile");
    let build: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("RUN "))
        .find_map(|l| l.trim().strip_prefix("cargo build"))
        .expect("the Dockerfile runs `cargo build`")
        .split_whitespace()
        .collect();
    assert!(
        build.windows(2).any(|w| w == ["--bin", "portico"]),
        "the image builds the portico binary: {build:?}"
    );
    let mut flags = Vec::new();
    let mut args = build.iter();
    while let Some(arg) = args.next() {
        match *arg {
            "--no-default-features" | "--all-features" => flags.push(arg.to_string()),
            "--features" | "-F" => {
                flags.push("--features".into());
                flags.push(args.next().expect("a feature list").to_string());
            }
            other if other.starts_with("--features=") => flags.push(other.to_string()),
            _ => {}
        }
    }
    flags
}

/// The portico package built with `flags`: its enabled features and every
/// crate it links (normal dependencies, transitively).
struct Tree {
    features: BTreeSet<String>,
    crates: BTreeSet<String>,
}

fn tree(flags: &[String]) -> Tree {
    let output = Command::new(option_env!("CARGO").unwrap_or("cargo"))
        .arg("tree")
        .arg("--manifest-path")
        .arg(repo().join("Cargo.toml"))
        .args(["--offline", "--locked", "-p", "portico", "-e", "normal"])
        .args(["--prefix", "none", "--format", "{p}|{f}"])
        .args(flags)
        .output()
        .expect("run cargo tree");
    assert!(
        output.status.success(),
        "cargo tree {flags:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    let mut lines = stdout.lines();
    let (root, features) = lines
        .next()
        .and_then(|l| l.split_once('|'))
        .expect("the root package comes first");
    assert!(root.starts_with("portico "), "{root}");
    let crates = lines
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    Tree {
        features: features
            .split(',')
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect(),
        crates,
    }
}

#[test]
fn the_image_leaves_out_the_demo_the_stand_in_and_the_test_builders() {
    let flags = dockerfile_feature_flags();
    let production = tree(&flags);
    for name in NOT_FOR_PRODUCTION {
        assert!(
            !production.crates.contains(name),
            "the Dockerfile's build ({flags:?}) links {name}"
        );
    }
    for feature in ["demo", "testing"] {
        assert!(
            !production.features.contains(feature),
            "the Dockerfile's build ({flags:?}) enables feature {feature}"
        );
    }
    // What the image does need, so an empty tree cannot pass.
    for name in ["portico-slb", "portico-aws", "kube"] {
        assert!(production.crates.contains(name), "{name} is linked");
    }
}

#[test]
fn the_default_build_has_the_demo() {
    // `cargo run -- demo` (the README's first command) needs it.
    let default = tree(&[]);
    for name in NOT_FOR_PRODUCTION {
        assert!(
            default.crates.contains(name),
            "the default build links {name}"
        );
    }
    assert!(default.features.contains("demo"), "{:?}", default.features);
    assert!(
        !default.features.contains("testing"),
        "the builders stay out of the default binary too: {:?}",
        default.features
    );
}
