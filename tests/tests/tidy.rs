//! Tidy: what the docs and the house rules say about the tree, checked against the tree itself.
//! It reads files only (no build, no services), so it takes milliseconds.
//!
//! Each check is one `#[test]` over the helpers at the top ([`repo`], [`read`],
//! [`source_files`], [`backticked`]); a new rule is one more function of the same shape, whose
//! failure message says what to change.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A source file may grow to this many lines; past it, split it along its seams.
const MAX_LINES: usize = 800;

/// Files allowed past [`MAX_LINES`], each with its reason. An entry whose file has shrunk
/// below the limit (or gone) fails the check, so that the list only ever gets shorter.
const LONG_FILES: &[(&str, &str)] = &[];

/// The root of the repository (this crate is `tests/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A file of the repository, by its path from the root.
fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// Every source file of the repository (Rust, TypeScript, JavaScript), by its path from the
/// root, leaving out what is built or installed (`target*/`, `node_modules/`, `dist/`) and
/// hidden directories.
fn source_files() -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                let skipped = name.starts_with('.')
                    || name.starts_with("target")
                    || matches!(name.as_str(), "node_modules" | "dist" | "artifacts");
                if !skipped {
                    walk(&path, root, out);
                }
            } else if [".rs", ".ts", ".tsx", ".js"]
                .iter()
                .any(|ext| name.ends_with(ext))
                && let Ok(relative) = path.strip_prefix(root)
            {
                out.push(relative.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let root = repo();
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    out.sort();
    out
}

/// The spans of `text` between backticks, outside fenced code blocks.
fn backticked(text: &str) -> Vec<String> {
    let mut prose = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            prose.push_str(line);
            prose.push('\n');
        }
    }
    prose
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The targets of the Markdown links `[text](target)` in `text` that are not URLs or anchors.
fn link_targets(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .map(|t| t.split('#').next().unwrap_or(t).to_owned())
        .filter(|t| !t.is_empty() && !t.contains("://"))
        .collect()
}

/// Whether a backticked span reads as a path in the repository: it has a `/`, no spaces,
/// and is not a URL, an HTTP route (leading `/`), a placeholder (`<file>`) or a query.
fn looks_like_path(span: &str) -> bool {
    span.contains('/')
        && !span.starts_with('/')
        && !span.contains("://")
        && !span.contains(char::is_whitespace)
        && !span.contains(['<', '?', '"', '=', '(', '|', '…'])
}

/// `a/{b,c}/d` as `a/b/d` and `a/c/d` (one brace group).
fn expand_braces(span: &str) -> Vec<String> {
    let (Some(open), Some(close)) = (span.find('{'), span.find('}')) else {
        return vec![span.to_owned()];
    };
    span[open + 1..close]
        .split(',')
        .map(|choice| format!("{}{choice}{}", &span[..open], &span[close + 1..]))
        .collect()
}

/// The paths a document names, as written: backticked paths and link targets, from `base`
/// (the document's folder) for links.
fn named_paths(doc: &str) -> BTreeSet<String> {
    let text = read(doc);
    let base = Path::new(doc).parent().unwrap_or(Path::new(""));
    let mut paths: BTreeSet<String> = backticked(&text)
        .iter()
        .filter(|s| looks_like_path(s))
        .flat_map(|s| expand_braces(s))
        .collect();
    for target in link_targets(&text) {
        paths.insert(base.join(target).to_string_lossy().into_owned());
    }
    paths
}

/// A heading's anchor as GitHub makes it: lower case, spaces as `-`, punctuation dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .flat_map(char::to_lowercase)
        .collect()
}

/// The anchors of a Markdown file's headings.
fn anchors(doc: &str) -> BTreeSet<String> {
    read(doc)
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| slug(l.trim_start_matches('#')))
        .collect()
}

/// The links of `text` that name an anchor, as (file, anchor); a link within the document has
/// `doc` for its file.
fn anchored_links(doc: &str, text: &str) -> Vec<(String, String)> {
    let base = Path::new(doc).parent().unwrap_or(Path::new(""));
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .filter(|t| !t.contains("://"))
        .filter_map(|t| t.split_once('#'))
        .map(|(file, anchor)| {
            let file = if file.is_empty() {
                doc.to_owned()
            } else {
                base.join(file).to_string_lossy().into_owned()
            };
            (file, anchor.to_owned())
        })
        .collect()
}

#[test]
fn every_anchor_the_docs_link_to_exists() {
    let mut broken = Vec::new();
    for doc in ["ARCHITECTURE.md", "docs/performance.md", "README.md"] {
        for (file, anchor) in anchored_links(doc, &read(doc)) {
            if !anchors(&file).contains(&anchor) {
                broken.push(format!("{doc} → {file}#{anchor}"));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "links to headings that do not exist (a heading was renamed?): {broken:?}"
    );
}

#[test]
fn every_path_the_architecture_names_exists() {
    for doc in ["ARCHITECTURE.md", "docs/performance.md"] {
        let named = named_paths(doc);
        assert!(
            doc != "ARCHITECTURE.md" || named.len() >= 10,
            "{doc} names only {named:?}: is the path reader broken?"
        );
        // A glob (`dir/*.lua`) names its folder.
        let exists = |p: &str| match p.rsplit_once('/') {
            Some((dir, file)) if file.contains('*') => repo().join(dir).is_dir(),
            _ => repo().join(p).exists(),
        };
        let missing: Vec<&String> = named.iter().filter(|p| !exists(p)).collect();
        assert!(
            missing.is_empty(),
            "{doc} names paths that do not exist (write them from the repository's root): \
             {missing:?}"
        );
    }
}

/// The crate roots of the workspace: each member's `src/lib.rs`, or `src/main.rs` for a
/// binary alone.
fn crate_roots() -> Vec<String> {
    let manifest = read("Cargo.toml");
    let members = manifest
        .split("members = [")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .expect("the root manifest lists its members");
    members
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
        .map(|m| {
            let lib = format!("{m}/src/lib.rs");
            if repo().join(&lib).is_file() {
                lib
            } else {
                format!("{m}/src/main.rs")
            }
        })
        .collect()
}

/// The modules a Rust file declares (`mod x;`, `pub mod x;`, `pub(crate) mod x;`), not the
/// inline ones (`mod tests { … }`). A crate's unit tests (`mod tests;`) need no line in it.
fn declared_modules(source: &str) -> Vec<String> {
    source
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("//"))
        .filter_map(|l| {
            let rest = l
                .strip_prefix("pub ")
                .or_else(|| l.strip_prefix("pub(crate) "))
                .unwrap_or(l);
            rest.strip_prefix("mod ")?
                .strip_suffix(';')
                .map(str::to_owned)
        })
        .collect()
}

#[test]
fn every_crate_root_names_its_modules_in_its_code_map() {
    let roots = crate_roots();
    assert!(roots.len() >= 6, "crate roots: {roots:?}");
    let mut unnamed = Vec::new();
    for root in &roots {
        let source = read(root);
        let doc: String = source
            .lines()
            .take_while(|l| l.starts_with("//!") || l.trim().is_empty() || l.starts_with("#!"))
            .filter(|l| l.starts_with("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(!doc.is_empty(), "{root} has no `//!` code map");
        for module in declared_modules(&source) {
            if module != "tests"
                && !doc.contains(&format!("`{module}`"))
                && !doc.contains(&format!("[`{module}`]"))
            {
                unnamed.push(format!("{root}: {module}"));
            }
        }
    }
    assert!(
        unnamed.is_empty(),
        "modules missing from their crate's `//!` code map (say in a line what each is for): \
         {unnamed:?}"
    );
}

/// Whether a file is a test suite, which may be as long as its cases need: a backend's
/// behavioural suite, a `tests.rs` beside the code, or a file under a `tests/` or `e2e/`
/// folder.
fn is_test_suite(path: &str) -> bool {
    path.ends_with("/suite.rs")
        || path.ends_with("/tests.rs")
        || path.split('/').any(|part| part == "tests" || part == "e2e")
}

/// The lines of a source file before its unit tests (an inline `mod tests { … }` at the end
/// is a test suite of its own).
fn code_lines(source: &str) -> usize {
    let lines: Vec<&str> = source.lines().collect();
    match lines.iter().position(|l| {
        ["mod tests {", "pub mod tests {", "pub(crate) mod tests {"]
            .iter()
            .any(|start| l.starts_with(start))
    }) {
        Some(at) if at > 0 && lines[at - 1].starts_with("#[cfg(test)]") => at - 1,
        Some(at) => at,
        None => lines.len(),
    }
}

#[test]
fn no_source_file_is_longer_than_the_limit() {
    let files = source_files();
    assert!(
        files.iter().any(|f| f == "tests/tests/tidy.rs"),
        "the walk missed this very file: {} files",
        files.len()
    );
    let allowed = |path: &str| LONG_FILES.iter().any(|(p, _)| *p == path);
    let mut long = Vec::new();
    for path in &files {
        let lines = code_lines(&read(path));
        if lines > MAX_LINES && !is_test_suite(path) && !allowed(path) {
            long.push(format!("{path} ({lines} lines)"));
        }
    }
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines before their unit tests: split each along its seams (one \
         concern per module): {long:?}"
    );
    let stale: Vec<&str> = LONG_FILES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !repo().join(p).is_file() || code_lines(&read(p)) <= MAX_LINES)
        .collect();
    assert!(
        stale.is_empty(),
        "allowed to be long but no longer are: take them off LONG_FILES in {}: {stale:?}",
        file!()
    );
}

/// Each dialect's migrations have one file per version: two helpers' changes landing with the
/// same number made every store refuse to open, and nothing else reads the numbers before run
/// time.
#[test]
fn migration_versions_are_unique() {
    for dialect in ["sqlite", "postgres"] {
        let dir = repo().join("server/migrations").join(dialect);
        let mut seen = std::collections::BTreeMap::<String, String>::new();
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let name = entry
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .file_name()
                .to_string_lossy()
                .into_owned();
            let Some(version) = name.split('_').next().filter(|v| !v.is_empty()) else {
                continue;
            };
            if let Some(other) = seen.insert(version.to_owned(), name.clone()) {
                panic!(
                    "server/migrations/{dialect}: {other} and {name} share version {version}: renumber the newer one"
                );
            }
        }
    }
}

#[test]
fn the_helpers_read_what_they_should() {
    assert_eq!(
        expand_braces("server/src/{store,bus}/suite.rs"),
        ["server/src/store/suite.rs", "server/src/bus/suite.rs"]
    );
    assert_eq!(
        backticked("a `x/y` b\n```\n`not/this`\n```\n`z`"),
        ["x/y", "z"]
    );
    assert!(looks_like_path("server/src/route.rs"));
    assert!(!looks_like_path("GET /v1/assign"));
    assert!(!looks_like_path("/metrics"));
    assert!(!looks_like_path("redis://127.0.0.1"));
    assert!(!looks_like_path("<file>.write-lock"));
    assert_eq!(
        link_targets("see [perf](docs/performance.md#ours) and [x](https://e.org)"),
        ["docs/performance.md"]
    );
    assert_eq!(
        slug(" What a message costs: ours, the floor and the peer"),
        "what-a-message-costs-ours-the-floor-and-the-peer"
    );
    assert_eq!(
        anchored_links("docs/a.md", "[x](b.md#one) [y](#two) [z](c.md)"),
        [
            ("docs/b.md".to_owned(), "one".to_owned()),
            ("docs/a.md".to_owned(), "two".to_owned())
        ]
    );
    assert_eq!(
        declared_modules("//! map\npub mod a;\nmod b;\n#[cfg(test)]\nmod tests {\n}\n"),
        ["a", "b"]
    );
    assert_eq!(code_lines("a\nb\n#[cfg(test)]\nmod tests {\n}\n"), 2);
    assert_eq!(code_lines("a\n#[cfg(test)]\nmod tests;\nb\n"), 4);
    assert!(is_test_suite("server/src/store/suite.rs"));
    assert!(is_test_suite("tests/tests/delivery.rs"));
    assert!(!is_test_suite("server/src/route.rs"));
}
