//! The library's layers point one way (design/ARCHITECTURE.md, "Layers of
//! the library"): every `crate::` path a file names is a module of a lower
//! layer, or of its own layer without closing a cycle. This reads the
//! sources, so a new import that points up fails here rather than in
//! review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first, by the first segment of a module's path.
const LAYERS: [&[&str]; 6] = [
    &["zmtp"],
    &[
        "address", "types", "endpoint", "error", "config", "stats", "shard",
    ],
    &["proto"],
    &["transport"],
    &["runtime"],
    &["messenger", "typed", ""],
];

fn layer_of(module: &str) -> usize {
    let top = module.split("::").next().unwrap_or("");
    LAYERS
        .iter()
        .position(|names| names.contains(&top))
        .unwrap_or_else(|| panic!("module {module:?} is in no layer: add it to LAYERS"))
}

/// Every `.rs` file under `src/`, by module path (`runtime::socket`).
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path
                    .strip_prefix(src)
                    .expect("under src")
                    .with_extension("");
                let mut parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
                    parts.pop();
                }
                out.insert(parts.join("::"), path);
            }
        }
    }
    out
}

/// The modules a file names through `crate::` (tests and comments aside).
fn imports(text: &str, known: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    let mut found = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let path: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            // The longest prefix that is a module.
            let mut parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
            while !parts.is_empty() {
                let candidate = parts.join("::");
                if known.contains_key(&candidate) {
                    found.insert(candidate);
                    break;
                }
                parts.pop();
            }
        }
    }
    found
}

#[test]
fn every_import_points_down_and_none_closes_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let known = modules(&src);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut upward = Vec::new();
    for (module, path) in &known {
        let text = std::fs::read_to_string(path).expect("read module");
        let deps: BTreeSet<String> = imports(&text, &known)
            .into_iter()
            .filter(|d| d != module && !d.is_empty())
            .collect();
        for dep in &deps {
            if layer_of(dep) > layer_of(module) {
                upward.push(format!("{module} -> {dep}"));
            }
        }
        graph.insert(module.clone(), deps);
    }
    assert!(upward.is_empty(), "imports that point up: {upward:#?}");

    // Depth-first search for a cycle among same-layer imports.
    fn visit<'a>(
        m: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, bool>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(true) => return None,
            Some(false) => {
                let from = stack.iter().position(|s| *s == m).unwrap_or(0);
                return Some(stack[from..].iter().map(|s| s.to_string()).collect());
            }
            None => {}
        }
        state.insert(m, false);
        stack.push(m);
        for dep in graph.get(m).into_iter().flatten() {
            if let Some(cycle) = visit(dep, graph, state, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        state.insert(m, true);
        None
    }
    let mut state = BTreeMap::new();
    for module in graph.keys() {
        let cycle = visit(module, &graph, &mut state, &mut Vec::new());
        assert!(cycle.is_none(), "import cycle: {cycle:?}");
    }
}
