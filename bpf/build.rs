//! Compiles `responder.c` into BPF bytecode with clang; the object lands in
//! `OUT_DIR/responder.o` and is embedded by `src/responder.rs`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=responder.c");
    println!("cargo:rerun-if-env-changed=CLANG");

    let Some(out_dir) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        fail("OUT_DIR is not set (build.rs must run under cargo)");
    };
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    let output = out_dir.join("responder.o");

    let mut cmd = Command::new(&clang);
    cmd.args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"]);
    // <linux/types.h> includes <asm/types.h>, which Debian keeps under the
    // multiarch directory of the host.
    if let Some(dir) = multiarch_include() {
        cmd.arg(format!("-I{}", dir.display()));
    }
    cmd.arg("-c").arg("responder.c").arg("-o").arg(&output);

    match cmd.status() {
        Ok(status) if status.success() => {}
        Ok(status) => fail(&format!(
            "`{clang}` failed to compile bpf/responder.c ({status}); the eBPF build also needs \
             the headers of the apt packages `libbpf-dev` and `linux-libc-dev` \
             (`cargo xtask test` installs them)"
        )),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => fail(&format!(
            "`{clang}` not found: the eBPF responder is compiled with clang. Install the apt \
             package `clang` (and `libbpf-dev`), or run `cargo xtask test`, which installs \
             what the build needs"
        )),
        Err(err) => fail(&format!("running `{clang}`: {err}")),
    }
}

fn multiarch_include() -> Option<PathBuf> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").ok()?;
    let triple = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "arm" => "arm-linux-gnueabihf",
        "riscv64" => "riscv64-linux-gnu",
        "powerpc64" => "powerpc64le-linux-gnu",
        "s390x" => "s390x-linux-gnu",
        _ => return None,
    };
    let dir = Path::new("/usr/include").join(triple);
    dir.is_dir().then_some(dir)
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1);
}
