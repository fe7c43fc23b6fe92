//! The hand-written `ffi/ocrvl.h` against the Rust side, both ways: every function declared
//! is exported with the same parameter and return types and every export is declared; every
//! struct has the same fields in the same order with the same types; every enum constant has
//! the Rust value; the ABI version agrees. The exports are read from the source (`extern "C"
//! fn` in src/ffi/) and from the built cdylib's dynamic symbol table (`nm -D`).
//!
//! The C parser is deliberately small: it handles the subset of C the header is written in
//! (comments, `#` lines, typedef'd structs and enums, prototypes), and fails loudly on
//! anything it does not understand rather than skipping it.

use crate::ffi_support;

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::fs;
use std::process::Command;

/// (return type, [(param name, type)]), types in Rust spelling.
type Signature = (String, Vec<(String, String)>);

fn header() -> String {
    fs::read_to_string(ffi_support::repo().join("ffi/ocrvl.h")).expect("reading ffi/ocrvl.h")
}

/// The Rust sources of the C ABI, concatenated.
fn rust_sources() -> String {
    let dir = ffi_support::repo().join("src/ffi");
    let mut files: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| fs::read_to_string(p).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The header without comments and preprocessor lines, whitespace collapsed.
fn header_code() -> String {
    let text = header();
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("/*") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find("*/").expect("unterminated comment") + i + 2;
        out.push(' ');
        rest = &rest[end..];
    }
    out.push_str(rest);
    let lines: Vec<&str> = out
        .lines()
        .map(|l| l.split("//").next().unwrap())
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    // `extern "C" {` / `}` of the C++ guard are inside #ifdef lines; strip what remains.
    let code = lines.join(" ").replace("extern \"C\" {", " ");
    code.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Top-level statements: split at `;` outside braces.
fn statements(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut cur) = (0i32, String::new());
    for c in code.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if c == ';' && depth == 0 {
            out.push(cur.trim().to_string());
            cur.clear();
        } else {
            cur.push(c);
        }
    }
    assert!(
        cur.trim().is_empty() || cur.trim() == "}",
        "trailing text in the header: {cur:?}"
    );
    out
}

/// A C type (`const uint8_t* const*`) in Rust spelling (`*const *const u8`).
fn c_type_to_rust(c: &str) -> String {
    let spaced = c.replace('*', " * ");
    let words: Vec<&str> = spaced.split_whitespace().collect();
    let first_star = words.iter().position(|w| *w == "*").unwrap_or(words.len());
    let base_const = words[..first_star].contains(&"const");
    let base: Vec<&str> = words[..first_star].iter().filter(|w| **w != "const").copied().collect();
    assert_eq!(base.len(), 1, "cannot read the C type {c:?}");
    let mut rust = match base[0] {
        "void" => "()",
        "char" => "c_char",
        "uint8_t" => "u8",
        "int32_t" => "i32",
        "uint32_t" => "u32",
        "int64_t" => "i64",
        "uint64_t" => "u64",
        "size_t" => "usize",
        "float" => "f32",
        "double" => "f64",
        other if other.starts_with("ocrvl_") => other,
        other => panic!("unmapped C type {other:?} in {c:?}"),
    }
    .to_string();
    // The pointee of the innermost pointer is const if the base is; the pointee of each outer
    // pointer is const if `const` follows the star before it.
    let mut pointee_const = base_const;
    for (i, w) in words.iter().enumerate().skip(first_star) {
        if *w == "*" {
            rust = format!("*{} {rust}", if pointee_const { "const" } else { "mut" });
            pointee_const = words.get(i + 1) == Some(&"const");
        }
    }
    rust
}

/// Splits `type name` into (name, type).
fn split_decl(decl: &str) -> (String, String) {
    let decl = decl.trim();
    let cut = decl
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .expect("a declaration has a type and a name");
    (decl[cut + 1..].to_string(), decl[..=cut].trim().to_string())
}

fn header_functions() -> BTreeMap<String, Signature> {
    let mut out = BTreeMap::new();
    for st in statements(&header_code()) {
        if st.starts_with("typedef") || st.starts_with("enum") || st.is_empty() {
            continue;
        }
        let open = st.find('(').unwrap_or_else(|| panic!("not a prototype: {st:?}"));
        assert!(st.ends_with(')'), "not a prototype: {st:?}");
        let (name, ret) = split_decl(&st[..open]);
        let params = &st[open + 1..st.len() - 1];
        let params = if params.trim() == "void" {
            Vec::new()
        } else {
            params
                .split(',')
                .map(|p| {
                    let (n, t) = split_decl(p);
                    (n, c_type_to_rust(&t))
                })
                .collect()
        };
        assert!(name.starts_with("ocrvl_"), "{name} lacks the ocrvl_ prefix");
        assert!(
            out.insert(name.clone(), (c_type_to_rust(&ret), params)).is_none(),
            "{name} declared twice"
        );
    }
    out
}

/// Rust type spelling without spaces or paths, for comparison.
fn norm(t: &str) -> String {
    let t = t.replace("std::ffi::", "").replace("core::ffi::", "");
    t.split_whitespace().collect::<String>()
}

fn rust_functions() -> BTreeMap<String, Signature> {
    let src = rust_sources();
    let mut out = BTreeMap::new();
    for (at, _) in src.match_indices("extern \"C\" fn ") {
        let rest = &src[at + "extern \"C\" fn ".len()..];
        let open = rest.find('(').unwrap();
        let name = rest[..open].to_string();
        let mut depth = 0;
        let close = rest[open..]
            .char_indices()
            .find(|&(_, c)| {
                depth += match c {
                    '(' => 1,
                    ')' => -1,
                    _ => 0,
                };
                depth == 0
            })
            .unwrap()
            .0
            + open;
        let params = rest[open + 1..close]
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                let (n, t) = p.split_once(':').unwrap_or_else(|| panic!("parameter {p:?} of {name}"));
                (n.trim().to_string(), norm(t))
            })
            .collect();
        let tail = &rest[close + 1..rest[close..].find('{').unwrap() + close];
        let ret = tail.trim().strip_prefix("->").map_or("()".to_string(), norm);
        assert!(
            out.insert(name.clone(), (ret, params)).is_none(),
            "{name} defined twice"
        );
    }
    out
}

fn normalise(sig: &Signature) -> Signature {
    (norm(&sig.0), sig.1.iter().map(|(n, t)| (n.clone(), norm(t))).collect())
}

#[test]
fn functions_match_the_rust_exports() {
    let c = header_functions();
    let rust = rust_functions();
    assert!(
        c.len() >= 10,
        "the parser found only {} functions in the header",
        c.len()
    );
    let c_names: Vec<_> = c.keys().collect();
    let r_names: Vec<_> = rust.keys().collect();
    assert_eq!(c_names, r_names, "declared in ffi/ocrvl.h vs exported from src/ffi/");
    for (name, sig) in &c {
        assert_eq!(
            normalise(sig),
            normalise(&rust[name]),
            "signature of {name}: header vs Rust"
        );
    }
    // Every export is #[no_mangle] (a mangled one would not be callable from C).
    let src = rust_sources();
    assert_eq!(
        src.matches("#[no_mangle]").count(),
        rust.len(),
        "each extern \"C\" fn in src/ffi/ needs exactly one #[no_mangle]"
    );
}

#[test]
fn the_shared_library_exports_exactly_the_header() {
    let so = ffi_support::library("libocrvl.so");
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&so)
        .output()
        .expect("running nm (binutils) on the cdylib");
    assert!(
        out.status.success(),
        "nm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exported: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace().rev();
            let name = parts.next()?;
            let kind = parts.next()?;
            (kind == "T" && name.starts_with("ocrvl_")).then(|| name.to_string())
        })
        .collect();
    let declared: Vec<String> = header_functions().into_keys().collect();
    let mut exported_sorted = exported.clone();
    exported_sorted.sort();
    assert_eq!(exported_sorted, declared, "symbols in {} vs ffi/ocrvl.h", so.display());
}

/// `typedef struct NAME { TYPE FIELD; ... } NAME;` from the header: NAME -> [(field, type)].
fn header_structs() -> BTreeMap<String, Vec<(String, String)>> {
    let mut out = BTreeMap::new();
    for st in statements(&header_code()) {
        let Some(rest) = st.strip_prefix("typedef struct ") else {
            continue;
        };
        let Some(open) = rest.find('{') else { continue }; // opaque handle typedefs
        let name = rest[..open].trim().to_string();
        let close = rest.rfind('}').unwrap();
        assert_eq!(rest[close + 1..].trim(), name, "typedef name of struct {name}");
        let fields = rest[open + 1..close]
            .split(';')
            .filter(|f| !f.trim().is_empty())
            .map(|f| {
                let (n, t) = split_decl(f);
                (n, c_type_to_rust(&t))
            })
            .collect();
        out.insert(name, fields);
    }
    out
}

/// `pub struct NAME { pub FIELD: TYPE, ... }` from src/ffi/ for the header's struct names.
fn rust_struct(src: &str, name: &str) -> Vec<(String, String)> {
    let start = src
        .find(&format!("pub struct {name} {{"))
        .unwrap_or_else(|| panic!("no `pub struct {name}` in src/ffi/"));
    let before = &src[..start];
    let attrs = &before[before.rfind("\n\n").unwrap_or(0)..];
    assert!(attrs.contains("#[repr(C)]"), "{name} is not #[repr(C)]");
    let body_start = start + src[start..].find('{').unwrap() + 1;
    let body = &src[body_start..body_start + src[body_start..].find('}').unwrap()];
    body.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
        .map(|l| {
            let l = l
                .strip_prefix("pub ")
                .unwrap_or_else(|| panic!("{name}: field {l:?} is not pub"));
            let (n, t) = l.trim_end_matches(',').split_once(':').unwrap();
            (n.trim().to_string(), norm(t))
        })
        .collect()
}

#[test]
fn structs_match_field_by_field() {
    let c = header_structs();
    assert_eq!(
        c.keys().collect::<Vec<_>>(),
        [
            "ocrvl_engine_config",
            "ocrvl_request_info",
            "ocrvl_sampling_params",
            "ocrvl_token_event"
        ],
        "the header's structs"
    );
    let src = rust_sources();
    for (name, fields) in &c {
        let fields: Vec<_> = fields.iter().map(|(n, t)| (n.clone(), norm(t))).collect();
        assert_eq!(fields, rust_struct(&src, name), "fields of {name}: header vs Rust");
        assert_eq!(fields[0].0, "struct_size", "{name} must start with struct_size");
    }
}

/// `NAME = VALUE` pairs of every `enum` in the header, by enum name.
fn header_enums() -> BTreeMap<String, Vec<(String, i64)>> {
    let mut out = BTreeMap::new();
    for st in statements(&header_code()) {
        let Some(rest) = st.strip_prefix("enum ") else { continue };
        let open = rest.find('{').unwrap();
        let body = &rest[open + 1..rest.rfind('}').unwrap()];
        let values = body
            .split(',')
            .filter(|v| !v.trim().is_empty())
            .map(|v| {
                let (n, val) = v
                    .split_once('=')
                    .unwrap_or_else(|| panic!("enum value {v:?} needs `= N`"));
                (n.trim().to_string(), val.trim().parse().unwrap())
            })
            .collect();
        out.insert(rest[..open].trim().to_string(), values);
    }
    out
}

#[test]
fn enum_values_and_abi_version_match() {
    let enums = header_enums();
    let status = &enums["ocrvl_status_code"];
    assert_eq!(
        status.len(),
        ocrvl::ffi::Status::ALL.len(),
        "status codes: header vs Rust"
    );
    for (name, value) in status {
        let got = unsafe { CStr::from_ptr(ocrvl::ffi::ocrvl_status_name(*value as i32)) };
        assert_eq!(got.to_str().unwrap(), name, "status value {value}");
    }
    // The other enums are `pub const NAME: i32 = V;` in src/ffi/mod.rs, both ways.
    let src = rust_sources();
    let mut rust_consts = BTreeMap::new();
    for line in src.lines() {
        if let Some(rest) = line.trim().strip_prefix("pub const OCRVL_") {
            let (name, value) = rest.split_once(": i32 = ").unwrap_or(("", ""));
            if !name.is_empty() {
                rust_consts.insert(
                    format!("OCRVL_{name}"),
                    value.trim_end_matches(';').parse::<i64>().unwrap(),
                );
            }
        }
    }
    let mut header_consts = BTreeMap::new();
    for (e, values) in &enums {
        if e != "ocrvl_status_code" {
            header_consts.extend(values.iter().cloned());
        }
    }
    assert_eq!(header_consts, rust_consts, "enum constants: header vs src/ffi/");

    let define = header()
        .lines()
        .find_map(|l| l.strip_prefix("#define OCRVL_ABI_VERSION "))
        .expect("#define OCRVL_ABI_VERSION in the header")
        .trim()
        .trim_end_matches('u')
        .parse::<u32>()
        .unwrap();
    assert_eq!(define, ocrvl::ffi::OCRVL_ABI_VERSION);
    assert_eq!(ocrvl::ffi::ocrvl_abi_version(), define);
}

/// Every task the engine knows has a C value (named after it), plus OCRVL_TASK_PROMPT, and the
/// values are 0, 1, ... with none skipped: new tasks are appended.
#[test]
fn every_task_has_a_c_value() {
    let enums = header_enums();
    let tasks = &enums["ocrvl_task"];
    let names: Vec<&str> = tasks.iter().map(|(n, _)| n.as_str()).collect();
    for task in ocrvl::preprocess::prompt::Task::ALL {
        let c_name = format!("OCRVL_TASK_{}", task.name().to_ascii_uppercase());
        assert!(names.contains(&c_name.as_str()), "{task:?} has no {c_name} in ocrvl.h");
    }
    assert!(names.contains(&"OCRVL_TASK_PROMPT"));
    assert_eq!(tasks.len(), ocrvl::preprocess::prompt::Task::ALL.len() + 1);
    let mut values: Vec<i64> = tasks.iter().map(|(_, v)| *v).collect();
    values.sort_unstable();
    assert_eq!(values, (0..tasks.len() as i64).collect::<Vec<_>>());
    // The tasks 1.5 added are appended after PROMPT, so ABI-1 values keep their meaning.
    assert!(tasks.contains(&("OCRVL_TASK_PROMPT".to_string(), 4)));
    assert!(tasks.contains(&("OCRVL_TASK_SPOTTING".to_string(), 5)));
    assert!(tasks.contains(&("OCRVL_TASK_SEAL".to_string(), 6)));
    const { assert!(ocrvl::ffi::OCRVL_ABI_VERSION >= 2, "new task values need an ABI bump") };
}

#[test]
fn the_type_parser_reads_pointers_right() {
    assert_eq!(c_type_to_rust("const uint8_t* const*"), "*const *const u8");
    assert_eq!(c_type_to_rust("ocrvl_engine**"), "*mut *mut ocrvl_engine");
    assert_eq!(c_type_to_rust("const char*"), "*const c_char");
    assert_eq!(c_type_to_rust("char *"), "*mut c_char");
    assert_eq!(c_type_to_rust("size_t"), "usize");
}
