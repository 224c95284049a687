//! What the top-level README repeats from elsewhere stays the same: the AWS
//! IAM policy is `providers/aws/README.md`'s (whose own test proves it
//! against the provider's calls), copied between two `<!-- iam-policy -->`
//! markers.

use std::path::Path;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The text between the two `<!-- iam-policy -->` markers, and the IAM
/// actions of its JSON block.
fn iam_policy(path: &str) -> (String, Vec<String>) {
    let text = read(path);
    let parts: Vec<&str> = text.split("<!-- iam-policy -->").collect();
    assert_eq!(
        parts.len(),
        3,
        "{path}: the policy sits between exactly two <!-- iam-policy --> markers"
    );
    let section = parts[1].trim().to_string();
    let json = section
        .strip_prefix("```json")
        .and_then(|s| s.strip_suffix("```"))
        .unwrap_or_else(|| panic!("{path}: the policy is one ```json block"));
    let policy: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{path}: policy JSON: {e}"));
    let actions = policy["Statement"][0]["Action"]
        .as_array()
        .unwrap_or_else(|| panic!("{path}: Statement[0].Action is a list"))
        .iter()
        .map(|a| a.as_str().expect("an action is a string").to_string())
        .collect();
    (section, actions)
}

#[test]
fn the_readme_iam_policy_is_the_aws_providers() {
    let (top, top_actions) = iam_policy("README.md");
    let (aws, aws_actions) = iam_policy("providers/aws/README.md");
    let missing: Vec<_> = aws_actions
        .iter()
        .filter(|a| !top_actions.contains(a))
        .collect();
    let extra: Vec<_> = top_actions
        .iter()
        .filter(|a| !aws_actions.contains(a))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "README.md's IAM policy lacks {missing:?} and has {extra:?} beyond providers/aws/README.md's"
    );
    assert_eq!(
        top, aws,
        "README.md's IAM policy block differs from providers/aws/README.md's: copy it"
    );
}
