//! The layering of the workspace, checked against `cargo metadata`: which orch crate may depend
//! on which (normal dependencies; dev-dependencies are free). docs/architecture.md draws the
//! same graph. A new edge means changing the table below on purpose, in review.
//!
//! The rules behind the table: the core depends on nothing of ours; adapters (embedded, aws,
//! slurm) depend on the core only, never on the runtime or on each other; the runtime never
//! names an adapter; one crate decides where data lives (connect) and one how workers run
//! (executors); the worker links no Slurm; the CLI links no controller; nothing ships the
//! test kit.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Each workspace crate and the workspace crates it may depend on directly.
const ALLOWED: &[(&str, &[&str])] = &[
    ("orch-core", &[]),
    ("orch-data", &["orch-core"]),
    ("orch-embedded", &["orch-core"]),
    ("orch-aws", &["orch-core"]),
    ("orch-slurm", &["orch-core"]),
    ("orch-runtime", &["orch-core", "orch-data"]),
    ("orch-connect", &["orch-core", "orch-embedded", "orch-aws"]),
    (
        "orch-executors",
        &["orch-core", "orch-embedded", "orch-slurm"],
    ),
    ("orch-crd", &["orch-core"]),
    // The dashboard reads stores through the core's ports and the runtime's views; the
    // binaries give it the stores.
    (
        "orch-dashboard",
        &["orch-core", "orch-data", "orch-runtime"],
    ),
    (
        "orch-worker",
        &["orch-core", "orch-data", "orch-runtime", "orch-connect"],
    ),
    (
        "orch-cli",
        &[
            "orch-core",
            "orch-data",
            "orch-runtime",
            "orch-connect",
            "orch-executors",
            "orch-crd",
            "orch-aws",
            "orch-dashboard",
        ],
    ),
    (
        "orch-operator",
        &[
            "orch-core",
            "orch-runtime",
            "orch-connect",
            "orch-executors",
            "orch-crd",
            "orch-dashboard",
        ],
    ),
    ("orch-testkit", &["orch-core"]),
];

/// Crates a binary must never link, directly or through another crate.
const NEVER_LINKED: &[(&str, &[&str])] = &[
    (
        "orch-worker",
        &[
            "orch-slurm",
            "orch-executors",
            "orch-operator",
            "orch-dashboard",
            "orch-testkit",
        ],
    ),
    ("orch-cli", &["orch-operator", "orch-testkit"]),
    ("orch-operator", &["orch-cli", "orch-testkit"]),
];

/// The normal dependencies of each workspace crate on other workspace crates.
fn workspace_edges() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata's JSON");
    let packages = meta["packages"].as_array().expect("packages");
    let ours: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().expect("a name").to_string())
        .collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .expect("dependencies")
                .iter()
                // `kind` is null for normal dependencies, "dev" or "build" otherwise.
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().expect("a name").to_string())
                .filter(|name| ours.contains(name))
                .collect();
            (p["name"].as_str().expect("a name").to_string(), deps)
        })
        .collect()
}

fn closure(edges: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_string()];
    while let Some(c) = todo.pop() {
        for d in edges.get(&c).into_iter().flatten() {
            if seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    seen
}

#[test]
fn every_crate_depends_only_on_what_the_layering_allows() {
    let edges = workspace_edges();
    let allowed: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
        .iter()
        .map(|(c, deps)| (*c, deps.iter().copied().collect()))
        .collect();
    let listed: BTreeSet<&str> = allowed.keys().copied().collect();
    let found: BTreeSet<&str> = edges.keys().map(String::as_str).collect();
    assert_eq!(
        found, listed,
        "every workspace crate has a row in ALLOWED, and every row a crate"
    );
    let mut wrong = Vec::new();
    for (krate, deps) in &edges {
        for dep in deps {
            if !allowed[krate.as_str()].contains(dep.as_str()) {
                wrong.push(format!("{krate} -> {dep}"));
            }
        }
    }
    assert!(wrong.is_empty(), "edges the layering forbids: {wrong:?}");
}

#[test]
fn binaries_never_link_what_they_must_not() {
    let edges = workspace_edges();
    let mut wrong = Vec::new();
    for (krate, never) in NEVER_LINKED {
        let linked = closure(&edges, krate);
        for n in *never {
            if linked.contains(*n) {
                wrong.push(format!("{krate} links {n}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:?}");
}

#[test]
fn the_layering_has_no_cycle_and_the_core_is_its_root() {
    let edges = workspace_edges();
    for krate in edges.keys() {
        assert!(
            !closure(&edges, krate).contains(krate),
            "{krate} depends on itself through others"
        );
    }
    assert!(edges["orch-core"].is_empty());
}
