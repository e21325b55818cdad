//! Embeds the native worker's Python package in the binary: the files named in
//! workers/python/fcgibridge_worker/FILES (every *.py there when FILES is absent).
//! The daemon writes them into its runtime directory (see supervise/runtime_dir.rs).
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let dir = manifest.join("..").join("workers").join("python").join("fcgibridge_worker");
    println!("cargo:rerun-if-changed={}", dir.display());
    let list = dir.join("FILES");
    println!("cargo:rerun-if-changed={}", list.display());

    let names: Vec<String> = match std::fs::read_to_string(&list) {
        Ok(text) => {
            text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_owned).collect()
        }
        Err(_) => python_files(&dir),
    };

    let mut out = String::from("/// The worker's Python package: (path inside the package, contents).\n");
    out.push_str("pub(super) static FILES: &[(&str, &[u8])] = &[\n");
    for name in &names {
        let path = dir.join(name);
        if !path.is_file() {
            panic!("{} lists {name}, which does not exist", list.display());
        }
        println!("cargo:rerun-if-changed={}", path.display());
        let _ = writeln!(out, "    ({name:?}, include_bytes!({:?})),", path.display().to_string());
    }
    out.push_str("];\n");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    if let Err(e) = std::fs::write(out_dir.join("python_package.rs"), out) {
        panic!("writing python_package.rs: {e}");
    }
}

fn python_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".py"))
        .collect();
    names.sort();
    names
}
