//! The house's rules, checked (issue 26): which top-level module may import which. The test
//! reads every file of `src/` and collects the `crate::MODULE` paths it names outside comments
//! (a `use` line or a path in the code: both are dependencies). It fails naming the file and
//! the line of each broken rule, and prints the graph between top-level modules.
//!
//! Only a test: nothing here runs in the gateway.

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    /// (importer, imported, why): `importer` must never name `crate::imported`.
    const RULES: &[(&str, &str, &str)] = &[
        (
            "intake",
            "console",
            "the mail's path never reads the console",
        ),
        ("intake", "cli", "the mail's path never runs the CLI"),
        (
            "intake",
            "admin",
            "the mail's path never calls the admin endpoint",
        ),
        (
            "queue",
            "console",
            "the mail's path never reads the console",
        ),
        ("queue", "cli", "the mail's path never runs the CLI"),
        (
            "queue",
            "admin",
            "the mail's path never calls the admin endpoint",
        ),
        (
            "delivery",
            "console",
            "the mail's path never reads the console",
        ),
        ("delivery", "cli", "the mail's path never runs the CLI"),
        (
            "delivery",
            "admin",
            "the mail's path never calls the admin endpoint",
        ),
        (
            "console",
            "cli",
            "the console shares the CLI's work through establishment/",
        ),
        (
            "admin",
            "cli",
            "the admin endpoint shares the CLI's work through queue/",
        ),
        (
            "trust",
            "policy",
            "policy decides with the trust list, not the other way round",
        ),
    ];

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// The top-level module a file belongs to: `src/X.rs` or `src/X/...` is `X`.
    fn top(src: &Path, file: &Path) -> Option<String> {
        let rel = file.strip_prefix(src).ok()?;
        let first = rel.components().next()?.as_os_str().to_str()?;
        Some(first.trim_end_matches(".rs").to_string())
    }

    /// Every `crate::NAME` a line names, outside a `//` comment.
    fn named(line: &str) -> Vec<String> {
        let code = line.split("//").next().unwrap_or("");
        let mut out = Vec::new();
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let before = rest[..i].chars().last();
            rest = &rest[i + "crate::".len()..];
            // `$crate::` in a macro, or a longer identifier ending in `crate`.
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
        // `use crate::{a, b::c}`: the names inside the braces.
        if let Some(i) = code.find("crate::{") {
            let inner = code[i + "crate::{".len()..].split('}').next().unwrap_or("");
            for part in inner.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        }
        out
    }

    /// One `crate::` path found: importer, imported, file, line number, the line.
    type Use = (String, String, String, usize, String);

    fn graph() -> (BTreeMap<String, BTreeSet<String>>, Vec<Use>) {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        files.sort();
        let modules: BTreeSet<String> = files
            .iter()
            .filter_map(|f| top(&src, f))
            .filter(|m| m != "lib" && m != "main")
            .collect();
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut uses = Vec::new();
        for f in &files {
            let Some(from) = top(&src, f) else { continue };
            if from == "layout" {
                continue; // this test's own examples
            }
            let text = std::fs::read_to_string(f).unwrap_or_default();
            for (n, line) in text.lines().enumerate() {
                let line_t = line.trim_start();
                if line_t.starts_with("//") {
                    continue;
                }
                for to in named(line) {
                    if to != from && modules.contains(&to) {
                        edges.entry(from.clone()).or_default().insert(to.clone());
                        let rel = f.strip_prefix(&src).unwrap_or(f).display().to_string();
                        uses.push((from.clone(), to, rel, n + 1, line_t.to_string()));
                    }
                }
            }
        }
        (edges, uses)
    }

    #[test]
    fn the_rules_between_modules_hold() {
        let (edges, uses) = graph();
        println!("module graph (importer -> imported):");
        for (from, to) in &edges {
            println!(
                "  {from} -> {}",
                to.iter().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        // Modules that reach each other (cycles): none may remain (issue 26); each is named
        // with the lines that close it.
        let reach = |from: &str| {
            let mut seen = BTreeSet::new();
            let mut todo = vec![from.to_string()];
            while let Some(m) = todo.pop() {
                for n in edges.get(&m).into_iter().flatten() {
                    if seen.insert(n.clone()) {
                        todo.push(n.clone());
                    }
                }
            }
            seen
        };
        let mut groups: BTreeSet<Vec<String>> = BTreeSet::new();
        for m in edges.keys() {
            let r = reach(m);
            let mut g: Vec<String> = r.iter().filter(|o| reach(o).contains(m)).cloned().collect();
            if !g.is_empty() {
                g.push(m.clone());
                g.sort();
                g.dedup();
                groups.insert(g);
            }
        }
        let mut broken = Vec::new();
        for g in &groups {
            broken.push(format!("cycle among: {}", g.join(", ")));
            for (from, to, file, line, text) in &uses {
                if g.contains(from) && g.contains(to) {
                    broken.push(format!("  src/{file}:{line}: {from} imports {to}: {text}"));
                }
            }
        }
        for (from, to, file, line, text) in &uses {
            for (a, b, why) in RULES {
                if from == a && to == b {
                    broken.push(format!(
                        "src/{file}:{line}: {a} imports {b} ({why}): {text}"
                    ));
                }
            }
        }
        assert!(broken.is_empty(), "broken rules:\n{}", broken.join("\n"));
    }

    /// The modules a folder's `mod.rs` says it must not import: its "Must not import: ..."
    /// sentence (parenthesised reasons left out), with "anything but A and B" and "any other
    /// module" read as such. `None` when the doc has no such sentence.
    fn documented_bans(src: &Path, m: &str, modules: &BTreeSet<String>) -> Option<Vec<String>> {
        let text = std::fs::read_to_string(src.join(m).join("mod.rs")).ok()?;
        let doc: Vec<&str> = text
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .map(|l| l.trim_start_matches("//!").trim())
            .collect();
        let doc = doc.join(" ");
        let start = doc.find("Must not import:")? + "Must not import:".len();
        let mut sentence = String::new();
        let mut depth = 0;
        let mut chars = doc[start..].chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                '.' if depth == 0 && chars.peek().is_none_or(|n| *n == ' ') => break,
                _ if depth == 0 => sentence.push(c),
                _ => {}
            }
        }
        let words: Vec<String> = sentence
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect();
        let others = || modules.iter().filter(|o| *o != m).cloned();
        if sentence.contains("any other module") {
            return Some(others().collect());
        }
        if let Some(i) = sentence.find("anything but") {
            let kept: Vec<&str> = sentence[i..]
                .split(|c: char| !c.is_alphanumeric())
                .collect();
            return Some(others().filter(|o| !kept.contains(&o.as_str())).collect());
        }
        Some(words.into_iter().filter(|w| modules.contains(w)).collect())
    }

    #[test]
    fn each_folder_keeps_what_its_doc_says_it_must_not_import() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let (edges, uses) = graph();
        let modules: BTreeSet<String> = edges
            .keys()
            .cloned()
            .chain(edges.values().flatten().cloned())
            .collect();
        let mut broken = Vec::new();
        let mut documented = 0;
        for m in &modules {
            let Some(bans) = documented_bans(&src, m, &modules) else {
                continue;
            };
            documented += 1;
            for (from, to, file, line, text) in &uses {
                if from == m && bans.contains(to) {
                    broken.push(format!(
                        "src/{file}:{line}: {from} imports {to}, which src/{m}/mod.rs says it must not: {text}"
                    ));
                }
            }
        }
        assert!(
            documented >= 15,
            "only {documented} folders document their bans"
        );
        assert!(broken.is_empty(), "broken rules:\n{}", broken.join("\n"));
    }

    #[test]
    fn the_reader_finds_what_a_line_names() {
        assert_eq!(named("use crate::config::Config;"), vec!["config"]);
        assert_eq!(
            named("use crate::{intake, queue::Spool};"),
            vec!["intake", "queue"]
        );
        assert_eq!(
            named("    let x = crate::metrics::inc(); // crate::console"),
            vec!["metrics"]
        );
        assert!(named("$crate::foo").is_empty());
    }
}
