//! The broker's dependency rules (ARCHITECTURE.md, "Dependency rules"), checked on the
//! source: every module of `engine/src/broker` may name only the modules of lower layers,
//! so the shard core knows none of the services built on it, no service knows the request
//! handlers, and the services do not name each other except downwards.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The layers, lowest first. A module may use modules of a lower layer and, when the layer
/// says so, the other modules of its own layer.
const LAYERS: &[(&str, bool, &[&str])] = &[
    (
        "foundation",
        true,
        &[
            "config",
            "protocol",
            "metadata",
            "cluster",
            "cluster_client",
            "node_identity",
            "listeners",
            "fetch_session",
            "request_context",
        ],
    ),
    ("shard core", false, &["shard"]),
    // One service in two files: the replica state and the partition paths through it.
    ("replication", true, &["replicas", "partition_io"]),
    (
        "services on replication",
        false,
        &["groups", "producer_ids"],
    ),
    // The transaction coordinator: producer ids from one, markers told to the other.
    ("transaction coordinator", false, &["transactions"]),
    ("one shard's services", false, &["services"]),
    ("request handlers", false, &["api"]),
    ("connections", false, &["connection"]),
    ("server", false, &["server"]),
];

fn layer_of(module: &str) -> Option<(usize, bool)> {
    LAYERS
        .iter()
        .position(|(_, _, mods)| mods.contains(&module))
        .map(|i| (i, LAYERS[i].1))
}

/// The broker modules a source file names (`super::x`, `crate::broker::x`, and the
/// `super::{x, y}` groups), comments left out. Inside `api/`, `super::` is the api module.
fn named_modules(text: &str, in_api: bool) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    for prefix in ["crate::broker::", "super::"] {
        if prefix == "super::" && in_api {
            continue;
        }
        let mut rest = code.as_str();
        while let Some(i) = rest.find(prefix) {
            rest = &rest[i + prefix.len()..];
            // Skip `crate::broker::` matched again as its `super::` suffix: not possible, but
            // a `self::super::` path would be; both forms name the same sibling.
            let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                group[..end].split(',').collect()
            } else {
                vec![rest]
            };
            for n in names {
                let n = n.trim();
                let ident: String = n
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                // Only module names (lower case); items of the parent are not layers.
                if ident.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                    out.insert(ident);
                }
            }
        }
    }
    out
}

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("broker source directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

#[test]
fn broker_modules_depend_only_downwards() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/broker");
    let mut violations = Vec::new();
    let mut checked = 0;
    for path in sources(&root) {
        let rel = path
            .strip_prefix(&root)
            .expect("under the broker directory");
        let in_api = rel.starts_with("api");
        let module = if in_api {
            "api".to_string()
        } else {
            rel.file_stem().unwrap().to_string_lossy().into_owned()
        };
        if module == "mod" {
            continue; // broker/mod.rs declares the modules.
        }
        let Some((layer, same_layer_ok)) = layer_of(&module) else {
            violations.push(format!("{}: module `{module}` has no layer", rel.display()));
            continue;
        };
        checked += 1;
        let text = std::fs::read_to_string(&path).expect("readable source");
        for used in named_modules(&text, in_api) {
            if used == module || used == "mod" {
                continue;
            }
            match layer_of(&used) {
                // Not a broker module (e.g. `super::` in a nested test module).
                None => {}
                Some((l, _)) if l < layer || (l == layer && same_layer_ok) => {}
                Some((l, _)) => violations.push(format!(
                    "{}: `{module}` ({}) uses `{used}` ({})",
                    rel.display(),
                    LAYERS[layer].0,
                    LAYERS[l].0
                )),
            }
        }
    }
    assert!(checked >= 20, "only {checked} broker modules found");
    assert!(
        violations.is_empty(),
        "dependency rules broken:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_checker_sees_an_upward_use() {
    // The shard core naming a service, and a grouped import naming the handlers.
    let names = named_modules(
        "use super::groups::Groups;\nuse crate::broker::{api, shard::Shard};\n// super::server",
        false,
    );
    assert!(names.contains("groups"));
    assert!(names.contains("api"));
    assert!(names.contains("shard"));
    assert!(!names.contains("server"), "comments are not code");
    assert!(layer_of("groups").unwrap().0 > layer_of("shard").unwrap().0);
}
