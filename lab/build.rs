//! Embeds the panel's built assets (`panel/dist`, made by `npm run build` in `panel/`) into the
//! `lab` binary when the `panel` feature is on. Without a build there, the lab serves a page
//! that says how to make one; the API works either way.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn walk(dir: &Path, base: &Path, out: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, base, out);
        } else if let Ok(rel) = path.strip_prefix(base) {
            let name = rel.to_string_lossy().replace('\\', "/");
            out.push((name, path));
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    let dist = manifest.join("panel").join("dist");
    // Watch the build when there is one; else the folder it will appear in.
    if dist.is_dir() {
        println!("cargo:rerun-if-changed=panel/dist");
    } else {
        println!("cargo:rerun-if-changed=panel");
    }
    let mut files = Vec::new();
    if std::env::var_os("CARGO_FEATURE_PANEL").is_some() {
        walk(&dist, &dist, &mut files);
    }
    files.sort();
    let mut code = String::from("/// The panel's built files: (path under dist, bytes).\n");
    code.push_str("pub static ASSETS: &[(&str, &[u8])] = &[\n");
    for (name, path) in &files {
        let _ = writeln!(
            code,
            "    ({name:?}, include_bytes!({:?})),",
            path.to_string_lossy()
        );
    }
    code.push_str("];\n");
    if let Err(e) = std::fs::write(out_dir.join("panel_assets.rs"), code) {
        panic!("writing panel_assets.rs: {e}");
    }
}
