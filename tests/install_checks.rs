//! The install checks of `scripts/lib.sh`, on fake trees: each must look for exactly what the
//! build or the tests load, so a machine that lacks it gets the package installed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `source scripts/lib.sh; CHECK ARGS` in bash (with `path` as the whole PATH, if given);
/// true when it passed.
fn check(check: &str, args: &[&str], path: Option<&Path>) -> bool {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lib.sh");
    // Found on the test's PATH: the check itself may run with another.
    let bash = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("bash"))
        .find(|bash| bash.is_file())
        .expect("bash on PATH");
    let mut command = Command::new(bash);
    command
        .arg("-c")
        .arg(format!("source '{}' && {check} \"$@\"", lib.display()))
        .arg("check")
        .args(args)
        .env_remove("LIBCLANG_PATH");
    if let Some(dir) = path {
        command.env("PATH", dir);
    }
    command.status().expect("bash runs").success()
}

/// A fake root holding the given (empty) files.
fn tree(files: &[&str]) -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("temp dir");
    for file in files {
        let path = root.path().join(file);
        fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
        fs::write(&path, "").expect("write");
    }
    root
}

fn root_arg(root: &tempfile::TempDir) -> String {
    root.path().display().to_string()
}

/// Debian's base image has only libclang-cpp.so.14 (the C++ API): bindgen cannot load it, so the
/// check must ask for libclang-dev (it once matched it and CI hid the missing package).
#[test]
fn libclang_cpp_alone_is_not_libclang() {
    let base = tree(&[
        "usr/lib/llvm-14/lib/libclang-cpp.so.14",
        "usr/lib/x86_64-linux-gnu/libclang-cpp.so.14",
    ]);
    assert!(!check("find_libclang", &[&root_arg(&base)], None));
}

/// Each name clang-sys loads at run time passes, wherever Debian or a local build puts it.
#[test]
fn every_libclang_name_bindgen_loads_passes() {
    for file in [
        "usr/lib/llvm-14/lib/libclang.so",
        "usr/lib/llvm-16/lib/libclang.so.1",
        "usr/lib/x86_64-linux-gnu/libclang-14.so.1",
        "usr/lib/libclang-15.so",
        "usr/local/lib/libclang.so.18",
    ] {
        let root = tree(&["usr/lib/llvm-14/lib/libclang-cpp.so.14", file]);
        assert!(check("find_libclang", &[&root_arg(&root)], None), "{file}");
    }
}

/// OpenSSL headers without pkg-config's openssl.pc do not build openssl-sys; both do.
#[test]
fn openssl_needs_headers_and_pkg_config_file() {
    let headers = tree(&["usr/include/openssl/ssl.h"]);
    assert!(!check("has_openssl_dev", &[&root_arg(&headers)], None));
    let runtime_only = tree(&["usr/lib/x86_64-linux-gnu/libssl.so.3"]);
    assert!(!check("has_openssl_dev", &[&root_arg(&runtime_only)], None));
    let dev = tree(&[
        "usr/include/openssl/ssl.h",
        "usr/lib/x86_64-linux-gnu/pkgconfig/openssl.pc",
    ]);
    assert!(check("has_openssl_dev", &[&root_arg(&dev)], None));
}

/// A bin folder holding the given shell scripts (name, body).
fn fake_bin(scripts: &[(&str, String)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let bin = dir.path().join("bin");
    fs::create_dir_all(&bin).expect("mkdir");
    for (name, body) in scripts {
        let path = bin.join(name);
        fs::write(&path, body).expect("write");
        Command::new("chmod")
            .arg("+x")
            .arg(&path)
            .status()
            .expect("chmod");
    }
    (dir, bin)
}

/// A bin folder with a fake `node` reporting `version` and a working `npm`.
fn fake_node(version: &str) -> (tempfile::TempDir, PathBuf) {
    let major = version.split('.').next().unwrap_or_default();
    fake_bin(&[
        ("node", format!("#!/bin/sh\necho {major}\n")),
        ("npm", "#!/bin/sh\necho 10.0.0\n".to_owned()),
    ])
}

/// RocksDB is C++: a C compiler alone (`cc`) does not build it; `c++` must be there too.
#[test]
fn a_c_compiler_alone_is_not_the_toolchain() {
    let compiler = || "#!/bin/sh\nexit 0\n".to_owned();
    let (_dir, bin) = fake_bin(&[("cc", compiler())]);
    assert!(!check("has_build_toolchain", &[], Some(&bin)));
    let (_dir, bin) = fake_bin(&[("cc", compiler()), ("c++", compiler())]);
    assert!(check("has_build_toolchain", &[], Some(&bin)));
}

/// Debian 12's Node.js 18 is not enough for the interop tests (package.json asks for >= 20).
#[test]
fn node_below_20_is_not_usable() {
    let (_dir, bin) = fake_node("18.20.4");
    assert!(!check("node_is_usable", &[], Some(&bin)));
    let (_dir, bin) = fake_node("20.18.0");
    assert!(check("node_is_usable", &[], Some(&bin)));
}
