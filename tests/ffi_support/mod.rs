//! Shared by tests/cpu/ffi_header.rs and tests/ffi_c.rs: where the built libraries are, how to
//! compile the C examples against them, and running a program with a time limit.
//!
//! Where the libraries come from: the crate's `[lib]` has crate-type rlib + staticlib +
//! cdylib, and cargo builds every crate type of the lib in one rustc run whenever a test
//! needs the lib. So by the time a test runs, `target/<profile>/libocrvl.{a,so}` are as fresh
//! as the rlib it links (checked on this crate: `cargo test` rewrites all three together).
//! No nested `cargo build` is run from a test (it would contend for the build lock of the
//! outer `cargo test`); a missing library is a loud failure naming the command to run.
#![allow(dead_code)]

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The repository root (ffi/ocrvl.h, src/ffi/).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `target/<profile>` (or `target/<triple>/<profile>`): the test executable lives in its
/// `deps/`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test executable lies in <target>/<profile>/deps")
        .to_path_buf()
}

/// The library `cargo test` built with this test: `<profile>/deps/` (where the test
/// executable lives; `cargo test`, unlike `cargo build`, does not copy it up to `<profile>/`),
/// else `<profile>/` (a `cargo build --lib`), else a failure that says how to build it.
pub fn library(name: &str) -> PathBuf {
    let dir = profile_dir();
    let candidates = [dir.join("deps").join(name), dir.join(name)];
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
        panic!(
            "{name} is in neither {} nor {}: cargo builds it with the lib (crate-type staticlib/cdylib); run \
             `cargo build --lib` with the same profile",
            candidates[0].display(),
            candidates[1].display()
        )
    })
}

/// The directory holding `libcudart_static.a`, which libocrvl.a needs at link time (the cc
/// crate links the CUDA runtime as a plain `-lcudart_static`, so it is not bundled into the
/// staticlib; the cdylib has it inside). The build script printed it as a link-search path;
/// `OCRVL_CUDART_DIR` overrides.
pub fn cudart_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("OCRVL_CUDART_DIR") {
        return PathBuf::from(d);
    }
    let build = profile_dir().join("build");
    let mut outputs: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(&build)
        .unwrap_or_else(|e| panic!("reading {}: {e}", build.display()))
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("ocrvl-"))
        .map(|e| e.path().join("output"))
        .filter_map(|p| Some((fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    // The newest build-script run is the one the current library came from.
    outputs.sort();
    for (_, out) in outputs.iter().rev() {
        let text = fs::read_to_string(out).unwrap_or_default();
        for line in text.lines() {
            if let Some(dir) = line.strip_prefix("cargo:rustc-link-search=native=") {
                if Path::new(dir).join("libcudart_static.a").is_file() {
                    return PathBuf::from(dir);
                }
            }
        }
    }
    panic!(
        "no libcudart_static.a among the link-search paths in {}/ocrvl-*/output; set OCRVL_CUDART_DIR",
        build.display()
    );
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// libocrvl.a: a self-contained executable.
    Static,
    /// libocrvl.so found through an rpath.
    Shared,
}

/// The system C compiler (`CC` or `cc`).
pub fn cc() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".into())
}

/// Compiles `ffi/examples/<source>` to `<out_dir>/<name>`, strictly (C99, warnings are
/// errors, so a header that is not clean C99 fails here), and returns the executable.
pub fn build_example(source: &str, name: &str, link: Link, out_dir: &Path) -> PathBuf {
    fs::create_dir_all(out_dir).unwrap();
    let exe = out_dir.join(name);
    let mut cmd = Command::new(cc());
    cmd.args(["-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", "-O1", "-I"])
        .arg(repo().join("ffi"))
        .arg(repo().join("ffi/examples").join(source))
        .arg("-o")
        .arg(&exe);
    match link {
        Link::Static => {
            cmd.arg(library("libocrvl.a"))
                .arg("-L")
                .arg(cudart_dir())
                .args(static_system_libs());
        }
        Link::Shared => {
            let lib = library("libocrvl.so");
            let dir = lib.parent().unwrap();
            cmd.arg("-L")
                .arg(dir)
                .arg("-locrvl")
                .arg(format!("-Wl,-rpath,{}", dir.display()));
        }
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not run the C compiler `{}`: {e}", cc()));
    assert!(
        out.status.success(),
        "compiling {source} ({link:?}) failed: {:?}\n{}{}",
        cmd,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// What libocrvl.a needs from the system, as `rustc --print native-static-libs` lists it
/// (plus the CUDA runtime): C++ runtime for the kernels' host code, dl for loading libcuda
/// and cuBLASLt at run time, rt/pthread/m for std and cudart.
pub fn static_system_libs() -> [&'static str; 8] {
    [
        "-lcudart_static",
        "-lstdc++",
        "-ldl",
        "-lrt",
        "-lpthread",
        "-lm",
        "-lgcc_s",
        "-lutil",
    ]
}

pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` with stdout and stderr in files (no pipe can fill up and stall it), killing it
/// after `limit`.
pub fn run(mut cmd: Command, limit: Duration, scratch: &Path) -> Run {
    fs::create_dir_all(scratch).unwrap();
    let tag = format!("{}-{:?}", std::process::id(), std::thread::current().id());
    let tag: String = tag.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    let (out_path, err_path) = (scratch.join(format!("{tag}.out")), scratch.join(format!("{tag}.err")));
    cmd.stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} ran over {limit:?}; stderr so far:\n{}",
                fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |p: &Path| String::from_utf8_lossy(&fs::read(p).unwrap_or_default()).into_owned();
    let run = Run {
        status,
        stdout: read(&out_path),
        stderr: read(&err_path),
    };
    let _ = fs::remove_file(out_path);
    let _ = fs::remove_file(err_path);
    run
}

/// A small PNG page: dark bars on white, like lines of text (content does not matter to a
/// random-weight model; size and format do).
pub fn write_page_png(path: &Path, width: u32, height: u32) {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        let line = (y / 16) % 2 == 1 && x > 16 && x < width - 16 && (x / 24) % 5 != 4;
        if line {
            image::Rgb([20, 20, 20])
        } else {
            image::Rgb([250, 250, 250])
        }
    });
    img.save(path).unwrap();
}
