//! The house's rules that the compiler does not keep, kept by a test: no function over
//! [`MAX_LINES`] lines outside tests.
//!
//! A long function hides its steps; the issue that split the crates set 80 lines as the bound,
//! and every function outside tests now keeps it. [`ALLOWED`] would list one that may not, at
//! its length: a new long function, or a listed one that grew, fails the test; so does a listed
//! one that got short (take it off the list, so it stays short).

use std::path::{Path, PathBuf};

const MAX_LINES: usize = 80;

/// Functions over the bound, each with its length when it was let in: (file, function, lines).
/// Empty since every one was split; a function that must be long goes here, with a reason.
const ALLOWED: &[(&str, &str, usize)] = &[];

/// The Rust sources of the workspace that are not tests.
fn sources(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs: Vec<PathBuf> = ["src", "crates", "sim/src", "lazyfs/src"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if name != "tests" && name != "target" {
                    dirs.push(path);
                }
            } else if name.ends_with(".rs") && name != "tests.rs" {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Each function of `text` (before its `#[cfg(test)] mod tests`) with its length in lines,
/// from its `fn` line to the `}` at the same indentation.
fn functions(text: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]")
            && lines
                .get(i + 1)
                .is_some_and(|l| l.trim_start().starts_with("mod tests"))
        {
            break;
        }
        let Some(name) = fn_name(trimmed) else {
            continue;
        };
        if line.trim_end().ends_with(';') {
            continue; // a declaration in a trait
        }
        let indent = line.len() - trimmed.len();
        let end = lines[i + 1..].iter().position(|l| {
            let t = l.trim_start();
            l.len() - t.len() == indent && t.starts_with('}')
        });
        if let Some(end) = end {
            found.push((name, end + 2));
        }
    }
    found
}

/// The name of the function a line declares, if it declares one.
fn fn_name(line: &str) -> Option<String> {
    let mut rest = line;
    for prefix in [
        "pub(crate) ",
        "pub(super) ",
        "pub ",
        "async ",
        "const ",
        "unsafe ",
    ] {
        rest = rest.strip_prefix(prefix).unwrap_or(rest);
    }
    let rest = rest.strip_prefix("async ").unwrap_or(rest);
    let name: String = rest
        .strip_prefix("fn ")?
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

#[test]
fn no_function_outside_tests_is_longer_than_80_lines_unless_listed_and_none_grew() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    for path in sources(root) {
        let relative = path
            .strip_prefix(root)
            .expect("found under the root")
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(&path).expect("a source file is readable");
        for (name, lines) in functions(&text) {
            if lines <= MAX_LINES {
                continue;
            }
            let allowed = ALLOWED
                .iter()
                .find(|(file, f, _)| *file == relative && *f == name);
            match allowed {
                Some((_, _, max)) if lines <= *max => seen.push((relative.clone(), name)),
                Some((_, _, max)) => problems.push(format!(
                    "{relative}: fn {name} grew to {lines} lines (listed at {max}); split it"
                )),
                None => problems.push(format!(
                    "{relative}: fn {name} has {lines} lines, over {MAX_LINES}; split it"
                )),
            }
        }
    }
    for (file, name, _) in ALLOWED {
        if !seen.iter().any(|(f, n)| f == file && n == name) {
            problems.push(format!(
                "{file}: fn {name} is no longer over {MAX_LINES} lines (or moved): take it off ALLOWED in src/house_rules.rs"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_scanner_measures_a_function_from_fn_to_its_brace() {
    let text =
        "fn a() {\n    x();\n}\n    pub async fn b(\n        y: u8,\n    ) {\n    }\nfn c();\n";
    assert_eq!(
        functions(text),
        vec![("a".to_string(), 3), ("b".to_string(), 4)]
    );
}

/// The packages one workspace crate builds with (normal dependencies, its own features), as
/// `cargo tree` resolves them.
fn dependencies(package: &str) -> std::collections::BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["tree", "--offline", "-e", "normal", "--prefix", "none"])
        .args(["-f", "{p}", "-p", package])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs the tests, so it can be run");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// The arrows ARCHITECTURE.md draws, as the compiler resolves them: the journal and the core
/// know no transport, and the shipped binary links no bench, test or fuzz code.
#[test]
fn the_crates_depend_only_the_way_the_architecture_says() {
    let transports = [
        "tonic",
        "axum",
        "hyper",
        "h2",
        "rumqttc",
        "rdkafka",
        "object_store",
    ];
    let tools = ["plotters", "hdrhistogram", "proptest", "criterion"];
    let ours = ["sidelog-bench", "sidelog-testkit", "sidelog-fuzz-checks"];
    let rules: [(&str, Vec<&str>); 3] = [
        (
            "sidelog-journal",
            [&transports[..], &["sidelog-core"]].concat(),
        ),
        ("sidelog-core", transports.to_vec()),
        ("sidelog", [&tools[..], &ours[..]].concat()),
    ];
    for (package, forbidden) in rules {
        let found = dependencies(package);
        assert!(found.contains(package), "cargo tree -p {package} is empty");
        for name in forbidden {
            assert!(
                !found.contains(name),
                "{package} depends on {name} (cargo tree -p {package} -i {name} says how)"
            );
        }
    }
}

/// `rust-version` in every crate of the workspace is a promise: a toolchain that old builds
/// it. It cannot be lower than what a dependency asks for (redb 4.5 asks for 1.90; the
/// crates said 1.85 until this test). What `cargo metadata` resolves, offline.
#[test]
fn the_declared_rust_version_is_not_below_any_dependencys() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs the tests, so it can be run");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let members: std::collections::BTreeSet<&str> = metadata["workspace_members"]
        .as_array()
        .expect("workspace_members")
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    let version = |p: &serde_json::Value| -> Option<Vec<u64>> {
        let text = p["rust_version"].as_str()?;
        Some(text.split('.').map(|n| n.parse().unwrap_or(0)).collect())
    };
    let packages = metadata["packages"].as_array().expect("packages");
    let (ours, theirs): (Vec<_>, Vec<_>) = packages
        .iter()
        .partition(|p| members.contains(p["id"].as_str().unwrap_or_default()));
    let needed = theirs
        .iter()
        .filter_map(|p| Some((version(p)?, p["name"].as_str()?)))
        .max()
        .expect("some dependency declares a rust-version");
    for package in ours {
        let name = package["name"].as_str().unwrap_or_default();
        let declared =
            version(package).unwrap_or_else(|| panic!("{name} declares no rust-version"));
        assert!(
            declared >= needed.0,
            "{name} declares rust-version {declared:?}, below {} ({:?})",
            needed.1,
            needed.0
        );
    }
}
