//! The module map in docs/DEVELOPING.md matches the tree: every source file is in it, and
//! everything in it exists.

use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p.to_string_lossy().into_owned());
        }
    }
}

#[test]
fn module_map_matches_the_tree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/DEVELOPING.md")).unwrap();
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    let prefix = format!("{}/", root.display());
    let files: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(&prefix).unwrap_or(f).to_string())
        .collect();
    let unmapped: Vec<_> = files
        .iter()
        .filter(|f| !doc.contains(&format!("| `{f}` |")))
        .collect();
    assert!(
        unmapped.is_empty(),
        "files missing from the module map: {unmapped:?}"
    );
    let stale: Vec<_> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `src/"))
        .filter_map(|l| l.split('`').next())
        .map(|f| format!("src/{f}"))
        .filter(|f| !root.join(f).exists())
        .collect();
    assert!(
        stale.is_empty(),
        "module map names files that do not exist: {stale:?}"
    );
}
