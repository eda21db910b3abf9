//! Keeps documentation and code in step, and the code's structure what ARCHITECTURE.md says:
//! crates depend on each other one way (front end → planner → plan format → runtime), no
//! module of any crate imports a module that imports it back, the planner is pure, and the
//! runtime does not link the compiler.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use adcnn_compiler::dsl::ops::KINDS;
use adcnn_tests::repo_root;

#[test]
fn the_layer_reference_lists_every_kind_with_its_synopsis() {
    let page = std::fs::read_to_string(repo_root().join("book/src/layers.md")).expect("layers.md");
    for (kind, synopsis) in KINDS {
        assert!(
            page.contains(&format!("| `{kind}`")),
            "book/src/layers.md lacks a row for `{kind}`"
        );
        assert!(
            page.contains(&format!("`{synopsis}`")),
            "book/src/layers.md lacks the synopsis `{synopsis}`"
        );
    }
}

#[test]
fn the_readme_test_command_is_what_ci_runs() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let ci = std::fs::read_to_string(repo_root().join(".ci/run")).expect(".ci/run");
    let command = "cargo test --workspace";
    assert!(
        readme.lines().any(|l| l.trim() == command),
        "README's test command changed"
    );
    assert!(
        ci.lines().any(|l| l.trim() == command),
        ".ci/run must run `{command}`"
    );
}

/// Every crate's `src/`, by crate name.
const CRATES: [(&str, &str); 4] = [
    ("adcnn-core", "compiler/core/src"),
    ("adcnn-compiler", "compiler/src"),
    ("adcnn-kernels", "runtime/kernels/src"),
    ("adcnn-runtime", "runtime/src"),
];

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let mut found = Vec::new();
    for (name, src) in CRATES {
        let graph = module_graph(&repo_root().join(src));
        assert!(
            graph.len() > 3,
            "{name}: only {} modules found",
            graph.len()
        );
        for cycle in cycles(&graph) {
            let names: Vec<String> = cycle
                .iter()
                .map(|m| {
                    if m.is_empty() {
                        "lib".into()
                    } else {
                        m.join("::")
                    }
                })
                .collect();
            found.push(format!("{name}: {}", names.join(" ↔ ")));
        }
    }
    assert!(found.is_empty(), "module cycles:\n{}", found.join("\n"));
}

/// The checker itself: a planted cycle (and a parent's re-export, which is not one).
#[test]
fn the_cycle_check_finds_a_planted_cycle() {
    let dir = std::env::temp_dir().join(format!("adcnn-tidy-{}", std::process::id()));
    let write = |p: &str, text: &str| {
        let path = dir.join(p);
        std::fs::create_dir_all(path.parent().expect("a folder")).expect("mkdir");
        std::fs::write(path, text).expect("writes");
    };
    write("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n");
    write("a.rs", "use crate::b::B;\npub struct A;\n");
    write(
        "b.rs",
        "pub struct B;\nfn f() -> crate::a::A { crate::a::A }\n",
    );
    write("c/mod.rs", "mod d;\npub use d::D;\n");
    write("c/d.rs", "use super::super::a::A;\npub struct D;\n");
    let graph = module_graph(&dir);
    let c = cycles(&graph);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(c.len(), 1, "{c:?} in {graph:?}");
    let mut names: Vec<String> = c[0].iter().map(|m| m.join("::")).collect();
    names.sort();
    assert_eq!(names, ["a", "b"]);
}

/// The `[dependencies]` (not dev-dependencies) of a crate's manifest that are adcnn crates.
fn adcnn_dependencies(manifest: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo_root().join(manifest)).expect("manifest");
    let mut in_deps = false;
    let mut deps = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && line.starts_with("adcnn-") {
            deps.insert(line.split(['.', ' ', '=']).next().unwrap_or("").to_string());
        }
    }
    deps
}

#[test]
fn crates_depend_on_each_other_one_way() {
    let deps = |m| adcnn_dependencies(m).into_iter().collect::<Vec<_>>();
    assert_eq!(deps("compiler/core/Cargo.toml"), Vec::<String>::new());
    assert_eq!(deps("compiler/Cargo.toml"), ["adcnn-core"]);
    assert_eq!(deps("runtime/kernels/Cargo.toml"), ["adcnn-core"]);
    // The runtime loads plans without the DSL parser, the planner or the graph interpreter.
    assert_eq!(deps("runtime/Cargo.toml"), ["adcnn-core", "adcnn-kernels"]);
}

/// Words that mean I/O, threads, sockets, code generation or the command line.
const IMPURE: [&str; 9] = [
    "std::fs",
    "std::thread",
    "std::net",
    "std::io",
    "cranelift",
    "clap",
    "tokio",
    "crossbeam",
    "Instant::now",
];

#[test]
fn the_planner_is_pure() {
    let dir = repo_root().join("compiler/src/plan");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("plan/")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.push(repo_root().join("compiler/src/lower.rs"));
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("source");
        for word in IMPURE {
            assert!(
                !text.contains(word),
                "{} mentions `{word}`: the planner does no I/O, spawns nothing, generates no code and parses no command line",
                f.display()
            );
        }
    }
}
// ---- module graphs -------------------------------------------------------------------

type Module = Vec<String>;

/// The modules of a crate's `src/` folder (a file is a module; `mod.rs` and `lib.rs` name
/// their folder's), by path (`["dsl", "ops"]`), with their source files. Binaries are left
/// out: they are the crate's users, not part of its structure.
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    let mut mods = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "bin") {
                    stack.push(p);
                }
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(src).expect("under src").with_extension("");
            let mut path: Module = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if path.last().is_some_and(|l| l == "mod" || l == "lib") {
                path.pop();
            }
            mods.insert(path, p);
        }
    }
    mods
}

/// The longest prefix of `path` that is a module.
fn resolve(path: &[String], mods: &BTreeMap<Module, PathBuf>) -> Module {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| mods.contains_key(p))
        .unwrap_or_default()
}

/// The paths on a line of code: maximal runs of identifiers joined by `::` (a trailing
/// `::{` group counts as its prefix).
fn paths(line: &str) -> Vec<Vec<&str>> {
    let mut out = Vec::new();
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        if !ident(bytes[i]) || (i > 0 && (ident(bytes[i - 1]) || bytes[i - 1] == b':')) {
            i += 1;
            continue;
        }
        let mut parts = Vec::new();
        let mut j = i;
        loop {
            let start = j;
            while j < bytes.len() && ident(bytes[j]) {
                j += 1;
            }
            parts.push(&line[start..j]);
            if line[j..].starts_with("::")
                && line[j + 2..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            {
                j += 2;
            } else {
                break;
            }
        }
        if parts.len() > 1 || line[j..].starts_with("::") {
            out.push(parts);
        }
        i = j.max(i + 1);
    }
    out
}

/// Which modules each module uses: every `crate::`, `super::` and `self::` path outside an
/// inline `#[cfg(test)] mod tests { … }`, and a parent's `child::` paths. `mod` declarations and a
/// parent's `pub use child::…` re-exports are how a folder presents its parts, not uses.
fn module_graph(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let mods = modules(src);
    let mut graph = BTreeMap::new();
    for (m, file) in &mods {
        let text = std::fs::read_to_string(file).expect("readable source");
        let code = text.split("#[cfg(test)]\nmod tests {").next().unwrap_or("");
        let mut uses = BTreeSet::new();
        for line in code.lines().map(str::trim) {
            let declares = line.split_whitespace().any(|w| w == "mod") && line.ends_with(';');
            if line.starts_with("//") || declares {
                continue;
            }
            let reexport = line.starts_with("pub use ") || line.starts_with("pub(crate) use ");
            for path in paths(line) {
                let (mut base, rest): (Module, &[&str]) = match path[0] {
                    "crate" => (Vec::new(), &path[1..]),
                    "super" => (m[..m.len().saturating_sub(1)].to_vec(), &path[1..]),
                    "self" => (m.clone(), &path[1..]),
                    child if mods.contains_key(&[m.as_slice(), &[child.to_string()]].concat()) => {
                        (m.clone(), &path[..])
                    }
                    _ => continue,
                };
                let mut rest = rest;
                while rest.first() == Some(&"super") {
                    base.pop();
                    rest = &rest[1..];
                }
                base.extend(rest.iter().map(|s| s.to_string()));
                let target = resolve(&base, &mods);
                let into_child = target.len() > m.len() && target.starts_with(m);
                if target != *m && !(reexport && into_child) {
                    uses.insert(target);
                }
            }
        }
        graph.insert(m.clone(), uses);
    }
    graph
}

/// The strongly connected components with more than one module (Tarjan).
fn cycles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct State<'g> {
        graph: &'g BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'g Module, usize>,
        low: BTreeMap<&'g Module, usize>,
        stack: Vec<&'g Module>,
        found: Vec<Vec<Module>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g Module) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        for w in s.graph.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.stack.contains(&w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                s.found.push(comp);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.found
}

/// The commands a document gives to run: the lines of its fenced code blocks (a Markdown
/// page) or of its comments (a YAML example), without a shell prompt.
fn commands(path: &Path, text: &str) -> Vec<String> {
    let yaml = path.extension().is_some_and(|e| e == "yaml");
    let mut in_block = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if yaml {
            if let Some(c) = t.strip_prefix('#') {
                out.push(c.trim().to_string());
            }
        } else if t.starts_with("```") {
            in_block = !in_block;
        } else if in_block {
            out.push(t.strip_prefix("$ ").unwrap_or(t).to_string());
        }
    }
    out
}

/// Commands that would make this machine connect to a cluster's addresses that exist only
/// inside the testbed (or on real devices): `adcnn-run PLAN` (or `bench PLAN --remote`) of a
/// plan the same document built for a bundled cluster file with addresses off loopback,
/// without `--local` or an address override. `off_loopback` says whether a cluster file
/// names such addresses (`None`: not a bundled file).
fn network_rule_violations(
    commands: &[String],
    off_loopback: &dyn Fn(&str) -> Option<bool>,
) -> Vec<String> {
    let mut built: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for c in commands {
        let words: Vec<&str> = c.split_whitespace().collect();
        let after = |flag: &str| {
            words
                .iter()
                .position(|w| *w == flag)
                .and_then(|i| words.get(i + 1))
        };
        match words.as_slice() {
            ["adcnnc", "build", ..] => {
                if let (Some(cluster), Some(plan)) = (after("--cluster"), after("-o")) {
                    built.insert(plan.to_string(), cluster.to_string());
                }
            }
            ["adcnn-run", first, rest @ ..] => {
                let (plan, remote) = match (*first, rest.first()) {
                    ("bench", Some(plan)) => (*plan, words.contains(&"--remote")),
                    ("worker" | "certs", _) => continue,
                    (plan, _) => (plan, !words.contains(&"--local")),
                };
                let overridden = words.contains(&"--worker") || words.contains(&"--cluster");
                let Some(cluster) = built.get(plan) else {
                    continue;
                };
                if remote && !overridden && off_loopback(cluster) == Some(true) {
                    out.push(format!("`{c}` (plan built for {cluster})"));
                }
            }
            _ => {}
        }
    }
    out
}

/// The network rule: documents never tell this machine to connect to `edge4`'s or `lan8`'s
/// 10.x hosts, which exist only inside the testbed's network namespaces.
#[test]
fn no_documented_command_reaches_the_testbeds_addresses_from_the_host() {
    let root = repo_root();
    let off_loopback = |cluster: &str| {
        let text = std::fs::read_to_string(root.join(cluster)).ok()?;
        Some(text.lines().any(|l| {
            l.split("address: \"")
                .nth(1)
                .is_some_and(|a| !a.starts_with("127.") && !a.starts_with("[::1]"))
        }))
    };
    let mut docs = vec![root.join("README.md")];
    for dir in ["book/src", "dsl-examples"] {
        let entries = std::fs::read_dir(root.join(dir)).expect(dir);
        docs.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
    }
    docs.sort();
    let mut bad = Vec::new();
    for doc in docs
        .iter()
        .filter(|d| d.extension().is_some_and(|e| e == "md" || e == "yaml"))
    {
        let text = std::fs::read_to_string(doc).expect("readable");
        for v in network_rule_violations(&commands(doc, &text), &off_loopback) {
            bad.push(format!("{}: {v}", doc.display()));
        }
    }
    assert!(
        bad.is_empty(),
        "run these with --local (or under testbed/run.sh):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_network_rule_check_finds_a_planted_command() {
    let lines = |s: &str| s.lines().map(str::to_string).collect::<Vec<_>>();
    let edge = |c: &str| Some(c.contains("edge4"));
    let doc = lines(
        "adcnnc build net.yaml --cluster dsl-examples/edge4.yaml -o plan.bin\n\
         adcnn-run plan.bin --local --input x.npy\n\
         adcnn-run plan.bin --input x.npy\n\
         adcnn-run plan.bin --worker edge1=127.0.0.1:7301 --input x.npy\n\
         adcnn-run bench plan.bin --remote\n\
         adcnn-run bench plan.bin\n\
         adcnnc build net.yaml --cluster dsl-examples/loopback3.yaml -o near.bin\n\
         adcnn-run near.bin --input x.npy",
    );
    assert_eq!(
        network_rule_violations(&doc, &edge),
        [
            "`adcnn-run plan.bin --input x.npy` (plan built for dsl-examples/edge4.yaml)",
            "`adcnn-run bench plan.bin --remote` (plan built for dsl-examples/edge4.yaml)",
        ]
    );
}
