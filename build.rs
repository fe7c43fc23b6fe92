//! Builds the CUDA kernels and their Rust bindings.
//!
//! 1. Finds nvcc: `NVCC` (the binary), `CUDA_HOME`, `CUDA_PATH`, `PATH`, `/usr/local/cuda`.
//!    Where there is none, it installs the pinned CUDA 13.0 compiler wheels from PyPI once into
//!    a cache directory (`OCRVL_CUDA_CACHE`, default `~/.cache/ocrvl`) and uses them.
//! 2. Compiles every `kernels/**/*.cu` with cc in CUDA mode, cudart static, for the
//!    architectures in `OCRVL_CUDA_ARCHS` (default `80;90a`).
//! 3. Runs bindgen over `kernels/include/ocrvl_kernels.h` into `OUT_DIR/sys.rs`. libclang comes
//!    from the system, `LIBCLANG_PATH`, or the PyPI `libclang` wheel in the same cache. If none
//!    loads, the checked-in `kernels/include/bindings.rs` is used instead and a warning says so;
//!    `tests/cpu/bindings_fresh.rs` compares the two wherever bindgen did run.

use std::collections::hash_map::DefaultHasher;
use std::env;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;

/// PyPI pins for the CUDA 13.0 compiler. They must move together: a newer `nvidia-nvvm`
/// than the nvcc makes ptxas fail with "Unsupported .version".
const CUDA_WHEELS: &[&str] = &[
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-cccl==13.0.85",
];
const LIBCLANG_WHEEL: &str = "libclang==18.1.1";
const DEFAULT_ARCHS: &str = "80;90a";

fn main() {
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "OCRVL_CUDA_ARCHS",
        "OCRVL_CUDA_CACHE",
        "OCRVL_PTXAS_VERBOSE",
        "OCRVL_KERNEL_BUILD_DIR",
        "LIBCLANG_PATH",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-check-cfg=cfg(ocrvl_has_sm90a)");
    println!("cargo:rustc-check-cfg=cfg(ocrvl_bindgen)");

    let kernels = Path::new("kernels");
    let mut sources = Vec::new();
    let mut all_files = Vec::new();
    walk(kernels, &mut all_files);
    all_files.sort();
    for f in &all_files {
        println!("cargo:rerun-if-changed={}", f.display());
        if f.extension().is_some_and(|e| e == "cu") {
            sources.push(f.clone());
        }
    }

    let nvcc = find_or_provision_nvcc();
    let cuda_root = nvcc.parent().and_then(Path::parent).expect("nvcc lies in <root>/bin");
    compile_kernels(&nvcc, cuda_root, &sources, &all_files);
    generate_bindings(kernels);
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "cu" || e == "cuh" || e == "h") {
            out.push(path);
        }
    }
}

fn cache_dir() -> PathBuf {
    if let Some(dir) = env::var_os("OCRVL_CUDA_CACHE") {
        return PathBuf::from(dir);
    }
    let base = env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("neither XDG_CACHE_HOME nor HOME is set: set OCRVL_CUDA_CACHE");
    base.join("ocrvl")
}

fn find_or_provision_nvcc() -> PathBuf {
    if let Some(nvcc) = env::var_os("NVCC") {
        return PathBuf::from(nvcc);
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = env::var_os(var) {
            let nvcc = PathBuf::from(root).join("bin/nvcc");
            if nvcc.is_file() {
                return nvcc;
            }
        }
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            let nvcc = dir.join("nvcc");
            if nvcc.is_file() {
                return nvcc;
            }
        }
    }
    let system = PathBuf::from("/usr/local/cuda/bin/nvcc");
    if system.is_file() {
        return system;
    }
    let site = provision_wheels("cuda-13.0", CUDA_WHEELS);
    let nvcc = site.join("nvidia/cu13/bin/nvcc");
    assert!(
        nvcc.is_file(),
        "the CUDA wheels installed but {} is missing",
        nvcc.display()
    );
    println!(
        "cargo:warning=no nvcc found (NVCC, CUDA_HOME, CUDA_PATH, PATH, /usr/local/cuda): using the \
         CUDA 13.0 compiler from PyPI at {}",
        nvcc.display()
    );
    nvcc
}

/// Installs `packages` into a virtual environment `<cache>/<name>` once and returns its
/// site-packages. The install goes to a temporary directory renamed into place at the end,
/// so a build interrupted half-way, or two builds at once, never leave a broken cache.
fn provision_wheels(name: &str, packages: &[&str]) -> PathBuf {
    let cache = cache_dir();
    let venv = cache.join(name);
    if let Some(site) = site_packages(&venv).filter(|_| venv.join(".ocrvl-complete").is_file()) {
        return site;
    }
    fs::create_dir_all(&cache).unwrap_or_else(|e| panic!("creating {}: {e}", cache.display()));
    let tmp = cache.join(format!("{name}.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let python = env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    run(Command::new(&python).args(["-m", "venv"]).arg(&tmp), "python3 -m venv");
    run(
        Command::new(tmp.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(packages),
        &format!("pip install {}", packages.join(" ")),
    );
    fs::write(tmp.join(".ocrvl-complete"), packages.join("\n")).expect("writing the cache marker");
    if fs::rename(&tmp, &venv).is_err() {
        // Another build finished first; keep its copy.
        let _ = fs::remove_dir_all(&tmp);
    }
    // A venv's scripts hold its absolute path, but nothing here runs them after the rename:
    // nvcc and libclang are plain files inside site-packages.
    site_packages(&venv).expect("site-packages in the provisioned venv")
}

fn site_packages(venv: &Path) -> Option<PathBuf> {
    let lib = fs::read_dir(venv.join("lib")).ok()?;
    lib.filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages"))
        .find(|p| p.is_dir())
}

fn run(cmd: &mut Command, what: &str) {
    let status = cmd.status().unwrap_or_else(|e| panic!("could not start `{what}`: {e}"));
    assert!(status.success(), "`{what}` failed with {status}");
}

fn compile_kernels(nvcc: &Path, cuda_root: &Path, sources: &[PathBuf], all_files: &[PathBuf]) {
    // cc finds the CUDA compiler as `nvcc` on PATH; naming it by full path made cc pass gcc
    // flags that nvcc refuses.
    let bin = nvcc.parent().unwrap();
    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![bin.to_path_buf()];
    dirs.extend(env::split_paths(&path));
    env::set_var("PATH", env::join_paths(dirs).unwrap());

    let archs = env::var("OCRVL_CUDA_ARCHS").unwrap_or_else(|_| DEFAULT_ARCHS.into());
    let archs: Vec<String> = archs
        .split([';', ',', ' '])
        .filter(|a| !a.is_empty())
        .map(|a| a.trim_start_matches("sm_").to_string())
        .collect();
    assert!(!archs.is_empty(), "OCRVL_CUDA_ARCHS names no architecture");
    for arch in &archs {
        assert!(
            matches!(arch.as_str(), "80" | "86" | "89" | "90" | "90a" | "100a" | "120"),
            "OCRVL_CUDA_ARCHS: unsupported architecture `{arch}` (valid: 80, 86, 89, 90, 90a, 100a, 120)"
        );
        if arch == "90a" {
            println!("cargo:rustc-cfg=ocrvl_has_sm90a");
        }
    }
    let verbose = env::var_os("OCRVL_PTXAS_VERBOSE").is_some();
    let base = || {
        let mut build = cc::Build::new();
        build
            .cuda(true)
            .cudart("static")
            .include("kernels/include")
            .include("kernels")
            .flag("-std=c++17")
            .flag("-O3")
            .flag("--expt-relaxed-constexpr")
            .flag("-lineinfo")
            .flag("-Xcompiler=-fPIC")
            // cc adds -G (device debug, very slow code) in debug profiles; kernels are always
            // built optimised.
            .debug(false)
            .warnings(false);
        for arch in &archs {
            build.flag(format!("-gencode=arch=compute_{arch},code=sm_{arch}"));
            if arch == "90a" {
                build.define("OCRVL_HAS_SM90A", None);
            }
        }
        if verbose {
            build.flag("--ptxas-options=-v");
        }
        build
    };

    // Object cache: each .cu is compiled once per (its text, every header's text, nvcc, flags)
    // and reused by later builds and by every profile, so editing one kernel family does not
    // rebuild the others. A header edit changes every key, since any .cu may include it.
    let mut common = DefaultHasher::new();
    format!("{}|{:?}|{verbose}|whole-program", nvcc.display(), archs).hash(&mut common);
    for f in all_files.iter().filter(|f| f.extension().is_some_and(|e| e != "cu")) {
        f.hash(&mut common);
        fs::read(f).expect("reading a kernel header").hash(&mut common);
    }
    let cache = kernel_object_cache();
    fs::create_dir_all(&cache).unwrap_or_else(|e| panic!("creating {}: {e}", cache.display()));
    let mut objects = Vec::new();
    let mut stale = Vec::new();
    for src in sources {
        let mut h = common.clone();
        src.hash(&mut h);
        fs::read(src).expect("reading a kernel source").hash(&mut h);
        let stem = src.file_stem().unwrap().to_string_lossy();
        let obj = cache.join(format!("{stem}-{:016x}.o", h.finish()));
        if !obj.is_file() {
            stale.push((src.clone(), obj.clone()));
        }
        objects.push(obj);
    }
    // Each file is its own whole-program compilation (cc adds --device-c only to builds of
    // several files): no kernel calls device code in another file, and relocatable device code
    // makes ptxas ignore `setmaxnreg` (the FA3 kernels' register split) and treat calls it
    // cannot see as barriers to wgmma. So there is no device-link step either.
    let queue = std::sync::Mutex::new(stale.iter());
    let workers = std::thread::available_parallelism()
        .map_or(4, |n| n.get())
        .min(stale.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let Some((src, obj)) = queue.lock().unwrap().next() else {
                    break;
                };
                let mut build = base();
                build.file(src);
                let built = build.compile_intermediates();
                let tmp = obj.with_extension(format!("tmp{}", std::process::id()));
                fs::copy(&built[0], &tmp).expect("copying a kernel object into the cache");
                fs::rename(&tmp, obj).expect("moving a kernel object into the cache");
            });
        }
    });
    let mut archive = base();
    for obj in &objects {
        archive.object(obj);
    }
    archive.compile("ocrvl_kernels");

    for lib in ["lib64", "lib"] {
        let dir = cuda_root.join(lib);
        if dir.join("libcudart_static.a").is_file() {
            println!("cargo:rustc-link-search=native={}", dir.display());
        }
    }
    // cudart_static needs these from the system at link time.
    for lib in ["dl", "rt", "pthread", "stdc++"] {
        println!("cargo:rustc-link-lib={lib}");
    }
}

/// `OCRVL_KERNEL_BUILD_DIR`, else `<target>/ocrvl-kernels` (found from OUT_DIR, which is
/// `<target>/<profile>/build/ocrvl-<hash>/out`).
fn kernel_object_cache() -> PathBuf {
    if let Some(dir) = env::var_os("OCRVL_KERNEL_BUILD_DIR") {
        return PathBuf::from(dir);
    }
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let target = out
        .ancestors()
        .nth(4)
        .expect("OUT_DIR is <target>/<profile>/build/<pkg>/out");
    target.join("ocrvl-kernels")
}

fn generate_bindings(kernels: &Path) {
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("sys.rs");
    let checked_in = kernels.join("include/bindings.rs");
    if !libclang_loads() {
        println!(
            "cargo:warning=libclang not found: using the checked-in {} (run a build with libclang \
             to regenerate it; tests/cpu/bindings_fresh.rs checks it)",
            checked_in.display()
        );
        fs::copy(&checked_in, &out).expect("copying the checked-in bindings");
        return;
    }
    let bindings = bindgen::Builder::default()
        .header(kernels.join("include/ocrvl_kernels.h").to_string_lossy())
        .allowlist_function("ocrvl_.*")
        .allowlist_type("Ocrvl.*")
        .allowlist_var("OCRVL_.*")
        .rustified_enum("OcrvlStatus")
        .rustified_enum("OcrvlDType")
        .derive_debug(true)
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(true)
        .formatter(bindgen::Formatter::Prettyplease)
        .generate()
        .expect("bindgen over kernels/include/ocrvl_kernels.h");
    let text = format!(
        "// Generated by build.rs (bindgen) from kernels/include/ocrvl_kernels.h. Do not edit.\n{}",
        bindings
    );
    fs::write(&out, &text).expect("writing OUT_DIR/sys.rs");
    println!("cargo:rustc-cfg=ocrvl_bindgen");
}

/// True when bindgen can load libclang, trying the PyPI wheel last.
fn libclang_loads() -> bool {
    if clang_sys::load().is_ok() {
        return true;
    }
    if env::var_os("LIBCLANG_PATH").is_some() {
        return false;
    }
    // The wheel is small (about 25 MB) and goes to the same cache as the CUDA compiler.
    let site = match std::panic::catch_unwind(|| provision_wheels("libclang-18", &[LIBCLANG_WHEEL])) {
        Ok(site) => site,
        Err(_) => return false,
    };
    env::set_var("LIBCLANG_PATH", site.join("clang/native"));
    clang_sys::load().is_ok()
}
