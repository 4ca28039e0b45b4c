//! Embeds `web/` (the browser UI: plain ES modules, CSS, HTML) in the binary,
//! so the gateway is one file to install and the page always matches the
//! server's signaling protocol.

use std::fmt::Write;
use std::path::Path;

fn main() {
    // The manifest directory at run time, not at build-script compile time:
    // a build script binary can be shared between checkouts of the crate.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let dir = Path::new(&manifest).join("web");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| [".js", ".css", ".html", ".woff2"].iter().any(|x| n.ends_with(x)))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut out = String::from("pub static WEB_ASSETS: &[(&str, &[u8])] = &[\n");
    for n in &names {
        let path = dir.join(n);
        println!("cargo:rerun-if-changed={}", path.display());
        let _ = writeln!(out, "    ({n:?}, include_bytes!({:?})),", path.display().to_string());
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("web_assets.rs");
    std::fs::write(dest, out).expect("write web_assets.rs");
}
